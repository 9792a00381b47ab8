// spatial.cu: the ops of bwplan/ops/spatial.py. Crop does no arithmetic.
//
// Crop sees tensors of up to four dimensions as [d0, d1, d2, d3] (leading dimensions of 1
// added). Its forward is one gather: every output element reads the input at
// offset + sum_k index_k * stride_k, where index is the output element's position and
// stride_k the input's stride along output dimension k (the input's own strides, offset
// the crop's corner). Crop's dX walks the input's elements and
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

// deconv2d: direct loops, one thread per element written (dW and dB: one block per
// element, reducing over the batch and the positions). Shapes arrive as DeconvShape:
// n, c, h, w (the input), o, ho, wo (the output), kh, kw, sh, sw, ph, pw, dh, dw, groups
// (spelled out in each signature: the launches bind arguments by these names);
// the weight is [c, o / groups, kh, kw]. Input pixel (y, x) with tap (i, j) lands on
// output pixel (y * sh - ph + i * dh, x * sw - pw + j * dw), as in Caffe's col2im.

// == kernel deconv2d_fwd ==
// out[b, oc, oy, ox] = bias[oc] + sum over the input pixels and taps that land there.
extern "C" __global__ void deconv2d_fwd(const float* x, const float* weight,
                                        const float* bias, float* out,
                                        int n, int c, int h, int w, int o,
                                        int ho, int wo, int kh, int kw, int sh, int sw,
                                        int ph, int pw, int dh, int dw, int groups) {
    const int og = o / groups, cg = c / groups;
    BW_GRID_STRIDE(t, (long long)n * o * ho * wo) {
        const int ox = t % wo, oy = (t / wo) % ho, oc = (t / ((long long)wo * ho)) % o;
        const int b = t / ((long long)wo * ho * o), g = oc / og;
        float acc = bias ? bias[oc] : 0.0f;
        for (int ci = g * cg; ci < (g + 1) * cg; ++ci)
            for (int i = 0; i < kh; ++i) {
                const int ty = oy + ph - i * dh;
                if (ty < 0 || ty % sh || ty / sh >= h) continue;
                for (int j = 0; j < kw; ++j) {
                    const int tx = ox + pw - j * dw;
                    if (tx < 0 || tx % sw || tx / sw >= w) continue;
                    acc += x[(((long long)b * c + ci) * h + ty / sh) * w + tx / sw] *
                           weight[(((long long)ci * og + oc - g * og) * kh + i) * kw + j];
                }
            }
        out[t] = acc;
    }
}

// == kernel deconv2d_dx ==
// dx[b, ci, y, x] (+)= sum over the taps of weight * dout where the pixel lands.
extern "C" __global__ void deconv2d_dx(const float* weight, const float* dout, float* dx,
                                       int n, int c, int h, int w, int o,
                                        int ho, int wo, int kh, int kw, int sh, int sw,
                                        int ph, int pw, int dh, int dw, int groups,
                                        int accumulate) {
    const int og = o / groups, cg = c / groups;
    BW_GRID_STRIDE(t, (long long)n * c * h * w) {
        const int xx = t % w, y = (t / w) % h, ci = (t / ((long long)w * h)) % c;
        const int b = t / ((long long)w * h * c), g = ci / cg;
        float acc = 0.0f;
        for (int k = 0; k < og; ++k)
            for (int i = 0; i < kh; ++i) {
                const int oy = y * sh - ph + i * dh;
                if (oy < 0 || oy >= ho) continue;
                for (int j = 0; j < kw; ++j) {
                    const int ox = xx * sw - pw + j * dw;
                    if (ox < 0 || ox >= wo) continue;
                    acc += weight[(((long long)ci * og + k) * kh + i) * kw + j] *
                           dout[(((long long)b * o + g * og + k) * ho + oy) * wo + ox];
                }
            }
        bw_put(dx, t, acc, accumulate);
    }
}

