// update.cu: the optimizer step and the runtime's bookkeeping kernels, with the Caffe
// SGD semantics of bwplan/runtime/optimizer.py.
//
// Parameters, gradients and velocities each live in ONE flat float buffer, every
// parameter at the same offset in the three; the update of a whole step is one launch
// over a table of segments (one per parameter the step changes), so its cost does not
// grow with the number of parameters. For a parameter whose uses carry different lr
// multipliers the backward also prepares the multiplier-weighted sum in a separate flat
// buffer (grad_accumulate), which the update then reads instead of the gradient.
// Launch geometry: bwplan/kernels/cuda/update.py.

#include "common.cuh"

// One parameter's update, as packed by bwplan/kernels/cuda/update.py (a numpy structured
// dtype with C alignment: 3 x int64, 2 x float32, 2 x int32 = 40 bytes).
struct SgdSegment {
    long long param_off;   // into params, grads and velocity
    long long source_off;  // into the gradient source
    long long size;
    float grad_mult;       // the common lr multiplier of the gradient, 1 for a scaled sum
    float decay;           // decay_lr_mult * decay_mult (weight_decay is an argument)
    int source;            // 0: grads, 1: the scaled sums, -1: no gradient (decay only)
    int pad;
};

// == kernel sgd_update ==
// diff = grad_mult * g + decay * weight_decay * w;  v = momentum * v + lr * diff;  w -= v.
// grid (x blocks, segments): blockIdx.y picks the segment, the x blocks stride over it;
// x is capped so that small segments cost a few idle blocks, not one per element.
extern "C" __global__ void sgd_update(float* params, float* velocity, const float* grads,
                                      const float* scaled, const SgdSegment* segments,
                                      float lr, float momentum, float weight_decay) {
    const SgdSegment seg = segments[blockIdx.y];
    const float* src = seg.source == 0 ? grads : seg.source == 1 ? scaled : nullptr;
    const float decay = seg.decay * weight_decay;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < seg.size;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = seg.param_off + i;
        const float w = params[p];
        float diff = decay * w;
        if (src) diff += seg.grad_mult * src[seg.source_off + i];
        const float v = momentum * velocity[p] + lr * diff;
        velocity[p] = v;
        params[p] = w - v;
    }
}

// == kernel grad_accumulate ==
// A use's gradient `tmp` of a parameter whose uses have different lr multipliers:
// grad (+)= tmp and scaled (+)= lr_mult * tmp, the first use overwriting both.
extern "C" __global__ void grad_accumulate(const float* tmp, float* grad, float* scaled,
                                           long long n, float lr_mult, int accumulate) {
    BW_GRID_STRIDE(i, n) {
        const float g = tmp[i];
        bw_put(grad, i, g, accumulate);
        bw_put(scaled, i, lr_mult * g, accumulate);
    }
}

// == kernel fill ==
// dst[i] = value: the backward's seeds, d(loss) = the loss weight.
extern "C" __global__ void fill(float* dst, long long n, float value) {
    BW_GRID_STRIDE(i, n) dst[i] = value;
}

// == kernel advance_counter ==
// The step counter dropout draws from, advanced at the end of every step on the device,
// so a captured step graph needs no argument from the host.
extern "C" __global__ void advance_counter(unsigned long long* counter) {
    if (threadIdx.x == 0 && blockIdx.x == 0) counter[0] += 1;
}
