// loss.cu: losses and the accuracy metric of bwplan/ops/loss.py. Every loss averages over
// the batch N (dimension 0 of its first input) and writes one float; a loss's dX reads
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

// == kernel softmax_cross_entropy_fwd ==
// Logits [N, C, S...] with classes on dimension 1, labels [N, S...]. Per row (n, s):
// log-softmax, -log p[label] unless the label is ignore_label; loss = sum / valid count
// (at least 1). prob ([N, C, S], the backward's aux) is written only when given.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
softmax_cross_entropy_fwd(const float* logits, const void* label, int label_dtype,
                          float* loss, float* prob, int n, int c, long long s,
                          long long ignore) {
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
            total += (lab >= 0 && lab < c) ? -(double)(logits[base + lab * s] - mx - lse)
                                           : (double)NAN;
        }
    }
    total = bw_block_sum_d(total, scratch);
    valid = bw_block_sum_d(valid, scratch);
    if (threadIdx.x == 0) *loss = (float)(total / (valid > 0.0 ? valid : 1.0));
}

// == kernel softmax_cross_entropy_dx ==
// d logits = (prob - onehot(label)) * valid * dout / count. Each block first counts the
// valid labels itself (N*S reads, cheaper than a separate pass), then covers its share
// of the N*C*S elements in a grid-stride loop. Block 256.
extern "C" __global__ void softmax_cross_entropy_dx(const float* prob, const void* label,
                                                    int label_dtype, const float* dout,
                                                    float* dx, int n, int c, long long s,
                                                    long long ignore, int accumulate) {
    __shared__ double scratch[32];
    double valid = 0.0;
    for (long long r = threadIdx.x; r < (long long)n * s; r += blockDim.x)
        valid += bw_load_index(label, r, label_dtype) != ignore ? 1.0 : 0.0;
    valid = bw_block_sum_d(valid, scratch);
    const float scale = *dout / (float)(valid > 0.0 ? valid : 1.0);
    BW_GRID_STRIDE(i, (long long)n * c * s) {
        const long long q = (i / s) % c, row = (i / (s * c)) * s + i % s;
        const long long lab = bw_load_index(label, row, label_dtype);
        const float g = lab == ignore ? 0.0f : (prob[i] - (lab == q ? 1.0f : 0.0f)) * scale;
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
// Fraction of rows (n, s) whose label is among the top_k scores; a class tied with the
// true one counts as ranked above it (as Caffe); a label outside [0, C) is a miss. One
// block, one warp per row.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
accuracy_fwd(const float* logits, const void* label, int label_dtype, float* out, int n,
             int c, long long s, int top_k) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double hits = 0.0;
    for (long long row = warp; row < (long long)n * s; row += warps) {
        const long long base = (row / s) * c * s + row % s;
        const long long lab = bw_load_index(label, row, label_dtype);
        const float truth = (lab >= 0 && lab < c) ? logits[base + lab * s] : INFINITY;
        float ahead = 0.0f;
        for (int q = lane; q < c; q += 32) ahead += logits[base + q * s] >= truth ? 1.0f : 0.0f;
        ahead = bw_warp_sum(ahead);
        if (lane == 0 && lab >= 0 && lab < c && ahead - 1.0f < top_k) hits += 1.0;
    }
    hits = bw_block_sum_d(hits, scratch);
    if (threadIdx.x == 0) *out = (float)(hits / ((double)n * s));
}
