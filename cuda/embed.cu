// embed.cu: Caffe's Embed of bwplan/ops/embed.py: out[m, :] = weight[x[m], :] (+ bias).
//
// The indices may be int32, int64, float32 or float64 (read with bw_load_index, a float
// truncated as Caffe casts it); an index outside [0, input_dim) makes its output row NaN,
// as a bad label makes a loss NaN (the CPU target refuses it with a message).
// The weight gradient is a scatter-add. Atomics would make it depend on the order the
// threads run, so instead each thread owns one weight element and scans every index for
// its row, in order: M * input_dim * num_output reads, fine for the vocabularies of
// Caffe's models (a few thousand rows) and bit-reproducible; a sort by index would be
// the way to scale it.

#include "common.cuh"

// == kernel embed_fwd ==
extern "C" __global__ void embed_fwd(const void* x, int x_dtype, const float* weight,
                                     const float* bias, float* out, long long n,
                                     int input_dim, int num_output) {
    BW_GRID_STRIDE(i, n) {
        const long long m = i / num_output;
        const int o = (int)(i % num_output);
        const long long r = bw_load_index(x, m, x_dtype);
        float v = (r >= 0 && r < input_dim) ? weight[r * num_output + o] : NAN;
        if (bias) v += bias[o];
        out[i] = v;
    }
}

// == kernel embed_dw ==
// dweight[r, o] (+)= sum of dout[m, o] over the m whose index is r, m in order.
extern "C" __global__ void embed_dw(const void* x, int x_dtype, const float* dout,
                                    float* dw, long long rows, int input_dim,
                                    int num_output, int accumulate) {
    const long long count = (long long)input_dim * num_output;
    BW_GRID_STRIDE(i, count) {
        const long long r = i / num_output;
        const int o = (int)(i % num_output);
        float v = 0.0f;
        for (long long m = 0; m < rows; ++m)
            if (bw_load_index(x, m, x_dtype) == r) v += dout[m * num_output + o];
        bw_put(dw, i, v, accumulate);
    }
}

// == kernel embed_db ==
// dbias[o] (+)= sum of dout[:, o], for o = blockIdx.x, summed in double.
extern "C" __global__ void embed_db(const float* dout, float* dw, long long rows,
                                    int num_output, int accumulate) {
    __shared__ double scratch[32];
    const int o = blockIdx.x;
    double acc = 0.0;
    for (long long m = threadIdx.x; m < rows; m += blockDim.x) acc += dout[m * num_output + o];
    const double total = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) bw_put(dw, o, (float)total, accumulate);
}
