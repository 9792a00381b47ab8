// norm.cu: normalisation along the channel dimension, the semantics of
// bwplan/ops/norm.py: batchnorm (batch statistics or stored ones), Caffe's per-channel
// scale, LRN across channels (Caffe ACROSS_CHANNELS) and softmax along any axis.
//
// Tensors are seen as [N, C, S], S the product of the dimensions after the channel (1 for
// an [N, C] input). Per-channel reductions take one block of 256 threads per channel and
// sum in double (bw_channel_dot); the per-element passes are grid-stride loops.
// Launch geometry: bwplan/kernels/cuda/norm.py.

#include "common.cuh"

// == kernel batchnorm_fwd ==
// One block per channel c. With batch statistics (use_batch): mean, then the biased
// variance from the deviations (two passes: accurate when |mean| >> std), then
// inv = 1/sqrt(var + eps). Otherwise the stored statistics normalise (read before any
// update). batch_stats, when given, receives the [mean; inv] that normalised ([2, C]); with
// update_running the stored mean and var move towards the batch's, the stored variance
// being the unbiased estimate (m / (m - 1), a factor 1 when m = 1), as Caffe and torch
// do. Then y = (x - mean) * inv * w + b, the affine part only when weight is given.
extern "C" __global__ void batchnorm_fwd(const float* x, float* out, float* mean_param,
                                         float* var_param, const float* weight,
                                         const float* bias, float* batch_stats, int n, int c,
                                         long long s, float eps, float momentum,
                                         int use_batch, int update_running) {
    __shared__ double scratch[32];
    const int ch = blockIdx.x;
    const long long m = (long long)n * s;
    // every thread reads the stored values before the block sums below synchronise, so
    // before thread 0 updates them
    double mean = mean_param[ch];
    double inv = 1.0 / sqrt((double)var_param[ch] + eps);
    if (use_batch || update_running) {
        const double b_mean = bw_channel_dot(x, nullptr, n, c, s, scratch) / m;
        double dev = 0.0;
        for (long long t = threadIdx.x; t < m; t += blockDim.x) {
            const double d = x[bw_ncs((int)(t / s), ch, t % s, c, s)] - b_mean;
            dev += d * d;
        }
        const double var = bw_block_sum_d(dev, scratch) / m;
        if (use_batch) {
            mean = b_mean;
            inv = 1.0 / sqrt(var + eps);
        }
        if (threadIdx.x == 0 && update_running) {
            const double unbiased = m > 1 ? var * m / (m - 1) : var;
            mean_param[ch] = (float)(momentum * mean_param[ch] + (1.0 - momentum) * b_mean);
            var_param[ch] = (float)(momentum * var_param[ch] + (1.0 - momentum) * unbiased);
        }
    }
    if (threadIdx.x == 0 && batch_stats) {
        batch_stats[ch] = (float)mean;
        batch_stats[c + ch] = (float)inv;
    }
    const float scale = (float)(inv * (weight ? weight[ch] : 1.0f));
    const float shift = (bias ? bias[ch] : 0.0f) - (float)(mean * scale);
    for (long long t = threadIdx.x; t < m; t += blockDim.x) {
        const long long i = bw_ncs((int)(t / s), ch, t % s, c, s);
        out[i] = x[i] * scale + shift;
    }
}

