// shape.cu: the data-movement ops of bwplan/ops/shape.py: flatten, reshape, concat,
// slice and transpose. They do no arithmetic; each output is its own buffer (the memory
// plan counts it), so flatten and reshape copy.
//
// concat and slice along an axis see every tensor as [outer, inner] with outer the
// product of the dimensions before the axis and inner the rest: an input of concat is
// then a column range [offset, offset + inner) of the output's rows, and a slice is a
// column range of its input's rows. Concat's forward is one slab_put per input. All
// kernels are grid-stride loops with 256 threads, one element per thread, consecutive
// threads on consecutive columns. Launch geometry: bwplan/kernels/cuda/shape.py.

#include "common.cuh"

// == kernel tensor_copy ==
// dst (+)= src: flatten and reshape, forward (accumulate 0) and dX.
extern "C" __global__ void tensor_copy(const float* src, float* dst, long long n,
                                       int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(dst, i, src[i], accumulate);
}

// == kernel slab_take ==
// dst[o, j] (+)= src[o, offset + j] for j < dst_inner: slice's forward, concat's dX.
extern "C" __global__ void slab_take(const float* src, float* dst, long long outer,
                                     long long dst_inner, long long src_inner,
                                     long long offset, int accumulate) {
    BW_GRID_STRIDE(i, outer * dst_inner) {
        const long long o = i / dst_inner, j = i % dst_inner;
        bw_put(dst, i, src[o * src_inner + offset + j], accumulate);
    }
}

// == kernel slab_put ==
// dst[o, offset + j] = src[o, j] for j < src_inner: one input of concat's forward.
extern "C" __global__ void slab_put(const float* src, float* dst, long long outer,
                                    long long src_inner, long long dst_inner,
                                    long long offset) {
    BW_GRID_STRIDE(i, outer * src_inner) {
        const long long o = i / src_inner, j = i % src_inner;
        dst[o * dst_inner + offset + j] = src[i];
    }
}

// == kernel slice_dx ==
// dx[o, j] (+)= dy[o, j - offset] inside the slice, 0 outside: every dx element written.
extern "C" __global__ void slice_dx(const float* dout, float* dx, long long outer,
                                    long long dx_inner, long long dout_inner,
                                    long long offset, int accumulate) {
    BW_GRID_STRIDE(i, outer * dx_inner) {
        const long long o = i / dx_inner, j = i % dx_inner - offset;
        bw_put(dx, i, (j >= 0 && j < dout_inner) ? dout[o * dout_inner + j] : 0.0f,
               accumulate);
    }
}

// == kernel permute ==
// dst[i] (+)= src[offset(i)]: transpose's forward, and its dX with the inverse permutation.
// The shape record is fixed-size (at most 6 dimensions, ops/shape.py MAX_TRANSPOSE_RANK)
// so it travels by value with the launch: dims are the output's, strides the source's
// element strides of the dimension each output dimension reads, a lower rank padded in
// front with dims 1. The loop over the 6 entries is unrolled, so the record stays in
// registers (indexing it at run time would put it on the stack); all fields are 64-bit so
// the record has no padding between the Python-packed arguments.
struct PermShape {
    long long dims[6], strides[6];
};

extern "C" __global__ void permute(const float* src, float* dst, long long n, PermShape s,
                                   int accumulate) {
    BW_GRID_STRIDE(i, n) {
        long long rest = i, offset = 0;
#pragma unroll
        for (int k = 5; k >= 0; --k) {
            offset += (rest % s.dims[k]) * s.strides[k];
            rest /= s.dims[k];
        }
        bw_put(dst, i, src[offset], accumulate);
    }
}
