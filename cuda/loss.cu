// loss.cu: losses and the accuracy metric of bwplan/ops/loss.py. Every loss averages over
// the batch N (dimension 0 of its first input), or divides per Caffe's normalization
// (sigmoid cross-entropy, infogain), and writes one float; a loss's dX reads
// d(loss) from device memory (the seed the runtime wrote, the loss weight), so a step
// never returns to the host between its forward and backward.
//
// The scalar forwards run as ONE block of 1024 threads that reduces everything in a fixed
// order (deterministic, no atomics, no second pass): a loss reads logits or features of a
// few thousand rows at most, so one block is a small part of a step; rows go one per warp
// (classes are short). Labels may be int32 or int64 (and flags also float), read through
// bw_load_index. A label outside [0, C) that is not ignore_label makes the loss NaN.
// Launch geometry: bwplan/kernels/cuda/loss.py.

#include "common.cuh"

#define LOSS_THREADS 1024  // the whole loss in one block: 32 warps, one row per warp

// Caffe's LossParameter.normalization, in the order of bwplan.ops.loss.NORMALIZATIONS:
// what a summed loss is divided by, at least 1.
#define BW_FLT_MIN 1.17549435e-38f  // FLT_MIN: Caffe clamps a probability to it before log

enum { BW_NORM_FULL = 0, BW_NORM_VALID = 1, BW_NORM_BATCH_SIZE = 2, BW_NORM_NONE = 3 };

__device__ __forceinline__ double bw_normalizer(int mode, double batch, double count,
                                                double valid) {
    const double v = mode == BW_NORM_FULL ? count : mode == BW_NORM_VALID ? valid
                   : mode == BW_NORM_BATCH_SIZE ? batch : 1.0;
    return v > 1.0 ? v : 1.0;
}

// SegNet's class weighting: one weight per class, passed by value (up to 128 classes,
// MAX_WEIGHTED_CLASSES in bwplan/kernels/cuda/loss.py, which checks it); `weighted` 0:
// every class weighs 1 and the array is not read.
struct ClassWeights {
    float w[128];
};

// ---- SSD's MultiBoxLoss: what its kernels share ------------------------------------------
// The decisions (matching, mining) must be the cpu target's exactly (bwplan/kernels/cpu/
// multibox.py), so they are computed in double from the float32 inputs, as there, and with
// the same expressions in the same order: the Jaccard overlap uses __dmul_rn/__dadd_rn/
// __dsub_rn so that nvcc cannot contract a product and a sum into one FMA (which rounds
// once where the CPU rounds twice), and every comparison keeps the CPU's strictness and
// scan order. What can still differ: exp and log (CUDA's double exp and log are within 1
// ulp, glibc's within 1 ulp too, but not always the same ulp), so a mining score may differ
// from the cpu's in its last bit; two candidates whose scores are that close (and not
// equal) may then be ranked the other way. Equal inputs give equal scores on both.

// The overlap of two normalised boxes (x0, y0, x1, y1), 0 at most 1e-6 (Caffe's
// JaccardOverlap, as the cpu kernels keep it).
__device__ __forceinline__ double bw_box_size(double x0, double y0, double x1, double y1) {
    return (x1 < x0 || y1 < y0) ? 0.0 : __dmul_rn(__dsub_rn(x1, x0), __dsub_rn(y1, y0));
}

__device__ __forceinline__ double bw_kept_jaccard(const float* a, const float* b) {
    const double a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    const double b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
    const double iw = __dsub_rn(fmin(a2, b2), fmax(a0, b0));
    const double ih = __dsub_rn(fmin(a3, b3), fmax(a1, b1));
    if (iw <= 0.0 || ih <= 0.0) return 0.0;
    const double inter = __dmul_rn(iw, ih);
    const double uni = __dsub_rn(__dadd_rn(bw_box_size(a0, a1, a2, a3),
                                           bw_box_size(b0, b1, b2, b3)), inter);
    const double v = __ddiv_rn(inter, uni);
    return v > 1e-6 ? v : 0.0;
}

// Prior row z[0, c) of the scores: its largest score (the first of equal ones, as
// Python's max keeps) and the sum of exp(score - largest) in class order.
__device__ __forceinline__ void bw_softmax_parts(const float* z, int c, double* top,
                                                 double* total) {
    double t = z[0];
    for (int q = 1; q < c; ++q) t = (double)z[q] > t ? (double)z[q] : t;
    double s = 0.0;
    for (int q = 0; q < c; ++q) s += exp((double)z[q] - t);
    *top = t;
    *total = s;
}

// -log(max(p, FLT_MIN)) of class q: the cross-entropy Caffe's MultiBoxLoss scores
__device__ __forceinline__ double bw_class_loss(const float* z, int q, double top,
                                                double total) {
    const double prob = exp((double)z[q] - top) / total;
    return -log((double)BW_FLT_MIN > prob ? (double)BW_FLT_MIN : prob);
}

// A double as an unsigned key with the same order (NaN lowest, -0 as +0): the mining's
// radix select compares keys, the cpu's sort compares the doubles.
__device__ __forceinline__ unsigned long long bw_order_key(double v) {
    if (v != v) return 0ull;
    if (v == 0.0) v = 0.0;
    const unsigned long long bits = (unsigned long long)__double_as_longlong(v);
    return (bits >> 63) ? ~bits : bits | (1ull << 63);
}