// == kernel deconv2d_dw ==
// dweight[ci, k, i, j] (+)= sum over b, y, x of x[b, ci, y, x] * dout at its landing
// pixel. One block of 256 per weight element, summing in double.
extern "C" __global__ void deconv2d_dw(const float* x, const float* dout, float* dweight,
                                       int n, int c, int h, int w, int o,
                                        int ho, int wo, int kh, int kw, int sh, int sw,
                                        int ph, int pw, int dh, int dw, int groups,
                                        int accumulate) {
    __shared__ double scratch[32];
    const int og = o / groups, cg = c / groups;
    const long long e = blockIdx.x;
    const int j = e % kw, i = (e / kw) % kh, k = (e / ((long long)kw * kh)) % og;
    const int ci = e / ((long long)kw * kh * og), oc = ci / cg * og + k;
    double acc = 0.0;
    for (long long t = threadIdx.x; t < (long long)n * h * w; t += blockDim.x) {
        const int xx = t % w, y = (t / w) % h, b = t / ((long long)w * h);
        const int oy = y * sh - ph + i * dh, ox = xx * sw - pw + j * dw;
        if (oy < 0 || oy >= ho || ox < 0 || ox >= wo) continue;
        acc += (double)x[(((long long)b * c + ci) * h + y) * w + xx] *
               dout[(((long long)b * o + oc) * ho + oy) * wo + ox];
    }
    const double v = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) bw_put(dweight, e, (float)v, accumulate);
}

// == kernel deconv2d_db ==
// dbias[oc] (+)= sum of dout[:, oc, :, :]. One block per channel.
extern "C" __global__ void deconv2d_db(const float* dout, float* dbias, int n, int o,
                                       long long hw, int accumulate) {
    __shared__ double scratch[32];
    const double v = bw_channel_dot(dout, nullptr, n, o, hw, scratch);
    if (threadIdx.x == 0) bw_put(dbias, blockIdx.x, (float)v, accumulate);
}

// interp: bilinear with aligned corners (Caffe's caffe_cpu_interp2): output row i samples
// input row i * (h - 1) / (ho - 1), blending the rows below and above it. The forward
// gathers four taps per output element; dX walks the input elements and gathers from the
// output rows and columns whose taps can touch it (those sampling within one row of it),
// with the forward's own weights, so no atomics and a fixed summation order.
__device__ __forceinline__ void bw_interp_tap(int i, int size_in, float ratio, int* low,
                                              int* high, float* frac) {
    const float pos = i * ratio;
    *low = min((int)floorf(pos), size_in - 1);
    *high = min(*low + 1, size_in - 1);
    *frac = pos - *low;
}

// == kernel interp_fwd ==
extern "C" __global__ void interp_fwd(const float* x, float* out, long long planes, int h,
                                      int w, int ho, int wo, float rh, float rw) {
    BW_GRID_STRIDE(t, planes * ho * wo) {
        const int j = t % wo, i = (t / wo) % ho;
        const long long p = t / ((long long)wo * ho);
        int a, b, c, d;
        float fy, fx;
        bw_interp_tap(i, h, rh, &a, &b, &fy);
        bw_interp_tap(j, w, rw, &c, &d, &fx);
        const float* q = x + p * h * w;
        const float top = q[a * w + c] * (1 - fx) + q[a * w + d] * fx;
        const float bottom = q[b * w + c] * (1 - fx) + q[b * w + d] * fx;
        out[t] = top * (1 - fy) + bottom * fy;
    }
}

// == kernel interp_dx ==
extern "C" __global__ void interp_dx(const float* dout, float* dx, long long planes, int h,
                                     int w, int ho, int wo, float rh, float rw,
                                     int accumulate) {
    BW_GRID_STRIDE(t, planes * h * w) {
        const int xx = t % w, y = (t / w) % h;
        const long long p = t / ((long long)w * h);
        // the output rows sampling within one input row of y (all of them when ho == 1)
        const int i0 = rh > 0 ? max(0, (int)floorf((y - 1) / rh) - 1) : 0;
        const int i1 = rh > 0 ? min(ho - 1, (int)ceilf((y + 1) / rh) + 1) : ho - 1;
        const int j0 = rw > 0 ? max(0, (int)floorf((xx - 1) / rw) - 1) : 0;
        const int j1 = rw > 0 ? min(wo - 1, (int)ceilf((xx + 1) / rw) + 1) : wo - 1;
        float acc = 0.0f;
        for (int i = i0; i <= i1; ++i) {
            int a, b;
            float fy;
            bw_interp_tap(i, h, rh, &a, &b, &fy);
            const float wy = (a == y ? 1 - fy : 0.0f) + (b == y ? fy : 0.0f);
            if (wy == 0.0f) continue;
            for (int j = j0; j <= j1; ++j) {
                int c, d;
                float fx;
                bw_interp_tap(j, w, rw, &c, &d, &fx);
                const float wx = (c == xx ? 1 - fx : 0.0f) + (d == xx ? fx : 0.0f);
                acc += wy * wx * dout[(p * ho + i) * wo + j];
            }
        }
        bw_put(dx, t, acc, accumulate);
    }
}

