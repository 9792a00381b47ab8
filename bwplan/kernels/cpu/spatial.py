"""Crop, permute, pad and deconv2d on the CPU (bwplan/ops/spatial.py).

Crop, permute and pad move data and compute nothing, like the shape family, so each kernel is
one NumPy copy (a strided view copied into the output buffer): a memcpy-speed pass a Numba
loop could only match. deconv2d runs conv2d's Numba kernels on the transposed problem
(`conv_view`): its forward is conv2d's dX, its dX conv2d's forward, its dW conv2d's dW
with input and output gradient swapped; its dB is conv2d's.
"""
from __future__ import annotations

import numpy as np

from bwplan.kernels.cpu import conv
from bwplan.ops.spatial import conv_view, crop_window, pad_window, permute_order


def crop_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, inputs[0][crop_window(ctx)])


def crop_dx(ctx, saved, dout, index, out) -> None:
    out.fill(0)
    out[crop_window(ctx)] = dout


def pad_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    out.fill(0)
    out[pad_window(ctx)] = inputs[0]


def pad_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, dout[pad_window(ctx)])


def permute_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, np.transpose(inputs[0], permute_order(ctx)))


def permute_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, np.transpose(dout, np.argsort(permute_order(ctx))))


def deconv2d_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    conv.conv2d_dx(conv_view(ctx), {"weight": params["weight"]}, inputs[0], 0, out)
    if ctx.attrs["bias"]:
        out += params["bias"].reshape(1, -1, 1, 1)


def deconv2d_dx(ctx, saved, dout, index, out) -> None:
    conv.conv2d_fwd(conv_view(ctx), [dout], {"weight": saved["weight"]}, out, {}, False, None)


def deconv2d_dw(ctx, saved, dout, out) -> None:
    conv.conv2d_dw(conv_view(ctx), {"x": dout}, saved["x"], out)


def deconv2d_db(ctx, saved, dout, out) -> None:
    conv.conv2d_db(ctx, saved, dout, out)