// Two sums over the block at once, returned to every thread (inlined, unlike
// bw_block_sum_d: a call would spill the mining's live state around it); a fixed order, so
// the same inputs give the same sums. `scratch` holds 64 doubles.
__device__ __forceinline__ void bw_block_sum2_d(double* a, double* b, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    double x = bw_warp_sum_d(*a), y = bw_warp_sum_d(*b);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = x;
        scratch[32 + warp] = y;
    }
    __syncthreads();
    x = threadIdx.x < warps ? scratch[threadIdx.x] : 0.0;
    y = threadIdx.x < warps ? scratch[32 + threadIdx.x] : 0.0;
    if (warp == 0) {
        x = bw_warp_sum_d(x);
        y = bw_warp_sum_d(y);
        if (lane == 0) {
            scratch[0] = x;
            scratch[32] = y;
        }
    }
    __syncthreads();
    *a = scratch[0];
    *b = scratch[32];
}

// The rank of this thread's `take` among the takes of the block, in thread order, plus
// *base (the takes of earlier chunks), which it then advances: an ordered compaction, one
// chunk of blockDim.x items per call. Every thread calls it; `counts` holds 32 ints.
__device__ int bw_ordered_rank(bool take, int* base, int* counts) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned ballot = __ballot_sync(0xffffffffu, take);
    if (lane == 0) counts[warp] = __popc(ballot);
    __syncthreads();
    int before = *base;
    for (int w = 0; w < warp; ++w) before += counts[w];
    const int rank = before + __popc(ballot & ((1u << lane) - 1u));
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) *base += counts[w];
    __syncthreads();
    return rank;
}

// == kernel softmax_cross_entropy_fwd ==
// Logits [N, C, S...] with classes on dimension 1, labels [N, S...]. Per row (n, s):
// log-softmax, -log p[label] (times the label's class weight when weighted) unless the
// label is ignore_label; loss = sum / valid count (at least 1). prob ([N, C, S], the
// backward's aux) is written only when given.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
softmax_cross_entropy_fwd(const float* logits, const void* label, int label_dtype,
                          float* loss, float* prob, int n, int c, long long s,
                          long long ignore, int weighted, ClassWeights weights) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double total = 0.0, valid = 0.0;
    for (long long row = warp; row < (long long)n * s; row += warps) {
        const long long base = (row / s) * c * s + row % s;
        float mx = -INFINITY;
        for (int q = lane; q < c; q += 32) mx = fmaxf(mx, logits[base + q * s]);
        mx = bw_warp_max(mx);
        float sum = 0.0f;
        for (int q = lane; q < c; q += 32) sum += expf(logits[base + q * s] - mx);
        sum = bw_warp_sum(sum);
        const float lse = logf(sum);
        if (prob)
            for (int q = lane; q < c; q += 32)
                prob[base + q * s] = expf(logits[base + q * s] - mx - lse);
        const long long lab = bw_load_index(label, row, label_dtype);
        if (lane == 0 && lab != ignore) {
            valid += 1.0;
            total += (lab >= 0 && lab < c)
                         ? -(double)(logits[base + lab * s] - mx - lse)
                               * (weighted ? (double)weights.w[lab] : 1.0)
                         : (double)NAN;
        }
    }
    total = bw_block_sum_d(total, scratch);
    valid = bw_block_sum_d(valid, scratch);
    if (threadIdx.x == 0) *loss = (float)(total / (valid > 0.0 ? valid : 1.0));
}

// == kernel softmax_cross_entropy_dx ==
// d logits = (prob - onehot(label)) * valid * weight[label] * dout / count (weight 1 when
// not weighted). Each block first counts the valid labels itself (N*S reads, cheaper
// than a separate pass), then covers its share of the N*C*S elements in a grid-stride
// loop. Block 256.
extern "C" __global__ void softmax_cross_entropy_dx(const float* prob, const void* label,
                                                    int label_dtype, const float* dout,
                                                    float* dx, int n, int c, long long s,
                                                    long long ignore, int weighted,
                                                    ClassWeights weights, int accumulate) {
    __shared__ double scratch[32];
    double valid = 0.0;
    for (long long r = threadIdx.x; r < (long long)n * s; r += blockDim.x)
        valid += bw_load_index(label, r, label_dtype) != ignore ? 1.0 : 0.0;
    valid = bw_block_sum_d(valid, scratch);
    const float scale = *dout / (float)(valid > 0.0 ? valid : 1.0);
    BW_GRID_STRIDE(i, (long long)n * c * s) {
        const long long q = (i / s) % c, row = (i / (s * c)) * s + i % s;
        const long long lab = bw_load_index(label, row, label_dtype);
        const float w = weighted && lab >= 0 && lab < c ? weights.w[lab] : 1.0f;
        const float g =
            lab == ignore ? 0.0f : (prob[i] - (lab == q ? 1.0f : 0.0f)) * scale * w;
        bw_put(dx, i, g, accumulate);
    }
}

// == kernel euclidean_loss_fwd ==
// loss = sum((a - b)^2) / (2N); diff = a - b saved when given. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
euclidean_loss_fwd(const float* a, const float* b, float* loss, float* diff, int n,
                   long long total) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < total; i += blockDim.x) {
        const float d = a[i] - b[i];
        if (diff) diff[i] = d;
        acc += (double)d * d;
    }
    acc = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) *loss = (float)(acc / (2.0 * n));
}

// == kernel euclidean_loss_dx ==
// d a = dout / N * diff (sign +1), d b = -dout / N * diff (sign -1). Grid-stride.
extern "C" __global__ void euclidean_loss_dx(const float* diff, const float* dout, float* dx,
                                             int n, long long total, float sign,
                                             int accumulate) {
    const float scale = sign * *dout / n;
    BW_GRID_STRIDE(i, total) bw_put(dx, i, scale * diff[i], accumulate);
}