// == helpers ==
// roi_pool: Fast R-CNN's ROIPooling. Each roi row is (batch, x1, y1, x2, y2) in input
// pixels; its corners are rounded onto the features after scaling and its bins cut as
// Caffe cuts them, in double so that a bin edge that is an exact integer stays one (the
// CPU reference cuts in double too). The forward is one thread per output element; dX is
// one thread per feature element, visiting the bins of the rois of its image that can
// hold it (one more on each side than Caffe's range, for safety) and adding the output
// gradient where the saved argmax is this element: no atomics, a fixed order.
struct BwRoi {
    int batch, x1, y1;
    double bin_h, bin_w;
};

__device__ __forceinline__ BwRoi bw_roi(const float* rois, int r, int ph_n, int pw_n,
                                        double scale) {
    const float* q = rois + 5 * (long long)r;
    BwRoi g;
    g.batch = (int)q[0];
    g.x1 = (int)round(q[1] * scale);
    g.y1 = (int)round(q[2] * scale);
    const int x2 = (int)round(q[3] * scale), y2 = (int)round(q[4] * scale);
    g.bin_h = (double)max(y2 - g.y1 + 1, 1) / ph_n;
    g.bin_w = (double)max(x2 - g.x1 + 1, 1) / pw_n;
    return g;
}

__device__ __forceinline__ void bw_roi_bin(const BwRoi& g, int i, int j, int h, int w,
                                           int* h0, int* h1, int* w0, int* w1) {
    *h0 = min(max((int)floor(i * g.bin_h) + g.y1, 0), h);
    *h1 = min(max((int)ceil((i + 1) * g.bin_h) + g.y1, 0), h);
    *w0 = min(max((int)floor(j * g.bin_w) + g.x1, 0), w);
    *w1 = min(max((int)ceil((j + 1) * g.bin_w) + g.x1, 0), w);
}

// == kernel roi_pool_fwd ==
extern "C" __global__ void roi_pool_fwd(const float* x, const float* rois, float* out,
                                        int* argmax, int r_n, int c, int h, int w,
                                        int pooled_h, int pooled_w, float spatial_scale) {
    BW_GRID_STRIDE(t, (long long)r_n * c * pooled_h * pooled_w) {
        const int j = t % pooled_w, i = (t / pooled_w) % pooled_h;
        const int ch = (t / ((long long)pooled_w * pooled_h)) % c;
        const int r = t / ((long long)pooled_w * pooled_h * c);
        const BwRoi g = bw_roi(rois, r, pooled_h, pooled_w, spatial_scale);
        int h0, h1, w0, w1;
        bw_roi_bin(g, i, j, h, w, &h0, &h1, &w0, &w1);
        const float* plane = x + ((long long)g.batch * c + ch) * h * w;
        float best = 0.0f;
        int where = -1;
        for (int y = h0; y < h1; ++y)
            for (int xx = w0; xx < w1; ++xx) {
                const float v = plane[y * w + xx];
                if (where < 0 || v > best) {
                    best = v;
                    where = y * w + xx;
                }
            }
        out[t] = best;
        if (argmax) argmax[t] = where;
    }
}

// == kernel roi_pool_dx ==
extern "C" __global__ void roi_pool_dx(const float* rois, const int* argmax,
                                       const float* dout, float* dx, int n, int r_n, int c,
                                       int h, int w, int pooled_h, int pooled_w,
                                       float spatial_scale, int accumulate) {
    BW_GRID_STRIDE(t, (long long)n * c * h * w) {
        const int xx = t % w, y = (t / w) % h;
        const int ch = (t / ((long long)w * h)) % c, b = t / ((long long)w * h * c);
        const int here = y * w + xx;
        float acc = 0.0f;
        for (int r = 0; r < r_n; ++r) {
            const BwRoi g = bw_roi(rois, r, pooled_h, pooled_w, spatial_scale);
            if (g.batch != b) continue;
            const int i0 = max((int)floor((y - g.y1) / g.bin_h) - 1, 0);
            const int i1 = min((int)ceil((y - g.y1 + 1) / g.bin_h) + 1, pooled_h);
            const int j0 = max((int)floor((xx - g.x1) / g.bin_w) - 1, 0);
            const int j1 = min((int)ceil((xx - g.x1 + 1) / g.bin_w) + 1, pooled_w);
            const long long base = ((long long)r * c + ch) * pooled_h * pooled_w;
            for (int i = i0; i < i1; ++i)
                for (int j = j0; j < j1; ++j)
                    if (argmax[base + i * pooled_w + j] == here)
                        acc += dout[base + i * pooled_w + j];
        }
        bw_put(dx, t, acc, accumulate);
    }
}

