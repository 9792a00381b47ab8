// spatial_norm.cu: MVN and within-channel LRN of bwplan/ops/spatial_norm.py.
//
// MVN takes one block per row (a sample, or one channel of a sample): two block sums in
// double (the mean, then the variance of the centred row, the two-pass formula Caffe
// uses), then a pass that writes the row. Its dX is the same shape: the means of g and of
// g * y, then the row. LRN within a channel takes one thread per element and sums its
// size x size window directly (size is 3 or 5 in practice: 9 or 25 reads from a plane
// the neighbouring threads also read, so they come from cache).

#include "common.cuh"

// == kernel mvn_fwd ==
// Row r = blockIdx.x of `dim` values: out = x - mean, divided by (std + eps) when
// normalize_variance; std (the biased standard deviation) saved when given.
extern "C" __global__ void mvn_fwd(const float* x, float* out, float* std, long long dim,
                                   int normalize_variance, float eps) {
    __shared__ double scratch[32];
    const long long base = (long long)blockIdx.x * dim;
    double acc = 0.0;
    for (long long j = threadIdx.x; j < dim; j += blockDim.x) acc += x[base + j];
    const float mean = (float)(bw_block_sum_d(acc, scratch) / (dim > 0 ? dim : 1));
    float inv = 1.0f;
    if (normalize_variance) {
        acc = 0.0;
        for (long long j = threadIdx.x; j < dim; j += blockDim.x) {
            const double c = x[base + j] - mean;
            acc += c * c;
        }
        const float s = (float)sqrt(bw_block_sum_d(acc, scratch) / (dim > 0 ? dim : 1));
        if (std && threadIdx.x == 0) std[blockIdx.x] = s;
        inv = 1.0f / (s + eps);
    }
    for (long long j = threadIdx.x; j < dim; j += blockDim.x)
        out[base + j] = (x[base + j] - mean) * inv;
}

// == kernel mvn_dx ==
// dx = g - mean(g) (no variance); with it, (g - mean(g) - u mean(g y)) / (s + eps) where
// u = (x - mean) / s = y (s + eps) / s (0 for a constant row).
extern "C" __global__ void mvn_dx(const float* out, const float* std, const float* dout,
                                  float* dx, long long dim, int normalize_variance, float eps,
                                  int accumulate) {
    __shared__ double scratch[32];
    const long long base = (long long)blockIdx.x * dim;
    const double count = dim > 0 ? (double)dim : 1.0;
    double acc = 0.0, acc_y = 0.0;
    for (long long j = threadIdx.x; j < dim; j += blockDim.x) {
        acc += dout[base + j];
        if (normalize_variance) acc_y += (double)dout[base + j] * out[base + j];
    }
    const float mean_g = (float)(bw_block_sum_d(acc, scratch) / count);
    const float mean_gy = normalize_variance ? (float)(bw_block_sum_d(acc_y, scratch) / count)
                                             : 0.0f;
    const float s = normalize_variance ? std[blockIdx.x] : 0.0f;
    const float denom = s + eps;
    for (long long j = threadIdx.x; j < dim; j += blockDim.x) {
        float g = dout[base + j] - mean_g;
        if (normalize_variance) {
            const float unit = s > 0.0f ? out[base + j] * denom / s : 0.0f;
            g = (g - unit * mean_gy) / denom;
        }
        bw_put(dx, base + j, g, accumulate);
    }
}

// The sum of a over the size x size window centred on element i of its h x w plane.
__device__ __forceinline__ float bw_window_sum(const float* a, const float* b, const float* c,
                                               long long i, int h, int w, int size) {
    const long long plane = i / ((long long)h * w);
    const int y = (int)((i / w) % h), x = (int)(i % w), pad = (size - 1) / 2;
    const long long base = plane * h * w;
    float acc = 0.0f;
    for (int dy = max(0, y - pad); dy < min(h, y + pad + 1); ++dy)
        for (int dx = max(0, x - pad); dx < min(w, x + pad + 1); ++dx) {
            const long long k = base + (long long)dy * w + dx;
            acc += b ? a[k] * b[k] / c[k] : a[k] * a[k];
        }
    return acc;
}

// == kernel lrn_within_channel_fwd ==
// scale = 1 + alpha / size^2 * (window sum of x^2); out = x * scale^-beta; scale saved
// when given.
extern "C" __global__ void lrn_within_channel_fwd(const float* x, float* out, float* scale,
                                                  long long n, int h, int w, int size,
                                                  float alpha, float beta) {
    const float coef = alpha / (float)(size * size);
    BW_GRID_STRIDE(i, n) {
        const float s = 1.0f + coef * bw_window_sum(x, nullptr, nullptr, i, h, w, size);
        if (scale) scale[i] = s;
        out[i] = x[i] * powf(s, -beta);
    }
}

// == kernel lrn_within_channel_dx ==
// dx = g scale^-beta - 2 alpha beta / size^2 * x * (window sum of g * out / scale).
extern "C" __global__ void lrn_within_channel_dx(const float* x, const float* out,
                                                 const float* scale, const float* dout,
                                                 float* dx, long long n, int h, int w,
                                                 int size, float alpha, float beta,
                                                 int accumulate) {
    const float coef = alpha / (float)(size * size);
    BW_GRID_STRIDE(i, n) {
        const float spread = bw_window_sum(dout, out, scale, i, h, w, size);
        const float g = dout[i] * powf(scale[i], -beta) - 2.0f * coef * beta * x[i] * spread;
        bw_put(dx, i, g, accumulate);
    }
}
