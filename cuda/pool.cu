// pool.cu: max and average pooling over NCHW input with Caffe's geometry, and their
// global forms; the semantics of bwplan/ops/pool.py.
//
// Window (ho, wo) starts at (ho*sh - ph, wo*sw - pw) and spans kh x kw cells. Ceil mode
// only changes Ho and Wo (computed in Python); a window that overhangs the image is
// clipped to it. Max: padding never wins, the first maximum in row-major window order
// wins ties, and argmax holds the flat position h * W + w. Average (Caffe AVE): the
// divisor is the window clipped to the padded image [-p, size + p), so border windows
// count padding cells as zeros; with count_pad 0 it is the window clipped to the image.
//
// The dX kernels gather instead of scatter: one thread per input cell visits the
// windows that cover it (at most ceil(kh/sh) x ceil(kw/sw)), so each dx element has one
// writer, no atomics are needed, and `accumulate` is exact.
// Launch geometry: bwplan/kernels/cuda/pool.py.

#include "common.cuh"

struct PoolShape {
    int nc, h, w, ho, wo, kh, kw, sh, sw, ph, pw, count_pad;
};

// The output windows covering input row h: [*lo, *hi] (empty when lo > hi).
__device__ __forceinline__ void pool_cover(int h, int k, int s, int p, int out, int* lo,
                                           int* hi) {
    const int t = h + p;
    *lo = t < k ? 0 : (t - k) / s + 1;
    *hi = min(t / s, out - 1);
}

// == kernel maxpool_fwd ==
// One thread per output element, grid-stride, block 256.
extern "C" __global__ void maxpool_fwd(const float* x, float* out, int* argmax, PoolShape s) {
    const long long total = (long long)s.nc * s.ho * s.wo;
    BW_GRID_STRIDE(t, total) {
        const int wo = t % s.wo, ho = (t / s.wo) % s.ho;
        const long long plane = t / ((long long)s.wo * s.ho);
        const int h0 = max(ho * s.sh - s.ph, 0), h1 = min(ho * s.sh - s.ph + s.kh, s.h);
        const int w0 = max(wo * s.sw - s.pw, 0), w1 = min(wo * s.sw - s.pw + s.kw, s.w);
        float best;
        const int best_at = bw_window_argmax(x + plane * s.h * s.w, s.w, h0, h1, w0, w1,
                                             &best);
        out[t] = best;
        if (argmax) argmax[t] = best_at;
    }
}

// == kernel maxpool_dx ==
// One thread per input element, grid-stride, block 256.
extern "C" __global__ void maxpool_dx(const int* argmax, const float* dout, float* dx,
                                      PoolShape s, int accumulate) {
    const long long total = (long long)s.nc * s.h * s.w;
    BW_GRID_STRIDE(t, total) {
        const int w = t % s.w, h = (t / s.w) % s.h;
        const long long plane = t / ((long long)s.w * s.h);
        int ho0, ho1, wo0, wo1;
        pool_cover(h, s.kh, s.sh, s.ph, s.ho, &ho0, &ho1);
        pool_cover(w, s.kw, s.sw, s.pw, s.wo, &wo0, &wo1);
        const long long base = plane * s.ho * s.wo;
        const int me = h * s.w + w;
        float g = 0.0f;
        for (int ho = ho0; ho <= ho1; ++ho)
            for (int wo = wo0; wo <= wo1; ++wo) {
                const long long o = base + ho * s.wo + wo;
                if (argmax[o] == me) g += dout[o];
            }
        bw_put(dx, t, g, accumulate);
    }
}

// The divisor of window (ho, wo): its extent clipped to the padded image (Caffe AVE), or
// with count_pad 0 to the image itself (ONNX's default count_include_pad=0).
__device__ __forceinline__ float pool_area(const PoolShape& s, int ho, int wo) {
    int h0 = ho * s.sh - s.ph, w0 = wo * s.sw - s.pw;
    int h1 = min(h0 + s.kh, s.h + s.ph), w1 = min(w0 + s.kw, s.w + s.pw);
    if (!s.count_pad) {
        h0 = max(h0, 0), w0 = max(w0, 0);
        h1 = min(h1, s.h), w1 = min(w1, s.w);
    }
    return (float)((h1 - h0) * (w1 - w0));
}

