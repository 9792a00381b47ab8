// activation.cu: Caffe's further neuron layers of bwplan/ops/activation.py: ELU, Power,
// AbsVal, BNLL, Exp, Log, PReLU and Threshold; erf (ONNX's Erf) and SELU (ONNX's Selu).
//
// No kernel here has a launch row: each takes the default launch of its component kind
// (bwplan/kernels/cuda/default.py), its arguments bound by the names of its parameters,
// which are therefore the op's port, slot and attribute names. Forwards and dX are
// grid-stride loops over the elements; PReLU's dW is one block per slope, summing in
// double as the per-channel reductions of common.cuh do.
// An input the gradient rule does not need for these attributes arrives as a null pointer
// (ELU's x when alpha >= 0, Power's x when its slope is constant).

#include "common.cuh"

// ln(base) of Exp and Log; Caffe's base -1 means e.
__device__ __forceinline__ float bw_log_base(float base) {
    return base == -1.0f ? 1.0f : logf(base);
}

// == kernel elu_fwd ==
extern "C" __global__ void elu_fwd(const float* x, float* out, long long n, float alpha) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        out[i] = v > 0.0f ? v : alpha * expm1f(v);
    }
}

// == kernel elu_dx ==
// For alpha >= 0, out > 0 exactly where x > 0, so x is not read (and not kept).
extern "C" __global__ void elu_dx(const float* x, const float* out, const float* dout,
                                  float* dx, long long n, float alpha, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float y = out[i];
        const bool positive = x ? x[i] > 0.0f : y > 0.0f;
        bw_put(dx, i, positive ? dout[i] : dout[i] * (y + alpha), accumulate);
    }
}

// == kernel power_fwd ==
extern "C" __global__ void power_fwd(const float* x, float* out, long long n, float power,
                                     float scale, float shift) {
    BW_GRID_STRIDE(i, n) out[i] = powf(shift + scale * x[i], power);
}

// == kernel power_dx ==
// d/dx (shift + scale x)^p = p scale (shift + scale x)^(p - 1); x is null where that is
// the constant p * scale (p = 1, or p * scale = 0).
extern "C" __global__ void power_dx(const float* x, const float* dout, float* dx, long long n,
                                    float power, float scale, float shift, int accumulate) {
    const float slope = power * scale;
    BW_GRID_STRIDE(i, n) {
        const float d = x ? slope * powf(shift + scale * x[i], power - 1.0f) : slope;
        bw_put(dx, i, dout[i] * d, accumulate);
    }
}

// == kernel absval_fwd ==
extern "C" __global__ void absval_fwd(const float* x, float* out, long long n) {
    BW_GRID_STRIDE(i, n) out[i] = fabsf(x[i]);
}

// == kernel absval_dx ==
// sign(x) * dout, with sign(0) = 0 as in Caffe.
extern "C" __global__ void absval_dx(const float* x, const float* dout, float* dx, long long n,
                                     int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        bw_put(dx, i, v > 0.0f ? dout[i] : (v < 0.0f ? -dout[i] : 0.0f), accumulate);
    }
}

// == kernel bnll_fwd ==
// log(1 + e^x) as max(x, 0) + log1p(e^-|x|): no overflow for large |x|.
extern "C" __global__ void bnll_fwd(const float* x, float* out, long long n) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        out[i] = fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v)));
    }
}

// == kernel bnll_dx ==
// sigmoid(x) = 1 - e^-out, as -expm1(-out) so that a tiny out keeps its precision.
extern "C" __global__ void bnll_dx(const float* out, const float* dout, float* dx, long long n,
                                   int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(dx, i, -dout[i] * expm1f(-out[i]), accumulate);
}

// == kernel exp_fwd ==
// base^(shift + scale x) = e^(ln(base) (shift + scale x)).
extern "C" __global__ void exp_fwd(const float* x, float* out, long long n, float base,
                                   float scale, float shift) {
    const float ln_base = bw_log_base(base);
    BW_GRID_STRIDE(i, n) out[i] = expf(ln_base * (shift + scale * x[i]));
}

// == kernel exp_dx ==
extern "C" __global__ void exp_dx(const float* out, const float* dout, float* dx, long long n,
                                  float base, float scale, int accumulate) {
    const float a = bw_log_base(base) * scale;
    BW_GRID_STRIDE(i, n) bw_put(dx, i, dout[i] * out[i] * a, accumulate);
}