// == helpers ==
// normalize: SSD's L2 normalisation of [N, C, S] tensors, one norm per sample
// (across = 1) or per sample and position. A "group" is the elements one norm covers:
// group g of sample n is position g (across = 0) or all of the sample. The forward's norm
// and the sums of dX and dW are block reductions in double, one block per group (per
// channel for dW, or one block when the scale is shared).
__device__ __forceinline__ long long bw_group_elem(int n, int g, long long k, int c,
                                                   long long s, int across) {
    // the k-th element of group g of sample n
    return across ? (long long)n * c * s + k : ((long long)n * c + k) * s + g;
}

// == kernel normalize_fwd ==
// One block per group: its norm (kept in `norm` when the backward wants it), then the
// group's outputs.
extern "C" __global__ void normalize_fwd(const float* x, const float* weight, float* out,
                                         float* norm, int n, int c, long long s, int across,
                                         int shared, float eps) {
    __shared__ double scratch[32];
    const long long groups = across ? 1 : s;
    const int b = blockIdx.x / groups, g = blockIdx.x % groups;
    const long long size = across ? (long long)c * s : c;
    double acc = 0.0;
    for (long long k = threadIdx.x; k < size; k += blockDim.x) {
        const float v = x[bw_group_elem(b, g, k, c, s, across)];
        acc += (double)v * v;
    }
    const float nv = (float)sqrt(bw_block_sum_d(acc, scratch) + eps);
    if (norm && threadIdx.x == 0) norm[blockIdx.x] = nv;
    for (long long k = threadIdx.x; k < size; k += blockDim.x) {
        const long long e = bw_group_elem(b, g, k, c, s, across);
        out[e] = x[e] / nv * weight[shared ? 0 : (e / s) % c];
    }
}

// == kernel normalize_dx ==
// dx = g / norm - x * sum(g * x) / norm^3 over the group, with g = dout * scale.
extern "C" __global__ void normalize_dx(const float* x, const float* norm,
                                        const float* weight, const float* dout, float* dx,
                                        int n, int c, long long s, int across, int shared,
                                        int accumulate) {
    __shared__ double scratch[32];
    const long long groups = across ? 1 : s;
    const int b = blockIdx.x / groups, g = blockIdx.x % groups;
    const long long size = across ? (long long)c * s : c;
    double acc = 0.0;
    for (long long k = threadIdx.x; k < size; k += blockDim.x) {
        const long long e = bw_group_elem(b, g, k, c, s, across);
        const int ch = (e / s) % c;
        acc += (double)dout[e] * weight[shared ? 0 : ch] * x[e];
    }
    const double dot = bw_block_sum_d(acc, scratch);
    const double nv = norm[blockIdx.x];
    for (long long k = threadIdx.x; k < size; k += blockDim.x) {
        const long long e = bw_group_elem(b, g, k, c, s, across);
        const int ch = (e / s) % c;
        const double v = dout[e] * weight[shared ? 0 : ch] / nv - x[e] * dot / (nv * nv * nv);
        bw_put(dx, e, (float)v, accumulate);
    }
}

// == kernel normalize_dw ==
// dweight[ch] (+)= sum over n and positions of dout * x / norm (every channel when shared).
extern "C" __global__ void normalize_dw(const float* x, const float* norm, const float* dout,
                                        float* dweight, int n, int c, long long s,
                                        int across, int shared, int accumulate) {
    __shared__ double scratch[32];
    const int ch0 = shared ? 0 : blockIdx.x, ch1 = shared ? c : blockIdx.x + 1;
    const long long per = (long long)n * s;
    double acc = 0.0;
    for (int ch = ch0; ch < ch1; ++ch)
        for (long long t = threadIdx.x; t < per; t += blockDim.x) {
            const long long b = t / s, pos = t % s;
            const long long e = (b * c + ch) * s + pos;
            acc += (double)dout[e] * x[e] / norm[across ? b : b * s + pos];
        }
    const double v = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) bw_put(dweight, blockIdx.x, (float)v, accumulate);
}