// == kernel contrastive_loss_fwd ==
// Caffe ContrastiveLoss over pairs (a_i, b_i), D features each, flag sim_i (truncated to
// an int: non-zero means similar): similar pairs add d^2, dissimilar ones
// max(margin - d, 0)^2 (legacy: max(margin - d^2, 0)); loss = sum / (2N). diff and
// dist_sq ([N]) are saved when given. One block, one warp per pair.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
contrastive_loss_fwd(const float* a, const float* b, const void* sim, int sim_dtype,
                     float* loss, float* diff, float* dist_sq, int n, long long d,
                     float margin, int legacy) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double total = 0.0;
    for (int i = warp; i < n; i += warps) {
        float acc = 0.0f;
        for (long long j = lane; j < d; j += 32) {
            const long long e = (long long)i * d + j;
            const float v = a[e] - b[e];
            if (diff) diff[e] = v;
            acc += v * v;
        }
        acc = bw_warp_sum(acc);
        if (lane == 0) {
            if (dist_sq) dist_sq[i] = acc;
            if (bw_load_index(sim, i, sim_dtype) != 0) {
                total += acc;
            } else if (legacy) {
                total += fmaxf(margin - acc, 0.0f);
            } else {
                const float gap = fmaxf(margin - sqrtf(acc), 0.0f);
                total += (double)gap * gap;
            }
        }
    }
    total = bw_block_sum_d(total, scratch);
    if (threadIdx.x == 0) *loss = (float)(total / (2.0 * n));
}

// == kernel contrastive_loss_dx ==
// Similar pairs pull with diff / N; dissimilar pairs inside the margin push with
// -diff / N (legacy) or -(margin - d) / d * diff / N (0 at d = 0, where the loss has no
// gradient; Caffe adds 1e-4 to d instead). sign -1 gives d b. Grid-stride over N*D.
extern "C" __global__ void contrastive_loss_dx(const float* diff, const float* dist_sq,
                                               const void* sim, int sim_dtype,
                                               const float* dout, float* dx, int n,
                                               long long d, float margin, int legacy,
                                               float sign, int accumulate) {
    const float scale = sign * *dout / n;
    BW_GRID_STRIDE(e, (long long)n * d) {
        const long long i = e / d;
        float coef;
        if (bw_load_index(sim, i, sim_dtype) != 0) {
            coef = 1.0f;
        } else if (legacy) {
            coef = margin - dist_sq[i] > 0.0f ? -1.0f : 0.0f;
        } else {
            const float dist = sqrtf(dist_sq[i]);
            coef = dist > 0.0f ? -fmaxf(margin - dist, 0.0f) / dist : 0.0f;
        }
        bw_put(dx, e, coef * scale * diff[e], accumulate);
    }
}

// == kernel accuracy_fwd ==
// Fraction of the rows (n, s) whose label is not ignore_label (when has_ignore) that have
// their label among the top_k scores; 0 when no row counts (as Caffe). A class tied with
// the true one counts as ranked above it; a label outside [0, C) is a miss. One block,
// one warp per row.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
accuracy_fwd(const float* logits, const void* label, int label_dtype, float* out, int n,
             int c, long long s, int top_k, int has_ignore, long long ignore) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double hits = 0.0, counted = 0.0;
    for (long long row = warp; row < (long long)n * s; row += warps) {
        const long long base = (row / s) * c * s + row % s;
        const long long lab = bw_load_index(label, row, label_dtype);
        if (has_ignore && lab == ignore) continue;     // the same for the whole warp
        const float truth = (lab >= 0 && lab < c) ? logits[base + lab * s] : INFINITY;
        float ahead = 0.0f;
        for (int q = lane; q < c; q += 32) ahead += logits[base + q * s] >= truth ? 1.0f : 0.0f;
        ahead = bw_warp_sum(ahead);
        if (lane == 0) {
            counted += 1.0;
            if (lab >= 0 && lab < c && ahead - 1.0f < top_k) hits += 1.0;
        }
    }
    hits = bw_block_sum_d(hits, scratch);
    counted = bw_block_sum_d(counted, scratch);
    if (threadIdx.x == 0) *out = counted > 0.0 ? (float)(hits / counted) : 0.0f;
}

// The most classes accuracy_per_class_fwd and seg_accuracy_fwd count in shared memory
// (MAX_PER_CLASS and MAX_SEG_CLASSES in bwplan/kernels/cuda/loss.py, which checks them).
#define BW_MAX_PER_CLASS 4096
#define BW_MAX_SEG_CLASSES 96

// == kernel accuracy_per_class_fwd ==
// Caffe Accuracy's second top: per class, the counted rows labelled with it that are
// hits (as accuracy_fwd decides), over the counted rows labelled with it; 0 for a class
// without one. One block, one warp per row; the counts are integers in shared memory, so
// the atomics leave the result independent of their order.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
accuracy_per_class_fwd(const float* logits, const void* label, int label_dtype, float* out,
                       int n, int c, long long s, int top_k, int has_ignore,
                       long long ignore) {
    __shared__ unsigned int seen[BW_MAX_PER_CLASS], hits[BW_MAX_PER_CLASS];
    for (int q = threadIdx.x; q < c; q += blockDim.x) seen[q] = hits[q] = 0u;
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (long long row = warp; row < (long long)n * s; row += warps) {
        const long long base = (row / s) * c * s + row % s;
        const long long lab = bw_load_index(label, row, label_dtype);
        if ((has_ignore && lab == ignore) || lab < 0 || lab >= c) continue;
        const float truth = logits[base + lab * s];
        float ahead = 0.0f;
        for (int q = lane; q < c; q += 32) ahead += logits[base + q * s] >= truth ? 1.0f : 0.0f;
        ahead = bw_warp_sum(ahead);
        if (lane == 0) {
            atomicAdd(&seen[lab], 1u);
            if (ahead - 1.0f < top_k) atomicAdd(&hits[lab], 1u);
        }
    }
    __syncthreads();
    for (int q = threadIdx.x; q < c; q += blockDim.x)
        out[q] = seen[q] ? (float)((double)hits[q] / (double)seen[q]) : 0.0f;
}