// == kernel batchnorm_dx ==
// One block per channel. Batch statistics: dx = inv * (g - mean(g) - xhat * mean(g xhat))
// with g = dy * w, means over the channel's N*S values (every output depends on the whole
// batch). Stored statistics: a fixed affine map, dx = dy * w * inv, inv from batch_stats
// when the forward saved it (the stored ones moved since), else 1/sqrt(var + eps); x is
// then null (the rule does not read it).
extern "C" __global__ void batchnorm_dx(const float* x, const float* dout, float* dx,
                                        const float* weight, const float* var_param,
                                        const float* batch_stats, int n, int c, long long s,
                                        float eps, int use_batch, int accumulate) {
    __shared__ double scratch[32];
    const int ch = blockIdx.x;
    const long long m = (long long)n * s;
    const float wc = weight ? weight[ch] : 1.0f;
    if (!use_batch) {
        const double iv = batch_stats ? (double)batch_stats[c + ch]
                                      : 1.0 / sqrt((double)var_param[ch] + eps);
        const float scale = (float)(wc * iv);
        for (long long t = threadIdx.x; t < m; t += blockDim.x) {
            const long long i = bw_ncs((int)(t / s), ch, t % s, c, s);
            bw_put(dx, i, dout[i] * scale, accumulate);
        }
        return;
    }
    const float mu = batch_stats[ch], iv = batch_stats[c + ch];
    double sg = 0.0, sgx = 0.0;
    for (long long t = threadIdx.x; t < m; t += blockDim.x) {
        const long long i = bw_ncs((int)(t / s), ch, t % s, c, s);
        const double g = (double)dout[i] * wc;
        sg += g;
        sgx += g * (x[i] - mu) * iv;
    }
    const float mean_g = (float)(bw_block_sum_d(sg, scratch) / m);
    const float mean_gx = (float)(bw_block_sum_d(sgx, scratch) / m);
    for (long long t = threadIdx.x; t < m; t += blockDim.x) {
        const long long i = bw_ncs((int)(t / s), ch, t % s, c, s);
        const float xhat = (x[i] - mu) * iv;
        bw_put(dx, i, iv * (dout[i] * wc - mean_g - xhat * mean_gx), accumulate);
    }
}

// == kernel batchnorm_dw ==
// dweight[c] (+)= sum of dy * xhat over the channel; xhat from the batch statistics the
// forward saved (use_batch: it saved them), or from the stored mean and var. One block
// per channel.
extern "C" __global__ void batchnorm_dw(const float* x, const float* dout, float* dweight,
                                        const float* mean_param, const float* var_param,
                                        const float* batch_stats, int n, int c, long long s,
                                        float eps, int use_batch, int accumulate) {
    __shared__ double scratch[32];
    const int ch = blockIdx.x;
    double mu, iv;
    if (use_batch) {
        mu = batch_stats[ch];
        iv = batch_stats[c + ch];
    } else {
        mu = mean_param[ch];
        iv = 1.0 / sqrt((double)var_param[ch] + eps);
    }
    double acc = 0.0;
    for (long long t = threadIdx.x; t < (long long)n * s; t += blockDim.x) {
        const long long i = bw_ncs((int)(t / s), ch, t % s, c, s);
        acc += (double)dout[i] * (x[i] - mu);
    }
    const double v = bw_block_sum_d(acc, scratch) * iv;
    if (threadIdx.x == 0) bw_put(dweight, ch, (float)v, accumulate);
}

// == kernel batchnorm_db ==
// dbias[c] (+)= sum of dy over the channel. One block per channel.
extern "C" __global__ void batchnorm_db(const float* dout, float* dbias, int n, int c,
                                        long long s, int accumulate) {
    __shared__ double scratch[32];
    const double v = bw_channel_dot(dout, nullptr, n, c, s, scratch);
    if (threadIdx.x == 0) bw_put(dbias, blockIdx.x, (float)v, accumulate);
}

// == kernel scale_fwd ==
// out = x * weight[c] (+ bias[c]); bias may be null. Grid-stride over elements.
extern "C" __global__ void scale_fwd(const float* x, float* out, const float* weight,
                                     const float* bias, long long total, int c, long long s) {
    BW_GRID_STRIDE(i, total) {
        const int ch = (int)((i / s) % c);
        out[i] = x[i] * weight[ch] + (bias ? bias[ch] : 0.0f);
    }
}

// == kernel scale_dx ==
extern "C" __global__ void scale_dx(const float* weight, const float* dout, float* dx,
                                    long long total, int c, long long s, int accumulate) {
    BW_GRID_STRIDE(i, total) bw_put(dx, i, dout[i] * weight[(i / s) % c], accumulate);
}

// == kernel scale_dw ==
// dweight[c] (+)= sum of dy * x over the channel. One block per channel.
extern "C" __global__ void scale_dw(const float* x, const float* dout, float* dweight, int n,
                                    int c, long long s, int accumulate) {
    __shared__ double scratch[32];
    const double v = bw_channel_dot(dout, x, n, c, s, scratch);
    if (threadIdx.x == 0) bw_put(dweight, blockIdx.x, (float)v, accumulate);
}

