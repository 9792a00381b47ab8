// conv.cu: 2-D convolution over NCHW input, weight [O, C/groups, kh, kw], with stride,
// padding, dilation and groups; the semantics of bwplan/ops/conv.py.
//
// Every component is an implicit GEMM on bw_gemm_tile (common.cuh), per group g:
//   forward  out[n, o, p]     = sum_(c,i,j) W[o, c, i, j] * x[n, c, h(p, i), w(p, j)] + b[o]
//            M = O/groups, N = batch * Ho * Wo, K = C/groups * kh * kw
//   dX       dx[n, c, h, w]   = sum_(o,i,j) W[o, c, i, j] * dy[n, o, ho, wo]
//            over the (i, j) for which h = ho*sh - ph + i*dh (and likewise w) hits an
//            output position: the convolution with the transposed filter, gathered, so
//            every dx element has exactly one writer (no atomics, `accumulate` is exact);
//            M = C/groups, N = batch * H * W, K = O/groups * kh * kw
//   dW       dW[o, c, i, j]   = sum_(n, p) dy[n, o, p] * x[n, c, h(p, i), w(p, j)]
//            M = O/groups, N = C/groups * kh * kw, K = batch * Ho * Wo: the reduction is
//            long and the output small, so it is split over blockIdx.z (split-K) into a
//            workspace and summed by conv2d_dw_reduce.
//   dB       db[o]            = sum_(n, p) dy[n, o, p], one block per channel.
// A partly frozen weight (output channels [r0, r1) trainable; groups = 1, since rows of a
// grouped convolution cannot be frozen) runs dW as conv2d_dw_rows: the same GEMM with
// M = r1 - r0 over dy's channels r0..r1 (the slice of dY's channels), writing only those
// rows of dW; its dB is conv2d_db launched on that slice (pointers offset by r0 channels,
// one block per channel of the slice).
// Launch geometry: bwplan/kernels/cuda/conv.py.

#include "common.cuh"

// The geometry, passed as 16 consecutive int arguments from Python.
struct ConvShape {
    int n, c, h, w;        // input
    int o, ho, wo;         // output channels and size
    int kh, kw, sh, sw, ph, pw, dh, dw;
    int groups;
};

// Input element (img, channel ch, row ho*sh - ph + i*dh, col wo*sw - pw + j*dw), or 0 in
// the padding: one element of the im2col matrix, never stored.
__device__ __forceinline__ float conv_gather_x(const float* x, const ConvShape& s, int img,
                                               int ch, int ho, int wo, int i, int j) {
    const int h = ho * s.sh - s.ph + i * s.dh;
    const int w = wo * s.sw - s.pw + j * s.dw;
    if (h < 0 || h >= s.h || w < 0 || w >= s.w) return 0.0f;
    return x[(((long long)img * s.c + ch) * s.h + h) * s.w + w];
}

// dW's product, shared by conv2d_dw and conv2d_dw_rows (the store is relative to `out`:
// row m of the GEMM is output channel g * O/groups + m).
struct ConvDwOp {
    const float* x; const float* dy; float* out; ConvShape s; int g; int accumulate;
    static constexpr bool A_K_CONTIG = true;   // k = (img, pixel): a dy plane is contiguous
    static constexpr bool B_K_CONTIG = true;   // consecutive k are neighbouring pixels of x
    __device__ int cg() const { return s.c / s.groups; }
    __device__ int og() const { return s.o / s.groups; }
    __device__ float a(int m, int k) const {
        const int hw = s.ho * s.wo;
        return dy[((long long)(k / hw) * s.o + g * og() + m) * hw + k % hw];
    }
    __device__ float b(int k, int n) const {
        const int khw = s.kh * s.kw, hw = s.ho * s.wo;
        const int ch = n / khw, r = n % khw, img = k / hw, p = k % hw;
        return conv_gather_x(x, s, img, g * cg() + ch, p / s.wo, p % s.wo, r / s.kw,
                             r % s.kw);
    }
    __device__ void store(int m, int n, float v) const {
        const long long i = (long long)(g * og() + m) * (cg() * s.kh * s.kw) + n;
        bw_put(out, i, v, accumulate);
    }
};

