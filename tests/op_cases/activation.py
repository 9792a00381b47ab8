"""The rows of Caffe's further neuron layers (bwplan/ops/activation.py; caffe.proto's
parameter names and defaults)."""
from __future__ import annotations

import math

from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape, away_from, unary_case
from .row import Case, NetUse, OpRow
from .torch_support import F, torch


@st.composite
def elu_case(draw):
    x = away_from(normal(rng_from(draw), *draw_shape(draw)))
    return Case(dict(alpha=draw(st.sampled_from([1.0, 0.5, 2.0, 0.0, -0.5]))), [x])


@st.composite
def selu_case(draw):
    """ONNX's constants or others; x away from the kink at 0."""
    attrs = draw(st.sampled_from([{}, dict(alpha=1.0, gamma=2.0), dict(alpha=0.0, gamma=0.5)]))
    return Case(attrs, [away_from(normal(rng_from(draw), *draw_shape(draw)))])


@st.composite
def power_case(draw):
    """A positive base shift + scale * x, so that any power is defined; or scale 0."""
    x = rng_from(draw).uniform(0.5, 2.0, draw_shape(draw))
    scale = draw(st.sampled_from([1.0, 0.5, 2.0, 0.0]))
    shift = draw(st.sampled_from([0.0, 0.5])) if scale else 0.5
    return Case(dict(power=draw(st.sampled_from([1.0, 2.0, 0.5, -1.0, 3.0, 0.0])),
                     scale=scale, shift=shift), [x])


@st.composite
def kinked_case(draw):
    return Case({}, [away_from(normal(rng_from(draw), *draw_shape(draw)))])


@st.composite
def bnll_case(draw):
    spread = draw(st.sampled_from([1.0, 4.0, 30.0]))  # large |x|: no overflow either way
    return Case({}, [spread * normal(rng_from(draw), *draw_shape(draw))])


@st.composite
def exp_case(draw):
    attrs = dict(base=draw(st.sampled_from([-1.0, 2.0, 0.5])),
                 scale=draw(st.sampled_from([1.0, 0.5, -1.0])),
                 shift=draw(st.sampled_from([0.0, 0.3])))
    return Case(attrs, [normal(rng_from(draw), *draw_shape(draw))])


@st.composite
def log_case(draw):
    attrs = dict(base=draw(st.sampled_from([-1.0, 2.0, 10.0])),
                 scale=draw(st.sampled_from([1.0, 2.0])),
                 shift=draw(st.sampled_from([0.0, 0.5])))
    return Case(attrs, [rng_from(draw).uniform(0.5, 2.0, draw_shape(draw))])


@st.composite
def prelu_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 2, 4)
    shared = draw(st.booleans())
    params = {"weight": normal(rng, 1 if shared else shape[1])}
    return Case(dict(channel_shared=shared), [away_from(normal(rng, *shape))], params)


@st.composite
def threshold_case(draw):
    t = draw(st.sampled_from([0.0, 0.3, -1.0]))
    return Case(dict(threshold=t), [away_from(normal(rng_from(draw), *draw_shape(draw)), t)])


def exp_base(a) -> float:
    """Exp and Log: base -1 means e."""
    return math.e if a["base"] == -1 else a["base"]


def power(a, xs, p, training):
    return (a["shift"] + a["scale"] * xs[0]) ** a["power"]


def prelu(a, xs, p, training):
    """torch's prelu takes one slope for every channel or one per channel of dimension 1,
    as Caffe's channel_shared does."""
    return F.prelu(xs[0], p["weight"])


def threshold(a, xs, p, training):
    return (xs[0] > a["threshold"]).to(xs[0].dtype)   # a step: no gradient flows


# power and log get positive arguments (exp of something, |x| + 1)
ROWS = {
    "elu": OpRow(elu_case(), NetUse("elu = elu(f, alpha=0.5)"),
                 lambda a, xs, p, t: F.elu(xs[0], a["alpha"])),
    "power": OpRow(power_case(), NetUse(
        "power_base = exp(f, scale=-0.5)\n"
        "power = power(power_base, power=1.5, scale=2.0, shift=0.5)"), power),
    "absval": OpRow(kinked_case(), NetUse("absval = absval(f)"),
                    lambda a, xs, p, t: torch.abs(xs[0])),
    "bnll": OpRow(bnll_case(), NetUse("bnll = bnll(f)"),
                  lambda a, xs, p, t: torch.logaddexp(xs[0], torch.zeros_like(xs[0]))),
    "exp": OpRow(exp_case(), NetUse("exp = exp(f, scale=-0.5)"),
                 lambda a, xs, p, t: exp_base(a) ** (a["shift"] + a["scale"] * xs[0])),
    "log": OpRow(log_case(), NetUse("log_arg = absval(f)\nlog = log(log_arg, base=2.0, shift=1.0)"),
                 lambda a, xs, p, t: torch.log(a["shift"] + a["scale"] * xs[0])
                 / math.log(exp_base(a))),
    "prelu": OpRow(prelu_case(), NetUse(
        "prelu_shared = prelu(f, channel_shared=true)\nprelu = prelu(prelu_shared)"), prelu),
    # a step: the gradient into f stops here
    "threshold": OpRow(threshold_case(), NetUse("threshold = threshold(f, threshold=0.1)"),
                       threshold),
    "erf": OpRow(unary_case(), NetUse("erf = erf(f)"), lambda a, xs, p, t: torch.erf(xs[0])),
    "selu": OpRow(selu_case(), NetUse("selu = selu(f)"),
                  lambda a, xs, p, t: a["gamma"] * F.elu(xs[0], a["alpha"])),
}
