// common.cuh: what every bwplan kernel file shares.
//
// Conventions (the Python side, bwplan/kernels/cuda, builds the arguments):
// - tensors are float32, C-contiguous; labels and flags may be int32, int64, float32 or
//   float64 and are read through bw_load_index with a BW_* dtype code;
// - flat element counts are 64-bit; GEMM dimensions are 32-bit, which the launch code
//   checks (INT32_INDEX_LIMIT);
// - every dX and dW kernel takes `accumulate`: 0 overwrites its output, 1 adds to what an
//   earlier step wrote there (a tensor read by two layers, a weight shared by two uses), so
//   no temporary buffer is needed for a gradient sum;
// - an optional buffer (an aux output the backward will not read) is a null pointer.
//
// Sections: dtype access, reductions, the counter-based random numbers of dropout, the
// tiled GEMM core used by conv2d and linear, and per-channel reductions.
#pragma once

#define BW_THREADS 256  // default block: 8 warps, enough to hide latency at any occupancy

// ---- dtype access -------------------------------------------------------------------
enum { BW_F32 = 0, BW_F64 = 1, BW_I32 = 2, BW_I64 = 3, BW_U8 = 4 };

// Element i of an integer-valued tensor (labels, similarity flags) of any supported dtype.
// A floating flag is truncated towards zero, as Caffe casts it to int.
__device__ __forceinline__ long long bw_load_index(const void* p, long long i, int dtype) {
    switch (dtype) {
    case BW_F32: return (long long)((const float*)p)[i];
    case BW_F64: return (long long)((const double*)p)[i];
    case BW_I32: return ((const int*)p)[i];
    case BW_I64: return ((const long long*)p)[i];
    default:     return ((const unsigned char*)p)[i];
    }
}

// The one write rule of every gradient kernel (see `accumulate` above).
__device__ __forceinline__ void bw_put(float* out, long long i, float v, int accumulate) {
    out[i] = accumulate ? out[i] + v : v;
}

#define BW_GRID_STRIDE(i, n)                                                          \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);     \
         i += (long long)gridDim.x * blockDim.x)

