"""Random small networks for property tests, described as plain data so that the brute-force
oracle in test_plan_oracle.py never goes through bwplan's own graph code.

A description is a list of layer dicts: name, op, inputs [(src, stop_gradient)], lr {slot:
lr}, shares (name or None), loss_weight. `to_bw` writes it as .bw text.
"""
from __future__ import annotations

from hypothesis import strategies as st

WIDTH = 4
BATCH = 2
# op -> (arity, differentiable ports, has params)
OPS = {
    "linear": (1, (True,), True),
    "relu": (1, (True,), False),
    "add": (2, (True, True), False),
    "mul": (2, (True, True), False),
    "softmax_cross_entropy": (2, (True, False), False),
}


@st.composite
def descriptions(draw, max_layers: int = 9):
    n = draw(st.integers(1, max_layers))
    layers = []
    tensors = ["x"]
    linears = []
    for i in range(n):
        name = f"l{i}"
        op = draw(st.sampled_from(sorted(OPS)))
        arity = OPS[op][0]
        if op == "softmax_cross_entropy":
            src = draw(st.sampled_from(tensors))
            inputs = [(src, draw(st.booleans())), ("y", False)]
            weight = draw(st.sampled_from([1.0, 0.5, 0.0]))
        else:
            inputs = [(draw(st.sampled_from(tensors)), draw(st.booleans()))
                      for _ in range(arity)]
            weight = 0.0
        lr, shares = {}, None
        if op == "linear":
            if linears and draw(st.booleans()):
                shares = draw(st.sampled_from(linears))
            lr = {"weight": draw(st.sampled_from([0.0, 1.0, 0.5])),
                  "bias": draw(st.sampled_from([0.0, 1.0, 2.0]))}
            linears.append(name)
        layers.append({"name": name, "op": op, "inputs": inputs, "lr": lr,
                       "shares": shares, "loss_weight": weight})
        if op != "softmax_cross_entropy":
            tensors.append(name)
    if not any(l["op"] == "softmax_cross_entropy" for l in layers):
        layers.append({"name": "loss", "op": "softmax_cross_entropy",
                       "inputs": [(tensors[-1], False), ("y", False)], "lr": {},
                       "shares": None, "loss_weight": 1.0})
    x_grad = draw(st.booleans())
    return {"layers": layers, "x_grad": x_grad}


def to_bw(desc) -> str:
    lines = [f"input x : f32[{BATCH}, {WIDTH}]" + (" grad" if desc["x_grad"] else ""),
             f"input y : i64[{BATCH}]"]
    for l in desc["layers"]:
        args = ", ".join(f"stop_gradient({s})" if stop else s for s, stop in l["inputs"])
        attrs = f", out={WIDTH}" if l["op"] == "linear" else ""
        mods = []
        if l["shares"]:
            mods.append(f"shares {l['shares']}")
        mods += [f"{slot}.lr={v:g}" for slot, v in l["lr"].items()]
        if l["op"] == "softmax_cross_entropy":
            mods.append(f"weight={l['loss_weight']:g}")
        lines.append(f"{l['name']} = {l['op']}({args}{attrs}) {' '.join(mods)}".rstrip())
    return "\n".join(lines) + "\n"