// == kernel seg_accuracy_fwd ==
// The DeepLab fork's SegAccuracy over scores [N, C, S] and labels [N, S]: the confusion
// matrix (true class, the class of the highest score, of tied scores the highest) of the
// positions whose label is none of the ignored ones (up to 4: their count, then the
// values, unused slots unread), counted in shared memory; then thread 0 writes
// [pixel accuracy, mean class accuracy over the classes that occur, mean IoU over every
// class (an empty class scores 1)] as bwplan.ops.loss.seg_scores does. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
seg_accuracy_fwd(const float* scores, const void* label, int label_dtype, float* out, int n,
                 int c, long long s, int ignored_count, long long ignore0, long long ignore1,
                 long long ignore2, long long ignore3) {
    __shared__ unsigned int cm[BW_MAX_SEG_CLASSES * BW_MAX_SEG_CLASSES];
    for (int q = threadIdx.x; q < c * c; q += blockDim.x) cm[q] = 0u;
    __syncthreads();
    for (long long row = threadIdx.x; row < (long long)n * s; row += blockDim.x) {
        const long long lab = bw_load_index(label, row, label_dtype);
        if (lab < 0 || lab >= c || (ignored_count > 0 && lab == ignore0)
            || (ignored_count > 1 && lab == ignore1) || (ignored_count > 2 && lab == ignore2)
            || (ignored_count > 3 && lab == ignore3)) continue;
        const long long base = (row / s) * c * s + row % s;
        int best = 0;
        for (int q = 1; q < c; ++q)
            if (scores[base + q * s] >= scores[base + best * s]) best = q;
        atomicAdd(&cm[lab * c + best], 1u);
    }
    __syncthreads();
    // per class i (one thread each): its row sum, its diagonal, its IoU
    __shared__ double rows[BW_MAX_SEG_CLASSES], diags[BW_MAX_SEG_CLASSES],
        ious[BW_MAX_SEG_CLASSES];
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        unsigned int row_sum = 0u, col_sum = 0u;
        for (int j = 0; j < c; ++j) {
            row_sum += cm[i * c + j];
            col_sum += cm[j * c + i];
        }
        const double diag = cm[i * c + i], uni = (double)row_sum + col_sum - diag;
        rows[i] = row_sum;
        diags[i] = diag;
        ious[i] = uni == diag ? 1.0 : diag / uni;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    double total = 0.0, trace = 0.0, recall = 0.0, iou = 0.0;
    int present = 0;
    for (int i = 0; i < c; ++i) {
        total += rows[i];
        trace += diags[i];
        iou += ious[i];
        if (rows[i] > 0.0) {
            recall += diags[i] / rows[i];
            ++present;
        }
    }
    out[0] = total > 0.0 ? (float)(trace / total) : 0.0f;
    out[1] = present ? (float)(recall / present) : 0.0f;
    out[2] = (float)(iou / c);
}

// == kernel sigmoid_cross_entropy_loss_fwd ==
// sum of max(x, 0) - x t + log(1 + e^-|x|) over the elements whose target is not
// ignore, divided per normalization. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
sigmoid_cross_entropy_loss_fwd(const float* logits, const float* target, float* loss,
                               long long n, int batch, int normalization, float ignore) {
    __shared__ double scratch[32];
    double total = 0.0, valid = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = logits[i], t = target[i];
        if (t == ignore) continue;
        total += (double)(fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x))));
        valid += 1.0;
    }
    total = bw_block_sum_d(total, scratch);
    valid = bw_block_sum_d(valid, scratch);
    if (threadIdx.x == 0)
        *loss = (float)(total / bw_normalizer(normalization, batch, (double)n, valid));
}

// == kernel sigmoid_cross_entropy_loss_dx ==
// (sigmoid(x) - t) * dout / normalizer, 0 where the target is ignore. Each block counts
// the valid targets itself, as softmax_cross_entropy_dx does.
extern "C" __global__ void sigmoid_cross_entropy_loss_dx(const float* logits,
                                                         const float* target,
                                                         const float* dout, float* dx,
                                                         long long n, int batch,
                                                         int normalization, float ignore,
                                                         int accumulate) {
    __shared__ double scratch[32];
    double valid = 0.0;
    if (normalization == BW_NORM_VALID) {
        for (long long i = threadIdx.x; i < n; i += blockDim.x)
            valid += target[i] != ignore ? 1.0 : 0.0;
        valid = bw_block_sum_d(valid, scratch);
    }
    const float scale = (float)(*dout / bw_normalizer(normalization, batch, (double)n, valid));
    BW_GRID_STRIDE(i, n) {
        const float t = target[i];
        const float g = t == ignore ? 0.0f : (1.0f / (1.0f + expf(-logits[i])) - t) * scale;
        bw_put(dx, i, g, accumulate);
    }
}

// == kernel hinge_loss_fwd ==
// Scores [N, D]: sum of max(0, 1 + sign x) (squared for L2), sign -1 at the label,
// divided by N. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
hinge_loss_fwd(const float* scores, const void* label, int label_dtype, float* loss, int n,
               long long d, int squared) {
    __shared__ double scratch[32];
    double total = 0.0;
    for (long long i = threadIdx.x; i < (long long)n * d; i += blockDim.x) {
        const float sign = bw_load_index(label, i / d, label_dtype) == i % d ? -1.0f : 1.0f;
        const float m = fmaxf(0.0f, 1.0f + sign * scores[i]);
        total += squared ? (double)m * m : (double)m;
    }
    total = bw_block_sum_d(total, scratch);
    if (threadIdx.x == 0) *loss = (float)(total / n);
}