// == kernel log_fwd ==
extern "C" __global__ void log_fwd(const float* x, float* out, long long n, float base,
                                   float scale, float shift) {
    const float inv_ln_base = 1.0f / bw_log_base(base);
    BW_GRID_STRIDE(i, n) out[i] = logf(shift + scale * x[i]) * inv_ln_base;
}

// == kernel log_dx ==
extern "C" __global__ void log_dx(const float* x, const float* dout, float* dx, long long n,
                                  float base, float scale, float shift, int accumulate) {
    const float a = scale / bw_log_base(base);
    BW_GRID_STRIDE(i, n) bw_put(dx, i, dout[i] * a / (shift + scale * x[i]), accumulate);
}

// == kernel prelu_fwd ==
// Element i of an [N, C, S] tensor lies in channel (i / S) % C; a shared slope is weight[0].
extern "C" __global__ void prelu_fwd(const float* x, const float* weight, float* out,
                                     long long n, int channels, long long inner,
                                     int channel_shared) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        const float a = weight[channel_shared ? 0 : (int)((i / inner) % channels)];
        out[i] = v > 0.0f ? v : a * v;
    }
}

// == kernel prelu_dx ==
extern "C" __global__ void prelu_dx(const float* x, const float* weight, const float* dout,
                                    float* dx, long long n, int channels, long long inner,
                                    int channel_shared, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float a = weight[channel_shared ? 0 : (int)((i / inner) % channels)];
        bw_put(dx, i, x[i] > 0.0f ? dout[i] : a * dout[i], accumulate);
    }
}

// == kernel prelu_dw ==
// dweight[c] (+)= sum of dout * x where x <= 0, over channel c = blockIdx.x (over every
// element when the slope is shared: one block). Consecutive threads take consecutive s.
extern "C" __global__ void prelu_dw(const float* x, const float* dout, float* dw, long long n,
                                    int channels, long long inner, int channel_shared,
                                    int accumulate) {
    __shared__ double scratch[32];
    const int c = blockIdx.x;
    const long long count = channel_shared ? n : n / channels;
    double acc = 0.0;
    for (long long t = threadIdx.x; t < count; t += blockDim.x) {
        const long long i = channel_shared ? t
                                           : ((t / inner) * channels + c) * inner + t % inner;
        const float v = x[i];
        if (v <= 0.0f) acc += (double)dout[i] * v;
    }
    const double total = bw_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) bw_put(dw, c, (float)total, accumulate);
}

// == kernel threshold_fwd ==
// Forward only: the op has no gradient (Caffe defines no backward for Threshold).
extern "C" __global__ void threshold_fwd(const float* x, float* out, long long n,
                                         float threshold) {
    BW_GRID_STRIDE(i, n) out[i] = x[i] > threshold ? 1.0f : 0.0f;
}

// == kernel erf_fwd ==
extern "C" __global__ void erf_fwd(const float* x, float* out, long long n) {
    BW_GRID_STRIDE(i, n) out[i] = erff(x[i]);
}

// == kernel erf_dx ==
// 2/sqrt(pi) * exp(-x^2) * dout: it needs x, the output does not give it.
extern "C" __global__ void erf_dx(const float* x, const float* dout, float* dx, long long n,
                                  int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        bw_put(dx, i, dout[i] * 1.12837916709551257f * expf(-v * v), accumulate);
    }
}

// == kernel selu_fwd ==
extern "C" __global__ void selu_fwd(const float* x, float* out, long long n, float alpha,
                                    float gamma) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        out[i] = v > 0.0f ? gamma * v : gamma * alpha * expm1f(v);
    }
}

// == kernel selu_dx ==
// alpha >= 0 and gamma > 0: out > 0 exactly where x > 0, and below it the slope is
// gamma * alpha * exp(x) = out + gamma * alpha, so x is not read (and not kept).
extern "C" __global__ void selu_dx(const float* out, const float* dout, float* dx,
                                   long long n, float alpha, float gamma, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float y = out[i];
        bw_put(dx, i, y > 0.0f ? gamma * dout[i] : dout[i] * (y + gamma * alpha), accumulate);
    }
}
