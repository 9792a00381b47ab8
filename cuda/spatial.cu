// spatial.cu: crop and permute of bwplan/ops/spatial.py. They do no arithmetic.
//
// Both see tensors of up to four dimensions as [d0, d1, d2, d3] (leading dimensions of 1
// added). A forward is one gather: every output element reads the input at
// offset + sum_k index_k * stride_k, where index is the output element's position and
// stride_k the input's stride along output dimension k (crop: the input's own strides,
// offset the crop's corner; permute: the strides of the permuted dimensions). Permute's dX
// is the same gather with the inverse order. Crop's dX walks the input's elements and
// writes dY inside the window, 0 outside, so every element is written. Grid-stride loops,
// 256 threads, one element per thread, consecutive threads on consecutive elements of the
// buffer written. Launch geometry: bwplan/kernels/cuda/spatial.py.

#include "common.cuh"

// == kernel gather4 ==
// dst[i] (+)= src[offset + sum_k index_k(i) * s_k] over the [d0, d1, d2, d3] of dst.
extern "C" __global__ void gather4(const float* src, float* dst, long long d1, long long d2,
                                   long long d3, long long s0, long long s1, long long s2,
                                   long long s3, long long offset, long long n,
                                   int accumulate) {
    BW_GRID_STRIDE(i, n) {
        long long r = i;
        const long long i3 = r % d3; r /= d3;
        const long long i2 = r % d2; r /= d2;
        const long long i1 = r % d1;
        const long long i0 = r / d1;
        bw_put(dst, i, src[offset + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3], accumulate);
    }
}

// == kernel crop_dx ==
// dx[i] (+)= dout at i's place inside the window [o_k, o_k + e_k) on every axis, else 0;
// dx is [x1..x3 after x0], dout is [e0, e1, e2, e3].
extern "C" __global__ void crop_dx(const float* dout, float* dx, long long x1, long long x2,
                                   long long x3, long long e0, long long e1, long long e2,
                                   long long e3, long long o0, long long o1, long long o2,
                                   long long o3, long long n, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        long long r = i;
        const long long j3 = r % x3 - o3; r /= x3;
        const long long j2 = r % x2 - o2; r /= x2;
        const long long j1 = r % x1 - o1;
        const long long j0 = r / x1 - o0;
        const bool inside = j0 >= 0 && j0 < e0 && j1 >= 0 && j1 < e1 && j2 >= 0 &&
                            j2 < e2 && j3 >= 0 && j3 < e3;
        bw_put(dx, i, inside ? dout[((j0 * e1 + j1) * e2 + j2) * e3 + j3] : 0.0f,
               accumulate);
    }
}