// == kernel hinge_loss_dx ==
extern "C" __global__ void hinge_loss_dx(const float* scores, const void* label,
                                         int label_dtype, const float* dout, float* dx, int n,
                                         long long d, int squared, int accumulate) {
    const float scale = *dout / n;
    BW_GRID_STRIDE(i, (long long)n * d) {
        const float sign = bw_load_index(label, i / d, label_dtype) == i % d ? -1.0f : 1.0f;
        const float m = fmaxf(0.0f, 1.0f + sign * scores[i]);
        const float g = squared ? 2.0f * m : (m > 0.0f ? 1.0f : 0.0f);
        bw_put(dx, i, sign * g * scale, accumulate);
    }
}

// == kernel infogain_loss_fwd ==
// Logits [outer, C, inner], one row (o, s) per warp: softmax over C, then
// -sum_l H[label, l] log max(p_l, BW_FLT_MIN) unless the label is ignore; divided per
// normalization. prob is written when the backward keeps it. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
infogain_loss_fwd(const float* logits, const void* label, int label_dtype,
                  const float* infogain, float* loss, float* prob, int outer, int c,
                  long long inner, int normalization, long long ignore) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double total = 0.0, valid = 0.0;
    for (long long row = warp; row < (long long)outer * inner; row += warps) {
        const long long base = (row / inner) * c * inner + row % inner;
        float mx = -INFINITY;
        for (int q = lane; q < c; q += 32) mx = fmaxf(mx, logits[base + q * inner]);
        mx = bw_warp_max(mx);
        float sum = 0.0f;
        for (int q = lane; q < c; q += 32) sum += expf(logits[base + q * inner] - mx);
        sum = bw_warp_sum(sum);
        if (prob)
            for (int q = lane; q < c; q += 32)
                prob[base + q * inner] = expf(logits[base + q * inner] - mx) / sum;
        const long long lab = bw_load_index(label, row, label_dtype);
        if (lab == ignore) continue;
        float part = 0.0f;
        if (lab >= 0 && lab < c)
            for (int q = lane; q < c; q += 32) {
                const float p = expf(logits[base + q * inner] - mx) / sum;
                part -= infogain[lab * c + q] * logf(fmaxf(p, BW_FLT_MIN));
            }
        else
            part = lane == 0 ? NAN : 0.0f;
        part = bw_warp_sum(part);
        if (lane == 0) {
            total += part;
            valid += 1.0;
        }
    }
    total = bw_block_sum_d(total, scratch);
    valid = bw_block_sum_d(valid, scratch);
    if (threadIdx.x == 0)
        *loss = (float)(total / bw_normalizer(normalization, outer, (double)outer * inner,
                                              valid));
}

// == kernel infogain_loss_dx ==
// (p * sum_l H[label, l] - H[label]) * dout / normalizer, 0 at an ignored label. Each
// element sums its label's row of H (C reads: the class count is small).
extern "C" __global__ void infogain_loss_dx(const float* prob, const void* label,
                                            int label_dtype, const float* infogain,
                                            const float* dout, float* dx, int outer, int c,
                                            long long inner, int normalization,
                                            long long ignore, int accumulate) {
    __shared__ double scratch[32];
    double valid = 0.0;
    if (normalization == BW_NORM_VALID) {
        for (long long r = threadIdx.x; r < (long long)outer * inner; r += blockDim.x)
            valid += bw_load_index(label, r, label_dtype) != ignore ? 1.0 : 0.0;
        valid = bw_block_sum_d(valid, scratch);
    }
    const float scale = (float)(*dout / bw_normalizer(normalization, outer,
                                                      (double)outer * inner, valid));
    BW_GRID_STRIDE(i, (long long)outer * c * inner) {
        const long long q = (i / inner) % c, row = (i / (inner * c)) * inner + i % inner;
        const long long lab = bw_load_index(label, row, label_dtype);
        float g = 0.0f;
        if (lab != ignore) {
            float rowsum = 0.0f;
            for (int l = 0; l < c; ++l) rowsum += infogain[lab * c + l];
            g = (prob[i] * rowsum - infogain[lab * c + q]) * scale;
        }
        bw_put(dx, i, g, accumulate);
    }
}

// == kernel smooth_l1_loss_fwd ==
// d = inside * (a - b) (inside, outside null: 1); sum of outside * f(d), f(d) = 0.5
// sigma2 d^2 for |d| < 1 / sigma2, else |d| - 0.5 / sigma2; divided by the batch. d is
// saved when given. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
smooth_l1_loss_fwd(const float* a, const float* b, const float* inside, const float* outside,
                   float* loss, float* diff, int batch, long long n, float sigma2) {
    __shared__ double scratch[32];
    double total = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        float d = a[i] - b[i];
        if (inside) d *= inside[i];
        if (diff) diff[i] = d;
        const float ad = fabsf(d);
        float err = ad < 1.0f / sigma2 ? 0.5f * sigma2 * d * d : ad - 0.5f / sigma2;
        if (outside) err *= outside[i];
        total += err;
    }
    total = bw_block_sum_d(total, scratch);
    if (threadIdx.x == 0) *loss = (float)(total / batch);
}

// == kernel smooth_l1_loss_dx ==
// sign * f'(d) * inside * outside * dout / batch (inside, outside null: 1); sign -1 for
// the second input.
extern "C" __global__ void smooth_l1_loss_dx(const float* diff, const float* inside,
                                             const float* outside, const float* dout,
                                             float* dx, int batch, long long n, float sigma2,
                                             float sign, int accumulate) {
    const float scale = sign * *dout / batch;
    BW_GRID_STRIDE(i, n) {
        const float d = diff[i];
        float g = fabsf(d) < 1.0f / sigma2 ? sigma2 * d
                                           : (d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f));
        if (inside) g *= inside[i];
        if (outside) g *= outside[i];
        bw_put(dx, i, g * scale, accumulate);
    }
}