// == kernel scale_db ==
// dbias[c] (+)= sum of dy over the channel. One block per channel.
extern "C" __global__ void scale_db(const float* dout, float* dbias, int n, int c,
                                    long long s, int accumulate) {
    __shared__ double scratch[32];
    const double v = bw_channel_dot(dout, nullptr, n, c, s, scratch);
    if (threadIdx.x == 0) bw_put(dbias, blockIdx.x, (float)v, accumulate);
}

// == kernel lrn_fwd ==
// scale = k + alpha/size * (sum of x^2 over channels c - size/2 .. c + size/2, zero
// padded); out = x * scale^-beta. One thread per element, the window summed directly
// (size reads, all from the same (n, s) column: neighbouring threads read neighbouring
// s, so the reads coalesce). The scale is saved only when the backward reads it.
extern "C" __global__ void lrn_fwd(const float* x, float* out, float* scale_out,
                                   long long total, int c, long long s, int size,
                                   float alpha, float beta, float k) {
    const int half = size / 2;
    BW_GRID_STRIDE(i, total) {
        const int ch = (int)((i / s) % c);
        const long long col = i - (long long)ch * s;  // element (n, 0, s)
        float acc = 0.0f;
        for (int q = max(ch - half, 0); q <= min(ch + half, c - 1); ++q) {
            const float v = x[col + q * s];
            acc += v * v;
        }
        const float sc = k + alpha / size * acc;
        out[i] = x[i] * powf(sc, -beta);
        if (scale_out) scale_out[i] = sc;
    }
}

// == kernel lrn_dx ==
// dx = dy * scale^-beta - 2 alpha beta / size * x * sum over the window of
// dy * out / scale (the window is symmetric, so the channels c contributed to are the
// channels of its own window).
extern "C" __global__ void lrn_dx(const float* x, const float* out, const float* scale,
                                  const float* dout, float* dx, long long total, int c,
                                  long long s, int size, float alpha, float beta,
                                  int accumulate) {
    const int half = size / 2;
    BW_GRID_STRIDE(i, total) {
        const int ch = (int)((i / s) % c);
        const long long col = i - (long long)ch * s;
        float spread = 0.0f;
        for (int q = max(ch - half, 0); q <= min(ch + half, c - 1); ++q) {
            const long long j = col + q * s;
            spread += dout[j] * out[j] / scale[j];
        }
        const float g = dout[i] * powf(scale[i], -beta)
                        - 2.0f * alpha * beta / size * x[i] * spread;
        bw_put(dx, i, g, accumulate);
    }
}

// == kernel softmax_fwd ==
// The tensor as [outer, L, inner], softmax along L. One warp per (outer, inner) row, 8
// rows per 256-thread block: rows are short (classes), so a warp with shuffles beats a
// block with barriers; the exponentials are computed twice rather than stored.
extern "C" __global__ void softmax_fwd(const float* x, float* out, long long outer, int len,
                                       long long inner) {
    const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= outer * inner) return;
    const long long base = (row / inner) * len * inner + row % inner;
    float mx = -INFINITY;
    for (int l = lane; l < len; l += 32) mx = fmaxf(mx, x[base + l * inner]);
    mx = bw_warp_max(mx);
    float sum = 0.0f;
    for (int l = lane; l < len; l += 32) sum += expf(x[base + l * inner] - mx);
    sum = bw_warp_sum(sum);
    for (int l = lane; l < len; l += 32)
        out[base + l * inner] = expf(x[base + l * inner] - mx) / sum;
}

// == kernel softmax_dx ==
// dx = out * (dy - sum_L(dy * out)). One warp per row, as softmax_fwd.
extern "C" __global__ void softmax_dx(const float* out, const float* dout, float* dx,
                                      long long outer, int len, long long inner,
                                      int accumulate) {
    const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= outer * inner) return;
    const long long base = (row / inner) * len * inner + row % inner;
    float dot = 0.0f;
    for (int l = lane; l < len; l += 32) dot += dout[base + l * inner] * out[base + l * inner];
    dot = bw_warp_sum(dot);
    for (int l = lane; l < len; l += 32) {
        const long long i = base + l * inner;
        bw_put(dx, i, out[i] * (dout[i] - dot), accumulate);
    }
}
