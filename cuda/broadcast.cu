// broadcast.cu: Bias, scale_mul and Tile of bwplan/ops/broadcast.py.
//
// Tensors are seen as [outer, dim, inner] (bias, scale_mul) or [outer, tiles, inner] (tile), the
// three sizes computed by the launch code. Forwards and dX are grid-stride loops over the
// elements written; the bias gradient takes one block per bias element, summed in double
// (common.cuh), since it reduces a whole batch into a few values. bias_add (a bias given
// as a second input) uses the same kernels with the input's address. scale_mul's factor
// gradient is bias_dw's reduction over dout * x.

#include "common.cuh"

// == kernel bias_fwd ==
extern "C" __global__ void bias_fwd(const float* x, const float* bias, float* out,
                                    long long n, long long dim, long long inner) {
    BW_GRID_STRIDE(i, n) out[i] = x[i] + bias[(i / inner) % dim];
}

// == kernel bias_dx ==
// The bias adds to every element: dx = dout.
extern "C" __global__ void bias_dx(const float* dout, float* dx, long long n, int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(dx, i, dout[i], accumulate);
}

// == kernel bias_dw ==
// dbias[j] (+)= sum of dout[o, j, s] over o and s, for j = blockIdx.x; consecutive threads
// take consecutive s.
extern "C" __global__ void bias_dw(const float* dout, float* dw, long long outer,
                                   long long dim, long long inner, int accumulate) {
    __shared__ double scratch[32];
    const long long j = blockIdx.x, count = outer * inner;
    double acc = 0.0;
    for (long long t = threadIdx.x; t < count; t += blockDim.x)
        acc += dout[((t / inner) * dim + j) * inner + t % inner];
    const double total = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) bw_put(dw, j, (float)total, accumulate);
}

// == kernel scale_mul_fwd ==
// out = x * s[j], j the element's index in dim; also dx = dout * s (scale_mul's dX).
extern "C" __global__ void scale_mul_fwd(const float* x, const float* s, float* out,
                                         long long n, long long dim, long long inner,
                                         int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(out, i, x[i] * s[(i / inner) % dim], accumulate);
}

// == kernel scale_mul_ds ==
// ds[j] (+)= sum of dout[o, j, t] * x[o, j, t] over o and t, for j = blockIdx.x; one block
// per factor element, as bias_dw.
extern "C" __global__ void scale_mul_ds(const float* dout, const float* x, float* ds,
                                        long long outer, long long dim, long long inner,
                                        int accumulate) {
    __shared__ double scratch[32];
    const long long j = blockIdx.x, count = outer * inner;
    double acc = 0.0;
    for (long long t = threadIdx.x; t < count; t += blockDim.x) {
        const long long at = ((t / inner) * dim + j) * inner + t % inner;
        acc += (double)dout[at] * (double)x[at];
    }
    const double total = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) bw_put(ds, j, (float)total, accumulate);
}

// == kernel tile_fwd ==
// out[o, t, s] = x[o, s]: n output elements.
extern "C" __global__ void tile_fwd(const float* x, float* out, long long n, long long inner,
                                    int tiles) {
    BW_GRID_STRIDE(i, n) out[i] = x[(i / (inner * tiles)) * inner + i % inner];
}

// == kernel tile_dx ==
// dx[o, s] = sum over t of dout[o, t, s]: n input elements, each summing its tiles in order.
extern "C" __global__ void tile_dx(const float* dout, float* dx, long long n, long long inner,
                                   int tiles, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float* d = dout + (i / inner) * inner * tiles + i % inner;
        float v = 0.0f;
        for (int t = 0; t < tiles; ++t) v += d[(long long)t * inner];
        bw_put(dx, i, v, accumulate);
    }
}