// ---- SSD's MultiBoxLoss ------------------------------------------------------------------
// loc [N, P, 4], conf [N, P, C], priors [2, P, 4] (boxes, then variances), ground truth
// rows [G, 8] of (image, label, instance, xmin, ymin, xmax, ymax, difficult). The forward
// is six launches (bwplan/kernels/cuda/loss.py), their state in the workspace:
//   multibox_gather_gt   one block per image: its boxes' row numbers, in row order
//   multibox_overlaps    one thread per prior: its largest overlap and first best box
//   multibox_bipartite   one block per image: the bipartite rounds, then per prediction
//   multibox_score       one thread per prior: codes, label, smooth L1, class losses
//   multibox_mine        one block per image: hard negatives by radix select, the sums
//   multibox_loss_fwd    one thread: the images' sums in order, over the normalizer
// A ground-truth row the cpu target refuses (an image beyond the batch, a box labelled
// background) makes the loss NaN, which training reports as a non-finite loss.

// == kernel multibox_gather_gt ==
// Block n: the rows of image n (difficult ones only with use_difficult) into
// gidx[n * rows ...], in row order (an ordered compaction), their count into gcount[n];
// block 0 also sets gcount[num] when a row names an image beyond the batch or the
// background label.
extern "C" __global__ void multibox_gather_gt(const float* gt, int rows, int num,
                                              int use_difficult, int background, int* gidx,
                                              int* gcount) {
    __shared__ int base, counts[32];
    const int n = blockIdx.x;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    int bad = 0;
    for (int r0 = 0; r0 < rows; r0 += blockDim.x) {
        const int r = r0 + threadIdx.x;
        bool take = false;
        if (r < rows) {
            const float* row = gt + 8LL * r;
            const int item = (int)row[0];
            take = item == n && (use_difficult || row[7] == 0.0f);
            bad |= item >= num || (item >= 0 && (int)row[1] == background);
        }
        const int rank = bw_ordered_rank(take, &base, counts);
        if (take) gidx[(long long)n * rows + rank] = r;
    }
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) {
        gcount[n] = base;
        if (n == 0) gcount[num] = bad;
    }
}

// == kernel multibox_overlaps ==
// Per prior (n, i): over image n's boxes k, the overlaps kept as above; ov its largest
// (0 without one), argall the first box reaching it (-1), and bv / bj the same, which
// the bipartite rounds then keep as the best box not yet used.
extern "C" __global__ void multibox_overlaps(const float* priors, const float* gt,
                                             const int* gidx, const int* gcount, int rows,
                                             int num, int p, double* ov, double* bv, int* bj,
                                             int* argall) {
    BW_GRID_STRIDE(e, (long long)num * p) {
        const int n = (int)(e / p), i = (int)(e % p);
        const int* mine = gidx + (long long)n * rows;
        double best = 0.0;
        int arg = -1;
        for (int k = 0; k < gcount[n]; ++k) {
            const double v = bw_kept_jaccard(priors + 4LL * i, gt + 8LL * mine[k] + 3);
            if (v > best) {
                best = v;
                arg = k;
            }
        }
        ov[e] = bv[e] = best;
        bj[e] = argall[e] = arg;
    }
}

// (value, prior) pairs: the larger value wins, of equal ones the lower prior, so a tree
// reduction finds the first largest of a scan in prior order, whatever its shape.
__device__ __forceinline__ void bw_take_better(double* v, int* i, double ov, int oi) {
    if (ov > *v || (ov == *v && oi >= 0 && (*i < 0 || oi < *i))) {
        *v = ov;
        *i = oi;
    }
}

// == kernel multibox_bipartite ==
// Block n: up to one round per box, each matching the prior and box of the largest
// overlap left among unmatched priors and unused boxes (> 0; the lowest prior, then the
// lowest box, on a tie: each prior's bv / bj is its first best unused box, and the block
// takes the first best prior). Only the priors whose best box was just used look again.
// Then, for PER_PREDICTION, every prior left takes its first best box when that overlap
// is at least `threshold`. match[n, i]: the box (index into the image's rows) or -1.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
multibox_bipartite(const float* priors, const float* gt, const int* gidx, const int* gcount,
                   int rows, int p, double* bv, int* bj, const int* argall, const double* ov,
                   int* match, int* used, int per_prediction, double threshold) {
    __shared__ double warp_v[32];
    __shared__ int warp_i[32], chosen;
    const int n = blockIdx.x, g = gcount[n];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long off = (long long)n * p;
    const int* mine = gidx + (long long)n * rows;
    int* taken = used + (long long)n * rows;
    for (int i = threadIdx.x; i < p; i += blockDim.x) match[off + i] = -1;
    for (int k = threadIdx.x; k < g; k += blockDim.x) taken[k] = 0;
    __syncthreads();
    for (int round = 0; round < g; ++round) {
        double v = 0.0;
        int at = -1;
        for (int i = threadIdx.x; i < p; i += blockDim.x)
            if (match[off + i] < 0 && bv[off + i] > v) {
                v = bv[off + i];
                at = i;
            }
        for (int o = 16; o > 0; o >>= 1)
            bw_take_better(&v, &at, __shfl_xor_sync(0xffffffffu, v, o),
                           __shfl_xor_sync(0xffffffffu, at, o));
        if (lane == 0) {
            warp_v[warp] = v;
            warp_i[warp] = at;
        }
        __syncthreads();
        if (warp == 0) {
            v = lane < (int)(blockDim.x >> 5) ? warp_v[lane] : 0.0;
            at = lane < (int)(blockDim.x >> 5) ? warp_i[lane] : -1;
            for (int o = 16; o > 0; o >>= 1)
                bw_take_better(&v, &at, __shfl_xor_sync(0xffffffffu, v, o),
                               __shfl_xor_sync(0xffffffffu, at, o));
            if (lane == 0) {
                chosen = at;
                if (at >= 0) {
                    match[off + at] = bj[off + at];
                    taken[bj[off + at]] = 1;
                }
            }
        }
        __syncthreads();
        const int at_prior = chosen;
        if (at_prior < 0) break;                 // no overlap left: the cpu stops too
        const int box = match[off + at_prior];
        for (int i = threadIdx.x; i < p; i += blockDim.x) {
            if (match[off + i] >= 0 || bj[off + i] != box) continue;
            double best = 0.0;
            int arg = -1;
            for (int k = 0; k < g; ++k) {
                if (taken[k]) continue;
                const double o = bw_kept_jaccard(priors + 4LL * i, gt + 8LL * mine[k] + 3);
                if (o > best) {
                    best = o;
                    arg = k;
                }
            }
            bv[off + i] = best;
            bj[off + i] = arg;
        }
        __syncthreads();
    }
    if (!per_prediction) return;
    for (int i = threadIdx.x; i < p; i += blockDim.x)
        if (match[off + i] < 0 && ov[off + i] > 0.0 && ov[off + i] >= threshold)
            match[off + i] = argall[off + i];
}

