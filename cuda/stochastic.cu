// stochastic.cu: drop_path (stochastic depth) of bwplan/ops/stochastic.py: each sample
// (axis 0) kept whole with probability 1 - p and scaled by 1/(1-p), or zeroed; a byte mask
// per sample.
//
// One thread per element in a grid-stride loop, 256 threads per block, as elementwise.cu.
// Every element of sample s computes the same draw u(seed, stream, s) (a few integer
// multiplies, cheaper than a second launch that draws the mask first and a read of it);
// the thread of the sample's first element writes the mask byte.

#include "common.cuh"

// == kernel drop_path_fwd ==
// `seed` points at the runtime's step counter in device memory, so a captured graph draws
// fresh masks every replay; `stream` separates the layers. Inference: the identity.
extern "C" __global__ void drop_path_fwd(const float* x, float* out, unsigned char* mask,
                                         long long n, long long inner, float p,
                                         const unsigned long long* seed,
                                         unsigned long long stream, int training) {
    const unsigned long long s = training ? *seed : 0ull;
    const float scale = 1.0f / (1.0f - p);
    BW_GRID_STRIDE(i, n) {
        if (!training) {
            out[i] = x[i];
            continue;
        }
        const long long sample = i / inner;
        const bool keep = bw_uniform(s, stream, (unsigned long long)sample) >= p;
        out[i] = keep ? x[i] * scale : 0.0f;
        if (mask && i % inner == 0) mask[sample] = keep ? 1 : 0;
    }
}

// == kernel drop_path_dx ==
extern "C" __global__ void drop_path_dx(const unsigned char* mask, const float* dout, float* dx,
                                        long long n, long long inner, float p, int accumulate) {
    const float scale = 1.0f / (1.0f - p);
    BW_GRID_STRIDE(i, n) bw_put(dx, i, mask[i / inner] ? dout[i] * scale : 0.0f, accumulate);
}
