// reduction.cu: Reduction, ArgMax and Silence of bwplan/ops/reduction.py.
//
// Reduction's forward takes one block per output element (a row of `dim` inputs), summed
// in double with the block sum of common.cuh, so a scalar reduction of millions of floats
// keeps float32 accuracy; its dX is a grid-stride loop. ArgMax takes one thread per row:
// top_k scans of the row, each picking the largest (value, index) pair below the last
// pick, which orders ties as Caffe does (the larger index first) with no sort and no
// shared memory. Silence has nothing to compute.

#include "common.cuh"

// Reduction operations, in the order of bwplan.ops.reduction.OPERATIONS.
enum { BW_SUM = 0, BW_ASUM = 1, BW_SUMSQ = 2, BW_MEAN = 3 };

// == kernel reduction_fwd ==
// out[r] = coeff * sum over the row r = blockIdx.x of x, |x| or x^2 (MEAN: the coefficient
// comes divided by dim).
extern "C" __global__ void reduction_fwd(const float* x, float* out, long long dim,
                                         int operation, float coeff) {
    __shared__ double scratch[32];
    const float* row = x + (long long)blockIdx.x * dim;
    double acc = 0.0;
    for (long long j = threadIdx.x; j < dim; j += blockDim.x) {
        const double v = row[j];
        acc += operation == BW_ASUM ? fabs(v) : operation == BW_SUMSQ ? v * v : v;
    }
    const double total = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)(total * coeff);
}

// == kernel reduction_dx ==
// dx[i] = coeff * dout[row of i], times sign(x) (ASUM) or 2 x (SUMSQ); x is null for SUM
// and MEAN, which do not read it.
extern "C" __global__ void reduction_dx(const float* x, const float* dout, float* dx,
                                        long long n, long long dim, int operation,
                                        float coeff, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        float g = dout[i / dim] * coeff;
        if (operation == BW_ASUM) {
            const float v = x[i];
            g = v > 0.0f ? g : (v < 0.0f ? -g : 0.0f);
        } else if (operation == BW_SUMSQ) {
            g *= 2.0f * x[i];
        }
        bw_put(dx, i, g, accumulate);
    }
}

// == kernel argmax_fwd ==
// x is [outer, dim, stride]; out is [outer, 1 or 2, top_k, stride]: per (outer, s) the
// indices of the top_k values, or their values (values_only), or both (with_values).
// Indices are written as floats, as Caffe's float top does.
extern "C" __global__ void argmax_fwd(const float* x, float* out, long long rows, int dim,
                                      long long stride, int top_k, int values_only,
                                      int with_values) {
    BW_GRID_STRIDE(r, rows) {
        const long long o = r / stride, s = r % stride;
        const float* col = x + o * dim * stride + s;
        float* dst = out + o * (with_values ? 2 : 1) * top_k * stride + s;
        float prev_v = INFINITY;
        int prev_j = dim;
        for (int t = 0; t < top_k; ++t) {
            float best_v = -INFINITY;
            int best_j = -1;
            for (int j = 0; j < dim; ++j) {
                const float v = col[(long long)j * stride];
                const bool below = v < prev_v || (v == prev_v && j < prev_j);
                if (below && (best_j < 0 || v > best_v || (v == best_v && j > best_j))) {
                    best_v = v;
                    best_j = j;
                }
            }
            prev_v = best_v;
            prev_j = best_j;
            dst[(long long)t * stride] = values_only ? best_v : (float)best_j;
            if (with_values) dst[(long long)(top_k + t) * stride] = best_v;
        }
    }
}

// == kernel silence_fwd ==
// Silence only consumes its inputs: its output has no elements (n = 0) and nothing is
// computed. It runs only in forward-only programs, which compute every unread output.
extern "C" __global__ void silence_fwd(float* out, long long n) {
    BW_GRID_STRIDE(i, n) out[i] = 0.0f;
}
