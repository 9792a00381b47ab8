"""Training nets generated from the rows, so that every op trains in some net without a
net written for it.

A net is the stem below, then each op's `NetUse` lines in registry order; the outputs of
the ops with a head feed linear layers (one per output shape), and the heads and the
stem's logits `g` are summed into one softmax cross-entropy that ignores class 2 (the
batches give the first sample that label). The ops go into a few nets by family (GROUPS; a
family not named there joins the last), each small enough that a training step stays
quick. An op whose inputs fix the batch (`NetUse.batch`) trains in a net of its own,
`ops_<op>`, at that batch (`fixed_batches`); with one sample the loss ignores no class.
"""
from __future__ import annotations

import bwplan
from bwplan import ops as registry

from . import ROWS

BATCH = 4
# x: images; f and e: two feature maps [N, 4, 6, 6] that carry gradients to convolutions;
# g: logits [N, 3] for the labels y; t: regression targets [N, 3]
STEM_INPUTS = ("x : f32[N, 3, 6, 6]", "y : i64[N]", "t : f32[N, 3]")
STEM = """\
f    = conv2d(x, out=4, kernel=3, pad=1)
e    = conv2d(x, out=4, kernel=1)
g    = linear(f, out=3)
"""
GROUPS: dict[str, tuple[str, ...]] = {
    "ops_dense": ("conv", "linear", "elementwise", "pool", "norm", "shape", "unpool"),
    "ops_spatial": ("spatial", "spatial_norm", "embed"),
    "ops_caffe": ("activation", "reduction", "broadcast", "loss"),
}


def group_of(family: str) -> str:
    for name, families in GROUPS.items():
        if family in families:
            return name
    return list(GROUPS)[-1]


def net_source(op_names, batch: int = BATCH) -> str:
    """The .bw text of the stem with these ops' lines, their heads and the loss.

    Outputs of one shape share a head: their sum feeds one linear layer, which gives each
    of them the same random gradient (every element a different value) for a layer fewer
    per op, and fewer layers are most of what a test of these nets costs."""
    inputs = list(STEM_INPUTS)
    lines, headed = [], []
    for name in op_names:
        use = ROWS[name].net
        inputs += [i for i in use.inputs.splitlines() if i and i not in inputs]
        lines += use.layers.splitlines()
        if use.head:
            headed.append(name)
    declared = "".join(f"input {i.replace('[N', f'[{batch}')}\n" for i in inputs)
    body = declared + "\n" + STEM + "\n".join(lines) + "\n"
    draft = bwplan.load_bw_text(body + "loss = softmax_cross_entropy(g, y)\n")
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name in headed:
        by_shape.setdefault(draft.layer(name).out.shape, []).append(name)
    heads = []
    for i, group in enumerate(by_shape.values()):
        if len(group) > 1:
            body += f"sum_{i} = add({', '.join(group)})\n"
        body += f"head_{i} = linear({group[0] if len(group) == 1 else f'sum_{i}'}, out=3)\n"
        heads.append(f"head_{i}")
    ignore = ", ignore_label=2" if batch > 1 else ""
    if not heads:
        return body + f"loss = softmax_cross_entropy(g, y{ignore})\n"
    return body + f"logits = add(g, {', '.join(heads)})\n" \
        f"loss = softmax_cross_entropy(logits, y{ignore})\n"


def generated_nets() -> dict[str, str]:
    """Net name -> .bw text, every registered op in exactly one of them."""
    members: dict[str, list[str]] = {name: [] for name in GROUPS}
    for name, op in registry.OPS.items():
        if not ROWS[name].net.batch:
            members[group_of(op.family)].append(name)
    nets = {net: net_source(ops) for net, ops in members.items() if ops}
    nets.update({net: net_source([name], batch) for net, (name, batch) in _fixed().items()})
    return nets


def _fixed() -> dict[str, tuple[str, int]]:
    return {f"ops_{name}": (name, row.net.batch) for name, row in ROWS.items() if row.net.batch}


def fixed_batches() -> dict[str, int]:
    """The generated nets that must run at one batch size: net name -> that size."""
    return {net: batch for net, (_, batch) in _fixed().items()}