// ---- reductions ---------------------------------------------------------------------
__device__ __forceinline__ float bw_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double bw_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float bw_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block, returned to every thread. Per-channel statistics add up to
// millions of float32 values, so the partial sums are doubles: the result then has float32
// accuracy whatever the count (the CPU kernels do the same). `scratch` holds 32 doubles.
__device__ double bw_block_sum_d(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = bw_warp_sum_d(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = threadIdx.x < warps ? scratch[threadIdx.x] : 0.0;
    if (warp == 0) v = bw_warp_sum_d(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

// ---- random numbers (dropout) -------------------------------------------------------
// A counter-based generator: the number for element i depends only on (seed, stream, i),
// so any thread can draw any element and a replayed step draws the same mask. This is
// splitmix64's finaliser over the combined counter, which passes BigCrush as a hash of
// consecutive integers; 24 bits make an exactly representable float in [0, 1).
__device__ __forceinline__ float bw_uniform(unsigned long long seed, unsigned long long stream,
                                            unsigned long long i) {
    unsigned long long z = seed * 0x9E3779B97F4A7C15ull + stream * 0xD1B54A32D192ED03ull + i;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// ---- tiled GEMM core ----------------------------------------------------------------
// C[m, n] = sum_k A[m, k] * B[k, n] over k in [k_begin, k_end), for one BM x BN tile of C
// per block. The operands are never stored as matrices: `Op` gathers A and B element by
// element from the tensors (implicit GEMM: the im2col matrix of a convolution exists only
// one tile at a time in shared memory) and stores each result itself.
//
// Op provides:  float a(int m, int k), float b(int k, int n), void store(int m, int n, v)
//               static constexpr bool A_K_CONTIG, B_K_CONTIG: whether consecutive k are
//               adjacent in memory for that operand, which decides how the threads of a
//               warp split a tile load so that neighbouring threads read neighbouring
//               addresses (coalesced loads).
//
// Tile 64 x 64 x 16 with 256 threads, each computing a 4 x 4 block of C: per k step a
// thread reads 4 + 4 values from shared memory for 16 FMAs, which keeps the FMA units
// rather than shared-memory bandwidth the limit; 16 accumulators plus operands stay near
// 64 registers, so 4 blocks (32 warps) fit on an SM. The tiles take 2 x 16 x 65 floats
// = 8.3 KB of static shared memory, far under the 48 KB a block gets without opting in.
// A 128 x 128 x 8 tile with 8 x 8 per thread (half the gathers per FMA, 128 registers)
// measured 10-15% slower on the benchmark's networks on an H100: their convolutions have
// 16 to 192 output channels, so a 128-row tile idles many of its rows and a layer gets
// too few blocks to fill 132 SMs.
// A thread owns rows ty + 16 i and columns tx + 16 j (not a contiguous 4 x 4 patch): the
// 16 lanes with equal ty then read 16 consecutive Bs words (no bank conflict), all lanes
// read at most two As words (broadcast), and the stores of C are coalesced along n.
// Rows are padded by one word so that the transposed stores of a K-contiguous operand
// (lane l writes row l % 16) fall in distinct banks.
#define BW_BM 64
#define BW_BN 64
#define BW_BK 16
#define BW_GEMM_THREADS 256

template <class Op>
__device__ __forceinline__ void bw_gemm_tile(const Op& op, int M, int N, int k_begin,
                                             int k_end) {
    __shared__ float As[BW_BK][BW_BM + 1];
    __shared__ float Bs[BW_BK][BW_BN + 1];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int m0 = blockIdx.y * BW_BM, n0 = blockIdx.x * BW_BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += BW_BK) {
#pragma unroll
        for (int r = 0; r < (BW_BM * BW_BK) / BW_GEMM_THREADS; ++r) {
            const int l = threadIdx.x + BW_GEMM_THREADS * r;
            const int kk = Op::A_K_CONTIG ? l % BW_BK : l / BW_BM;
            const int mm = Op::A_K_CONTIG ? l / BW_BK : l % BW_BM;
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < k_end) ? op.a(m, k) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < (BW_BN * BW_BK) / BW_GEMM_THREADS; ++r) {
            const int l = threadIdx.x + BW_GEMM_THREADS * r;
            const int kk = Op::B_K_CONTIG ? l % BW_BK : l / BW_BN;
            const int nn = Op::B_K_CONTIG ? l / BW_BK : l % BW_BN;
            const int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < k_end) ? op.b(k, n) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BW_BK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (n < N) op.store(m, n, acc[i][j]);
        }
    }
}

// The k range of split `s` of `splits` over [0, K), in whole BK steps.
__device__ __forceinline__ void bw_split_range(int K, int splits, int s, int* begin,
                                               int* end) {
    const int steps = (K + BW_BK - 1) / BW_BK;
    const int per = (steps + splits - 1) / splits;
    *begin = min(K, s * per * BW_BK);
    *end = min(K, (s + 1) * per * BW_BK);
}

// out[i] (+)= sum over s of partial[s * count + i]: the second pass of a split-K GEMM,
// in a fixed order, so a split reduction is deterministic.
__device__ __forceinline__ void bw_splitk_reduce(const float* partial, float* out,
                                                 long long count, int splits,
                                                 int accumulate) {
    BW_GRID_STRIDE(i, count) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s) v += partial[s * count + i];
        bw_put(out, i, v, accumulate);
    }
}

// ---- per-channel reductions ---------------------------------------------------------
// Tensors seen as [N, C, S] (S: the elements after the channel). One block per channel;
// consecutive threads read consecutive s, so the loads are coalesced for S >= 32 and
// strided (one channel of each row) only for the [N, C] case, where S = 1.
__device__ __forceinline__ long long bw_ncs(int n, int c, long long s, int C, long long S) {
    return ((long long)n * C + c) * S + s;
}

// sum of a[:, c, :] (times b[:, c, :] when b is given) for c = blockIdx.x
__device__ double bw_channel_dot(const float* a, const float* b, int N, int C, long long S,
                                 double* scratch) {
    const int c = blockIdx.x;
    const long long m = (long long)N * S;
    double acc = 0.0;
    for (long long t = threadIdx.x; t < m; t += blockDim.x) {
        const long long i = bw_ncs((int)(t / S), c, t % S, C, S);
        acc += b ? (double)a[i] * b[i] : (double)a[i];
    }
    return bw_block_sum_d(acc, scratch);
}

// ---- max-pooling windows ----------------------------------------------------------------
// The flat position h * W + w of the maximum of plane xp over rows [h0, h1) and columns
// [w0, w1): the first maximum in row-major order wins ties. Shared by maxpool_fwd (pool.cu)
// and maxpool_mask_fwd (unpool.cu), whose masks must name the same cells.
__device__ __forceinline__ int bw_window_argmax(const float* xp, int W, int h0, int h1,
                                                int w0, int w1, float* best_value) {
    int best_at = h0 * W + w0;
    float best = xp[best_at];
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w) {
            const float v = xp[h * W + w];
            if (v > best) {
                best = v;
                best_at = h * W + w;
            }
        }
    *best_value = best;
    return best_at;
}