// == kernel conv2d_fwd ==
struct ConvFwdOp {
    const float* x; const float* wt; const float* bias; float* out; ConvShape s; int g;
    static constexpr bool A_K_CONTIG = true;   // a row of W is contiguous in k
    static constexpr bool B_K_CONTIG = false;  // consecutive n are neighbouring pixels
    __device__ int cg() const { return s.c / s.groups; }
    __device__ int og() const { return s.o / s.groups; }
    __device__ float a(int m, int k) const {
        return wt[(long long)(g * og() + m) * (cg() * s.kh * s.kw) + k];
    }
    __device__ float b(int k, int n) const {
        const int khw = s.kh * s.kw, hw = s.ho * s.wo;
        const int ch = k / khw, r = k % khw, img = n / hw, p = n % hw;
        return conv_gather_x(x, s, img, g * cg() + ch, p / s.wo, p % s.wo, r / s.kw,
                             r % s.kw);
    }
    __device__ void store(int m, int n, float v) const {
        const int hw = s.ho * s.wo, o = g * og() + m;
        out[((long long)(n / hw) * s.o + o) * hw + n % hw] = v + (bias ? bias[o] : 0.0f);
    }
};

// grid (ceil(batch*Ho*Wo / BW_BN), ceil((O/groups) / BW_BM), groups), block 256
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
conv2d_fwd(const float* x, const float* weight, const float* bias, float* out, ConvShape s) {
    const ConvFwdOp op{x, weight, bias, out, s, (int)blockIdx.z};
    bw_gemm_tile(op, s.o / s.groups, s.n * s.ho * s.wo, 0, s.c / s.groups * s.kh * s.kw);
}

// == kernel conv2d_dx ==
struct ConvDxOp {
    const float* wt; const float* dy; float* dx; ConvShape s; int g; int accumulate;
    static constexpr bool A_K_CONTIG = true;   // k = (o, i, j): (i, j) contiguous in W
    static constexpr bool B_K_CONTIG = false;  // consecutive n are neighbouring pixels
    __device__ int cg() const { return s.c / s.groups; }
    __device__ int og() const { return s.o / s.groups; }
    __device__ float a(int m, int k) const {
        const int khw = s.kh * s.kw;
        const int o = g * og() + k / khw;
        return wt[((long long)o * cg() + m) * khw + k % khw];
    }
    __device__ float b(int k, int n) const {
        const int khw = s.kh * s.kw, hw = s.h * s.w;
        const int o = g * og() + k / khw, r = k % khw, i = r / s.kw, j = r % s.kw;
        const int img = n / hw, p = n % hw;
        const int th = p / s.w + s.ph - i * s.dh, tw = p % s.w + s.pw - j * s.dw;
        if (th < 0 || tw < 0 || th % s.sh || tw % s.sw) return 0.0f;
        const int ho = th / s.sh, wo = tw / s.sw;
        if (ho >= s.ho || wo >= s.wo) return 0.0f;
        return dy[(((long long)img * s.o + o) * s.ho + ho) * s.wo + wo];
    }
    __device__ void store(int m, int n, float v) const {
        const int hw = s.h * s.w;
        bw_put(dx, ((long long)(n / hw) * s.c + g * cg() + m) * hw + n % hw, v, accumulate);
    }
};

// grid (ceil(batch*H*W / BW_BN), ceil((C/groups) / BW_BM), groups), block 256
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
conv2d_dx(const float* weight, const float* dout, float* dx, ConvShape s, int accumulate) {
    const ConvDxOp op{weight, dout, dx, s, (int)blockIdx.z, accumulate};
    bw_gemm_tile(op, s.c / s.groups, s.n * s.h * s.w, 0, s.o / s.groups * s.kh * s.kw);
}