// == kernel multibox_score ==
// Per prior (n, i): a positive (matched) gets its box's CENTER_SIZE code (targets, when
// given), its box's label (labels, when given; -1 for every other prior), the smooth L1
// of loc - code (lsum) and the class loss of its label (closs); with `mine`, a negative
// candidate (unmatched, largest overlap below neg_overlap) gets the class loss of the
// background (closs: its mining score). Codes and losses in double, as the cpu's.
extern "C" __global__ void multibox_score(const float* loc, const float* conf,
                                          const float* priors, const float* gt,
                                          const int* gidx, int rows, int num, int p, int c,
                                          int background, int mine, double neg_overlap,
                                          const int* match, const double* ov, float* targets,
                                          float* labels, double* lsum, double* closs) {
    BW_GRID_STRIDE(e, (long long)num * p) {
        const int n = (int)(e / p), i = (int)(e % p), m = match[e];
        const float* z = conf + e * c;
        double code[4] = {0.0, 0.0, 0.0, 0.0}, smooth = 0.0, score = 0.0;
        int label = -1;
        if (m >= 0) {
            const float* row = gt + 8LL * gidx[(long long)n * rows + m];
            const float* pr = priors + 4LL * i;
            const float* var = priors + 4LL * ((long long)p + i);
            const double pw = (double)pr[2] - pr[0], ph = (double)pr[3] - pr[1];
            const double pcx = ((double)pr[0] + pr[2]) / 2, pcy = ((double)pr[1] + pr[3]) / 2;
            const double bw = (double)row[5] - row[3], bh = (double)row[6] - row[4];
            const double bcx = ((double)row[3] + row[5]) / 2, bcy = ((double)row[4] + row[6]) / 2;
            code[0] = (bcx - pcx) / pw / var[0];
            code[1] = (bcy - pcy) / ph / var[1];
            code[2] = log(bw / pw) / var[2];
            code[3] = log(bh / ph) / var[3];
            label = (int)row[1];
            for (int k = 0; k < 4; ++k) {
                const double d = (double)loc[4 * e + k] - code[k], a = fabs(d);
                smooth += a < 1.0 ? __dmul_rn(__dmul_rn(0.5, d), d) : a - 0.5;
            }
        }
        const bool candidate = m < 0 && mine && ov[e] < neg_overlap;
        if (m >= 0 || candidate) {
            double top, total;
            bw_softmax_parts(z, c, &top, &total);
            score = bw_class_loss(z, m >= 0 ? label : background, top, total);
        }
        if (targets)
            for (int k = 0; k < 4; ++k) targets[4 * e + k] = (float)code[k];
        if (labels) labels[e] = (float)label;
        lsum[e] = smooth;
        closs[e] = score;
    }
}