// == kernel avgpool_fwd ==
// One thread per output element, grid-stride, block 256.
extern "C" __global__ void avgpool_fwd(const float* x, float* out, PoolShape s) {
    const long long total = (long long)s.nc * s.ho * s.wo;
    BW_GRID_STRIDE(t, total) {
        const int wo = t % s.wo, ho = (t / s.wo) % s.ho;
        const long long plane = t / ((long long)s.wo * s.ho);
        const int h0 = max(ho * s.sh - s.ph, 0), h1 = min(ho * s.sh - s.ph + s.kh, s.h);
        const int w0 = max(wo * s.sw - s.pw, 0), w1 = min(wo * s.sw - s.pw + s.kw, s.w);
        const float* xp = x + plane * s.h * s.w;
        float acc = 0.0f;
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) acc += xp[h * s.w + w];
        out[t] = acc / pool_area(s, ho, wo);
    }
}

// == kernel avgpool_dx ==
// One thread per input element, grid-stride, block 256.
extern "C" __global__ void avgpool_dx(const float* dout, float* dx, PoolShape s,
                                      int accumulate) {
    const long long total = (long long)s.nc * s.h * s.w;
    BW_GRID_STRIDE(t, total) {
        const int w = t % s.w, h = (t / s.w) % s.h;
        const long long plane = t / ((long long)s.w * s.h);
        int ho0, ho1, wo0, wo1;
        pool_cover(h, s.kh, s.sh, s.ph, s.ho, &ho0, &ho1);
        pool_cover(w, s.kw, s.sw, s.pw, s.wo, &wo0, &wo1);
        const long long base = plane * s.ho * s.wo;
        float g = 0.0f;
        for (int ho = ho0; ho <= ho1; ++ho)
            for (int wo = wo0; wo <= wo1; ++wo)
                g += dout[base + ho * s.wo + wo] / pool_area(s, ho, wo);
        bw_put(dx, t, g, accumulate);
    }
}

// == kernel global_maxpool_fwd ==
// One warp per plane (8 planes per 256-thread block): planes are a few hundred cells, so
// a warp's strided reads stay coalesced and no block-wide barrier is needed. Ties go to
// the smallest position, like the reference's argmax.
extern "C" __global__ void global_maxpool_fwd(const float* x, float* out, int* argmax,
                                              long long nc, int hw) {
    const long long plane = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (plane >= nc) return;
    const float* xp = x + plane * hw;
    float best = -INFINITY;
    int at = hw;
    for (int i = lane; i < hw; i += 32) {
        const float v = xp[i];
        if (v > best || at == hw) {
            best = v;
            at = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oa = __shfl_xor_sync(0xffffffffu, at, o);
        if (oa < hw && (at == hw || ob > best || (ob == best && oa < at))) {
            best = ob;
            at = oa;
        }
    }
    if (lane == 0) {
        out[plane] = best;
        if (argmax) argmax[plane] = at;
    }
}

// == kernel global_maxpool_dx ==
// One thread per input element, grid-stride, block 256.
extern "C" __global__ void global_maxpool_dx(const int* argmax, const float* dout, float* dx,
                                             long long nc, int hw, int accumulate) {
    BW_GRID_STRIDE(t, nc * hw) {
        const long long plane = t / hw;
        bw_put(dx, t, argmax[plane] == (int)(t % hw) ? dout[plane] : 0.0f, accumulate);
    }
}

// == kernel global_avgpool_fwd ==
// One warp per plane, as global_maxpool_fwd.
extern "C" __global__ void global_avgpool_fwd(const float* x, float* out, long long nc,
                                              int hw) {
    const long long plane = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (plane >= nc) return;
    const float* xp = x + plane * hw;
    float acc = 0.0f;
    for (int i = lane; i < hw; i += 32) acc += xp[i];
    acc = bw_warp_sum(acc);
    if (lane == 0) out[plane] = acc / hw;
}

// == kernel global_avgpool_dx ==
// One thread per input element, grid-stride, block 256.
extern "C" __global__ void global_avgpool_dx(const float* dout, float* dx, long long nc,
                                             int hw, int accumulate) {
    BW_GRID_STRIDE(t, nc * hw) bw_put(dx, t, dout[t / hw] / hw, accumulate);
}
