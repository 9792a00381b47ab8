// linear.cu: the fully connected layer of bwplan/ops/linear.py (Caffe InnerProduct):
// x [B, K] (flattened from dimension 1), W [O, K], y = x W^T + b.
//
//   forward  y[b, o]  = sum_k x[b, k] W[o, k] + bias[o]     M = B, N = O, K = K
//   dX       dx[b, k] = sum_o dy[b, o] W[o, k]               M = B, N = K, K = O
//   dW       dW[o, k] = sum_b dy[b, o] x[b, k]               M = O, N = K, K = B
//   dB       db[o]    = sum_b dy[b, o]
// A partly frozen weight (rows [r0, r1) trainable) runs dW as linear_dw_rows: the same GEMM
// with M = r1 - r0 over dy's columns r0..r1 (the slice of dY's channels), writing rows
// r0..r1 of dW only; its dB is linear_db launched on that slice (pointers offset by r0,
// one block per row of the slice).
// All three products run on bw_gemm_tile (common.cuh). M is the batch in the forward and
// dX so that the stores of a tile row are contiguous in y and dx. dW reduces over the
// batch; with a large batch and a small weight it is split over blockIdx.z (split-K) into
// a workspace and summed by linear_dw_reduce. Launch geometry:
// bwplan/kernels/cuda/linear.py.

#include "common.cuh"

// dW's product, shared by linear_dw and linear_dw_rows: row m of the GEMM is output
// feature m of `dy` and `out`, both already offset to the first row the kernel writes;
// O is dy's row stride (all output features), so a slice of rows reads its own columns.
struct LinearDwOp {
    const float* dy; const float* x; float* out; int O, K, accumulate;
    static constexpr bool A_K_CONTIG = false;  // dy[b, o]: consecutive o are adjacent
    static constexpr bool B_K_CONTIG = false;  // x[b, k]: consecutive k are adjacent
    __device__ float a(int m, int k) const { return dy[(long long)k * O + m]; }
    __device__ float b(int k, int n) const { return x[(long long)k * K + n]; }
    __device__ void store(int m, int n, float v) const {
        bw_put(out, (long long)m * K + n, v, accumulate);
    }
};

// == kernel linear_fwd ==
struct LinearFwdOp {
    const float* x; const float* wt; const float* bias; float* y; int O, K;
    static constexpr bool A_K_CONTIG = true;   // x rows
    static constexpr bool B_K_CONTIG = true;   // W rows
    __device__ float a(int m, int k) const { return x[(long long)m * K + k]; }
    __device__ float b(int k, int n) const { return wt[(long long)n * K + k]; }
    __device__ void store(int m, int n, float v) const {
        y[(long long)m * O + n] = v + (bias ? bias[n] : 0.0f);
    }
};

// grid (ceil(O / BW_BN), ceil(B / BW_BM)), block 256
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
linear_fwd(const float* x, const float* weight, const float* bias, float* out, int B, int K,
           int O) {
    const LinearFwdOp op{x, weight, bias, out, O, K};
    bw_gemm_tile(op, B, O, 0, K);
}

// == kernel linear_dx ==
struct LinearDxOp {
    const float* dy; const float* wt; float* dx; int O, K, accumulate;
    static constexpr bool A_K_CONTIG = true;   // dy rows, contiguous in o
    static constexpr bool B_K_CONTIG = false;  // W[o, :] is contiguous in n (= k of x)
    __device__ float a(int m, int k) const { return dy[(long long)m * O + k]; }
    __device__ float b(int k, int n) const { return wt[(long long)k * K + n]; }
    __device__ void store(int m, int n, float v) const {
        bw_put(dx, (long long)m * K + n, v, accumulate);
    }
};

// grid (ceil(K / BW_BN), ceil(B / BW_BM)), block 256
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
linear_dx(const float* weight, const float* dout, float* dx, int B, int K, int O,
          int accumulate) {
    const LinearDxOp op{dout, weight, dx, O, K, accumulate};
    bw_gemm_tile(op, B, K, 0, O);
}

// == kernel linear_dw ==
// grid (ceil(K / BW_BN), ceil(O / BW_BM), splits), block 256; with splits > 1 each split
// writes its partial [O, K] slab to workspace[split] and linear_dw_reduce finishes.
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
linear_dw(const float* x, const float* dout, float* dweight, float* workspace, int B, int K,
          int O, int splits, int accumulate) {
    int k0, k1;
    bw_split_range(B, splits, blockIdx.z, &k0, &k1);
    if (splits == 1) {
        const LinearDwOp op{dout, x, dweight, O, K, accumulate};
        bw_gemm_tile(op, O, K, k0, k1);
    } else {
        const LinearDwOp op{dout, x, workspace + (long long)blockIdx.z * O * K, O, K, 0};
        bw_gemm_tile(op, O, K, k0, k1);
    }
}

// == kernel linear_dw_reduce ==
// dW (+)= the sum of the splits' partial slabs. grid-stride over O*K, block 256
extern "C" __global__ void linear_dw_reduce(const float* workspace, float* dweight,
                                            long long count, int splits, int accumulate) {
    bw_splitk_reduce(workspace, dweight, count, splits, accumulate);
}

// == kernel linear_dw_rows ==
// dW rows [row0, row0 + rows) (+)= dy[:, row0:row0 + rows]^T x: the GEMM over a slice of
// dY's channels, for the trainable rows of a partly frozen weight; the other rows are not
// touched. grid (ceil(K / BW_BN), ceil(rows / BW_BM), splits), block 256; with
// splits > 1 each split writes a [rows, K] slab to workspace[split] and linear_dw_reduce
// adds them into those rows.
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
linear_dw_rows(const float* x, const float* dout, float* dweight, float* workspace, int B,
               int K, int O, int row0, int rows, int splits, int accumulate) {
    int k0, k1;
    bw_split_range(B, splits, blockIdx.z, &k0, &k1);
    const float* dy = dout + row0;     // column row0 of dy; its rows stay O apart
    if (splits == 1) {
        const LinearDwOp op{dy, x, dweight + (long long)row0 * K, O, K, accumulate};
        bw_gemm_tile(op, rows, K, k0, k1);
    } else {
        const LinearDwOp op{dy, x, workspace + (long long)blockIdx.z * rows * K, O, K, 0};
        bw_gemm_tile(op, rows, K, k0, k1);
    }
}

// == kernel linear_db ==
// db[o] (+)= sum_b dy[b, o]. grid (O), block 256
extern "C" __global__ void linear_db(const float* dout, float* dbias, int B, int O,
                                     int accumulate) {
    __shared__ double scratch[32];
    const double v = bw_channel_dot(dout, nullptr, B, O, 1, scratch);
    if (threadIdx.x == 0) bw_put(dbias, blockIdx.x, (float)v, accumulate);
}