// == kernel multibox_mine ==
// Block n: MAX_NEGATIVE (`mine`) keeps the int(positives * neg_pos_ratio) candidates of
// the largest scores, of equal scores the lower priors (the cpu's stable sort). A radix
// select over the scores' order keys, 8 bits a pass from the top, finds the score of the
// last one kept and how many of that score are kept; a pass in prior order (an ordered
// compaction) then keeps those of a larger score and the first of that score. Their
// labels become the background. partial[3 n ...]: the image's smooth L1 sum, class loss
// sum (positives and kept negatives) and positive count, each a fixed-order block sum.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
multibox_mine(const int* match, const double* ov, const double* lsum, const double* closs,
              int p, int mine, double neg_pos_ratio, double neg_overlap, int background,
              float* labels, double* partial) {
    __shared__ double scratch[64];
    __shared__ unsigned int hist[256];
    __shared__ int base, counts[32], digit, left;
    const long long off = (long long)blockIdx.x * p;
    double pos = 0.0, cands = 0.0;
    for (int i = threadIdx.x; i < p; i += blockDim.x) {
        const int m = match[off + i];
        pos += m >= 0 ? 1.0 : 0.0;
        cands += m < 0 && ov[off + i] < neg_overlap ? 1.0 : 0.0;
    }
    bw_block_sum2_d(&pos, &cands, scratch);
    const long long want = (long long)(pos * neg_pos_ratio);
    const long long keep = !mine ? 0 : want < (long long)cands ? want : (long long)cands;
    // the keep-th largest key and how many of it are kept, 8 bits a pass
    unsigned long long prefix = 0ull, mask = 0ull;
    if (threadIdx.x == 0) left = (int)keep;
    for (int shift = 56; keep > 0 && keep < (long long)cands && shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0u;
        __syncthreads();
        for (int i = threadIdx.x; i < p; i += blockDim.x) {
            if (match[off + i] >= 0 || !(ov[off + i] < neg_overlap)) continue;
            const unsigned long long key = bw_order_key(closs[off + i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int d = 255;
            for (; d > 0 && (int)hist[d] < left; --d) left -= (int)hist[d];
            digit = d;
        }
        __syncthreads();
        prefix |= (unsigned long long)digit << shift;
        mask |= 255ull << shift;
    }
    const bool all = keep >= (long long)cands;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    double loc_sum = 0.0, conf_sum = 0.0;
    for (int i0 = 0; i0 < p; i0 += blockDim.x) {
        const int i = i0 + threadIdx.x;
        bool cand = false, tie = false;
        unsigned long long key = 0ull;
        if (i < p) {
            const int m = match[off + i];
            if (m >= 0) {
                loc_sum += lsum[off + i];
                conf_sum += closs[off + i];
            }
            cand = mine && m < 0 && ov[off + i] < neg_overlap;
            key = bw_order_key(closs[off + i]);
            tie = cand && !all && keep > 0 && key == prefix;
        }
        const int rank = bw_ordered_rank(tie, &base, counts);
        const bool kept = cand && (all || (keep > 0 && (key > prefix || (tie && rank < left))));
        if (kept) {
            conf_sum += closs[off + i];
            if (labels) labels[off + i] = (float)background;
        }
    }
    bw_block_sum2_d(&loc_sum, &conf_sum, scratch);
    if (threadIdx.x == 0) {
        partial[3 * blockIdx.x] = loc_sum;
        partial[3 * blockIdx.x + 1] = conf_sum;
        partial[3 * blockIdx.x + 2] = pos;
    }
}

// == kernel multibox_loss_fwd ==
// (loc_weight * smooth L1 sum + class loss sum) / the normalizer, the images' partial
// sums added in image order; NaN when multibox_gather_gt found a row the cpu refuses.
extern "C" __global__ void multibox_loss_fwd(const double* partial, const int* gcount,
                                             int num, int p, int normalization,
                                             double loc_weight, float* loss) {
    if (threadIdx.x != 0) return;
    double loc_sum = 0.0, conf_sum = 0.0, pos = 0.0;
    for (int n = 0; n < num; ++n) {
        loc_sum += partial[3 * n];
        conf_sum += partial[3 * n + 1];
        pos += partial[3 * n + 2];
    }
    const double norm = bw_normalizer(normalization, num, (double)num * p, pos);
    *loss = gcount[num] ? NAN : (float)(__dadd_rn(__dmul_rn(loc_weight, loc_sum), conf_sum)
                                        / norm);
}

// == kernel multibox_grad_scale ==
// d(loss) times `factor` (loc_weight for loc, 1 for conf) over the normalizer of the
// saved labels' positives (>= 0 and not the background), into *scale for the dX kernel
// launched after it. One block.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
multibox_grad_scale(const float* labels, int num, int p, int background, int normalization,
                    double factor, const float* dout, double* scale) {
    __shared__ double scratch[32];
    double pos = 0.0;
    for (long long e = threadIdx.x; e < (long long)num * p; e += blockDim.x) {
        const float lab = labels[e];
        pos += lab >= 0.0f && lab != (float)background ? 1.0 : 0.0;
    }
    pos = bw_block_sum_d(pos, scratch);
    if (threadIdx.x == 0)
        *scale = __dmul_rn(factor, (double)*dout)
                 / bw_normalizer(normalization, num, (double)num * p, pos);
}

// == kernel multibox_loss_dx_loc ==
// d loc = smooth L1'(loc - targets) * scale at the positives, 0 elsewhere. Grid-stride
// over N * P * 4.
extern "C" __global__ void multibox_loss_dx_loc(const float* loc, const float* targets,
                                                const float* labels, int background,
                                                const double* scale, float* dx,
                                                long long n, int accumulate) {
    const double s = *scale;
    BW_GRID_STRIDE(e, n) {
        const int lab = (int)labels[e / 4];
        double g = 0.0;
        if (lab >= 0 && lab != background) {
            const double d = (double)loc[e] - (double)targets[e];
            g = (fabs(d) < 1.0 ? d : (d > 0.0 ? 1.0 : (d < 0.0 ? -1.0 : 0.0))) * s;
        }
        bw_put(dx, e, (float)g, accumulate);
    }
}

// == kernel multibox_loss_dx_conf ==
// d conf = (softmax - onehot(label)) * scale at the counted priors (label >= 0), 0
// elsewhere. One thread per prior (its C classes share one softmax), grid-stride.
extern "C" __global__ void multibox_loss_dx_conf(const float* conf, const float* labels,
                                                 const double* scale, float* dx,
                                                 long long priors, int c, int accumulate) {
    const double s = *scale;
    BW_GRID_STRIDE(e, priors) {
        const int lab = (int)labels[e];
        const float* z = conf + e * c;
        double top = 0.0, total = 1.0;
        if (lab >= 0) bw_softmax_parts(z, c, &top, &total);
        for (int q = 0; q < c; ++q) {
            const double g = lab < 0 ? 0.0
                           : (exp((double)z[q] - top) / total - (q == lab ? 1.0 : 0.0)) * s;
            bw_put(dx, e * c + q, (float)g, accumulate);
        }
    }
}
