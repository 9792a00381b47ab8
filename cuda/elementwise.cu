// elementwise.cu: the elementwise ops of bwplan/ops/elementwise.py: relu (leaky), clip,
// sigmoid, tanh, inverted dropout with a byte mask, and Caffe Eltwise's add (with
// coefficients), mul and maximum.
//
// One thread per element in a grid-stride loop, 256 threads per block; the launch code
// caps the grid at a few waves of blocks (bwplan/kernels/cuda/limits.py), so a large
// tensor reuses resident blocks instead of paying a block launch per 256 elements.
// The activations' dX read the output, not the input (as the op registry declares).
// The n-ary ops take at most two inputs per launch and are launched again, accumulating,
// for more: no pointer tables in device memory, and a sum of two reads each input once.

#include "common.cuh"

// == kernel relu_fwd ==
extern "C" __global__ void relu_fwd(const float* x, float* out, long long n, float negative_slope) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        out[i] = v > 0.0f ? v : v * negative_slope;
    }
}

// == kernel relu_dx ==
// out > 0 exactly where x > 0 for any slope >= 0, so the output decides the branch.
extern "C" __global__ void relu_dx(const float* out, const float* dout, float* dx,
                                   long long n, float negative_slope, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float g = dout[i];
        bw_put(dx, i, out[i] > 0.0f ? g : g * negative_slope, accumulate);
    }
}

// == kernel clip_fwd ==
// The bounds are named after the op's attributes, which the default launch binds by name.
extern "C" __global__ void clip_fwd(const float* x, float* out, long long n, float min,
                                    float max) {
    BW_GRID_STRIDE(i, n) out[i] = fminf(fmaxf(x[i], min), max);
}

// == kernel clip_dx ==
// min < out < max exactly where min < x < max, so the output decides; 0 at the bounds.
extern "C" __global__ void clip_dx(const float* out, const float* dout, float* dx,
                                   long long n, float min, float max, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float y = out[i];
        bw_put(dx, i, (y > min && y < max) ? dout[i] : 0.0f, accumulate);
    }
}

// == kernel sigmoid_fwd ==
extern "C" __global__ void sigmoid_fwd(const float* x, float* out, long long n) {
    BW_GRID_STRIDE(i, n) out[i] = 1.0f / (1.0f + expf(-x[i]));
}

// == kernel sigmoid_dx ==
extern "C" __global__ void sigmoid_dx(const float* out, const float* dout, float* dx,
                                      long long n, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float y = out[i];
        bw_put(dx, i, dout[i] * y * (1.0f - y), accumulate);
    }
}

// == kernel tanh_fwd ==
extern "C" __global__ void tanh_fwd(const float* x, float* out, long long n) {
    BW_GRID_STRIDE(i, n) out[i] = tanhf(x[i]);
}

// == kernel tanh_dx ==
extern "C" __global__ void tanh_dx(const float* out, const float* dout, float* dx,
                                   long long n, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float y = out[i];
        bw_put(dx, i, dout[i] * (1.0f - y * y), accumulate);
    }
}

// == kernel dropout_fwd ==
// Training: keep element i when u(seed, stream, i) >= p and scale the kept ones by
// 1/(1-p). `seed` points at the runtime's step counter in device memory, so a captured
// graph draws a fresh mask every replay; `stream` separates the layers. The mask is
// written only when the backward will read it. Inference: the identity.
extern "C" __global__ void dropout_fwd(const float* x, float* out, unsigned char* mask,
                                       long long n, float p,
                                       const unsigned long long* seed,
                                       unsigned long long stream, int training) {
    const unsigned long long s = training ? *seed : 0ull;
    const float scale = 1.0f / (1.0f - p);
    BW_GRID_STRIDE(i, n) {
        if (!training) {
            out[i] = x[i];
            continue;
        }
        const bool keep = bw_uniform(s, stream, (unsigned long long)i) >= p;
        out[i] = keep ? x[i] * scale : 0.0f;
        if (mask) mask[i] = keep ? 1 : 0;
    }
}

// == kernel dropout_dx ==
extern "C" __global__ void dropout_dx(const unsigned char* mask, const float* dout, float* dx,
                                      long long n, float p, int accumulate) {
    const float scale = 1.0f / (1.0f - p);
    BW_GRID_STRIDE(i, n) bw_put(dx, i, mask[i] ? dout[i] * scale : 0.0f, accumulate);
}

// == kernel add_fwd ==
// out (+)= ca * a + cb * b; b may be null (an odd input out). Launched ceil(k / 2) times
// for k inputs, the first with accumulate = 0.
extern "C" __global__ void add_fwd(const float* a, const float* b, float* out, long long n,
                                   float ca, float cb, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        float v = ca * a[i];
        if (b) v += cb * b[i];
        bw_put(out, i, v, accumulate);
    }
}

// == kernel scaled_copy ==
// dst (+)= alpha * src: add's dX (alpha = that input's coefficient).
extern "C" __global__ void scaled_copy(const float* src, float* dst, long long n, float alpha,
                                       int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(dst, i, alpha * src[i], accumulate);
}

// == kernel mul_fwd ==
extern "C" __global__ void mul_fwd(const float* a, const float* b, float* out, long long n) {
    BW_GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}

// == kernel mul_dx ==
// d a = dout * b and d b = dout * a: `other` is the input that is not differentiated.
extern "C" __global__ void mul_dx(const float* other, const float* dout, float* dx,
                                  long long n, int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(dx, i, dout[i] * other[i], accumulate);
}

// == kernel maximum_fwd ==
// A running maximum over the inputs, one input per launch: launch 0 (index 0) copies
// x and sets argmax 0; launch k replaces where x_k is strictly larger, so a tie goes to
// the earliest input, as the reference's argmax does. argmax may be null.
extern "C" __global__ void maximum_fwd(const float* x, float* out, int* argmax, long long n,
                                       int index) {
    BW_GRID_STRIDE(i, n) {
        const float v = x[i];
        if (index == 0 || v > out[i]) {
            out[i] = v;
            if (argmax) argmax[i] = index;
        }
    }
}

// == kernel maximum_dx ==
extern "C" __global__ void maximum_dx(const int* argmax, const float* dout, float* dx,
                                      long long n, int index, int accumulate) {
    BW_GRID_STRIDE(i, n) bw_put(dx, i, argmax[i] == index ? dout[i] : 0.0f, accumulate);
}
