// unpool.cu: the max-pooling mask and max unpooling (SegNet's Upsample); the semantics of
// bwplan/ops/unpool.py.
//
// maxpool_mask_fwd is pool.cu's maxpool_fwd (both call common.cuh's bw_window_argmax)
// writing the winner's flat position h * W + w (as a float) instead of its value.
// max_unpool_fwd zeroes the output, then one thread per input element writes it at its
// mask position: two values sent to one position (only with overlapping windows) race, and
// one of them lands, as in Caffe's GPU kernel. Its dX is a
// gather, one thread per input element, so `accumulate` is exact. A position outside the
// output plane is skipped. Launch geometry: bwplan/kernels/cuda/unpool.py.

#include "common.cuh"

struct MaskShape {
    int nc, h, w, ho, wo, kh, kw, sh, sw, ph, pw, count_pad;
};

// == kernel maxpool_mask_fwd ==
// One thread per output element, grid-stride, block 256.
extern "C" __global__ void maxpool_mask_fwd(const float* x, float* out, MaskShape s) {
    const long long total = (long long)s.nc * s.ho * s.wo;
    BW_GRID_STRIDE(t, total) {
        const int wo = t % s.wo, ho = (t / s.wo) % s.ho;
        const long long plane = t / ((long long)s.wo * s.ho);
        const int h0 = max(ho * s.sh - s.ph, 0), h1 = min(ho * s.sh - s.ph + s.kh, s.h);
        const int w0 = max(wo * s.sw - s.pw, 0), w1 = min(wo * s.sw - s.pw + s.kw, s.w);
        float best;
        const int best_at = bw_window_argmax(x + plane * s.h * s.w, s.w, h0, h1, w0, w1,
                                             &best);
        out[t] = (float)best_at;
    }
}

// == kernel max_unpool_zero ==
// One thread per output element, grid-stride, block 256.
extern "C" __global__ void max_unpool_zero(float* out, long long n) {
    BW_GRID_STRIDE(t, n) { out[t] = 0.0f; }
}

// == kernel max_unpool_fwd ==
// One thread per input element, grid-stride, block 256; after max_unpool_zero.
extern "C" __global__ void max_unpool_fwd(const float* x, const float* mask, float* out,
                                          long long n, int in_plane, int out_plane) {
    BW_GRID_STRIDE(t, n) {
        const int at = (int)mask[t];
        if (at >= 0 && at < out_plane) out[(t / in_plane) * out_plane + at] = x[t];
    }
}

// == kernel max_unpool_dx ==
// One thread per input element, grid-stride, block 256.
extern "C" __global__ void max_unpool_dx(const float* mask, const float* dout, float* dx,
                                         long long n, int in_plane, int out_plane,
                                         int accumulate) {
    BW_GRID_STRIDE(t, n) {
        const int at = (int)mask[t];
        const float g = (at >= 0 && at < out_plane)
                            ? dout[(t / in_plane) * out_plane + at] : 0.0f;
        dx[t] = accumulate ? dx[t] + g : g;
    }
}
