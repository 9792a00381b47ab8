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