// == kernel conv2d_dw ==
// grid (ceil(Cg*kh*kw / BW_BN), ceil(Og / BW_BM), groups * splits), block 256. With
// splits > 1 each split writes its partial sum to workspace[split] (a whole
// [O, Cg*kh*kw] slab) and conv2d_dw_reduce finishes; with one split the tile stores
// straight into dW.
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
conv2d_dw(const float* x, const float* dout, float* dweight, float* workspace, ConvShape s,
          int splits, int accumulate) {
    const int g = blockIdx.z % s.groups, split = blockIdx.z / s.groups;
    const long long count = (long long)s.o * (s.c / s.groups) * s.kh * s.kw;
    const int K = s.n * s.ho * s.wo;
    int k0, k1;
    bw_split_range(K, splits, split, &k0, &k1);
    if (splits == 1) {
        const ConvDwOp op{x, dout, dweight, s, g, accumulate};
        bw_gemm_tile(op, s.o / s.groups, s.c / s.groups * s.kh * s.kw, k0, k1);
    } else {
        const ConvDwOp op{x, dout, workspace + split * count, s, g, 0};
        bw_gemm_tile(op, s.o / s.groups, s.c / s.groups * s.kh * s.kw, k0, k1);
    }
}

// == kernel conv2d_dw_reduce ==
// dW (+)= the sum of the splits' partial slabs. grid-stride over O*Cg*kh*kw, block 256
extern "C" __global__ void conv2d_dw_reduce(const float* workspace, float* dweight,
                                            long long count, int splits, int accumulate) {
    bw_splitk_reduce(workspace, dweight, count, splits, accumulate);
}

// == kernel conv2d_dw_rows ==
// Rows [row0, row0 + rows) of ConvDwOp's GEMM: output channel row0 + m of dy, stored
// relative to `out` (which points at row row0 of dW, or at a split's [rows, C*kh*kw] slab).
struct ConvDwRowsOp {
    ConvDwOp whole;   // groups == 1, g == 0
    int row0;
    static constexpr bool A_K_CONTIG = ConvDwOp::A_K_CONTIG;
    static constexpr bool B_K_CONTIG = ConvDwOp::B_K_CONTIG;
    __device__ float a(int m, int k) const { return whole.a(row0 + m, k); }
    __device__ float b(int k, int n) const { return whole.b(k, n); }
    __device__ void store(int m, int n, float v) const { whole.store(m, n, v); }
};

// dW rows [row0, row0 + rows) (+)= the GEMM over dy's channels row0..row0 + rows, for the
// trainable rows of a partly frozen weight; the other rows are not touched.
// grid (ceil(C*kh*kw / BW_BN), ceil(rows / BW_BM), splits), block 256; with splits > 1
// each split writes its slab to workspace[split] and conv2d_dw_reduce adds them up.
extern "C" __global__ void __launch_bounds__(BW_GEMM_THREADS)
conv2d_dw_rows(const float* x, const float* dout, float* dweight, float* workspace,
               ConvShape s, int row0, int rows, int splits, int accumulate) {
    const int split = blockIdx.z, cols = s.c * s.kh * s.kw;
    const long long count = (long long)rows * cols;
    int k0, k1;
    bw_split_range(s.n * s.ho * s.wo, splits, split, &k0, &k1);
    if (splits == 1) {
        const ConvDwRowsOp op{{x, dout, dweight + (long long)row0 * cols, s, 0, accumulate},
                              row0};
        bw_gemm_tile(op, rows, cols, k0, k1);
    } else {
        const ConvDwRowsOp op{{x, dout, workspace + split * count, s, 0, 0}, row0};
        bw_gemm_tile(op, rows, cols, k0, k1);
    }
}

// == kernel conv2d_db ==
// db[o] (+)= sum of dy[:, o, :, :]. grid (O), block 256
extern "C" __global__ void conv2d_db(const float* dout, float* dbias, int n, int o,
                                     long long hw, int accumulate) {
    __shared__ double scratch[32];
    const double v = bw_channel_dot(dout, nullptr, n, o, hw, scratch);
    if (threadIdx.x == 0) bw_put(dbias, blockIdx.x, (float)v, accumulate);
}
