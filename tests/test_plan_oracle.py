"""The planner against a brute-force oracle that enumerates every path of small random
networks, plus the monotonicity properties: freezing more or cutting an edge never adds
backward work."""
from __future__ import annotations

import random

from hypothesis import given, settings

from bwplan import apply_policy, load_bw_text, make_plan
from netgen import OPS, descriptions, to_bw


def _gradient_edges(desc):
    """(src, dst, index) for every edge along which a gradient may flow."""
    edges = []
    for l in desc["layers"]:
        for i, (src, stop) in enumerate(l["inputs"]):
            if not stop and OPS[l["op"]][1][i] and src != "y":
                edges.append((src, l["name"], i))
    return edges


def _all_paths(edges, starts, ends):
    """Every path (as a list of edges) from a start node to an end node, by plain DFS."""
    out_edges = {}
    for e in edges:
        out_edges.setdefault(e[0], []).append(e)
    paths = []

    def walk(node, path):
        if node in ends:
            paths.append(list(path))
        for e in out_edges.get(node, []):
            path.append(e)
            walk(e[1], path)
            path.pop()

    for s in starts:
        walk(s, [])
    return paths


def oracle(desc):
    layers = {l["name"]: l for l in desc["layers"]}
    starts = {n for n, l in layers.items() if any(v > 0 for v in l["lr"].values())}
    if desc["x_grad"]:
        starts.add("x")
    sinks = {n for n, l in layers.items() if l["loss_weight"] != 0}
    paths = _all_paths(_gradient_edges(desc), starts, sinks)
    nodes = set()
    dx = set()
    for path in paths:
        if path:
            nodes.add(path[0][0])
            for e in path:
                nodes.add(e[1])
                dx.add(e)
    nodes |= starts & sinks
    reaches = {n for n in layers if _all_paths(_gradient_edges(desc), {n}, sinks)}
    dw = {(n, slot) for n, l in layers.items() for slot, v in l["lr"].items()
          if v > 0 and n in reaches}
    return nodes, dx, dw


def planned(plan):
    net = plan.net
    dx = {(e.src, e.dst, e.index) for lp in plan.layers
          for e, d in zip(net.layer(lp.name).inputs, lp.dx) if d.needed}
    dw = {(lp.name, u.slot) for lp in plan.layers
          for u, d in zip(net.layer(lp.name).params, lp.dw) if d.needed}
    return dx, dw


@settings(max_examples=100, deadline=None)
@given(descriptions())
def test_planner_matches_path_enumeration(desc):
    plan = make_plan(load_bw_text(to_bw(desc), "gen.bw"))
    nodes, dx, dw = oracle(desc)
    got_dx, got_dw = planned(plan)
    assert got_dx == dx
    assert got_dw == dw
    grad_tensors = {t for t in plan.net.tensor_names() if plan.flow.needs_grad(t)}
    assert grad_tensors == nodes


@settings(max_examples=60, deadline=None)
@given(descriptions())
def test_freezing_more_never_adds_work(desc):
    net = load_bw_text(to_bw(desc), "gen.bw")
    base_dx, base_dw = planned(make_plan(net))
    for layer in net.layers:
        frozen = apply_policy(net, [("freeze", layer.name)])
        dx, dw = planned(make_plan(frozen))
        assert dx <= base_dx and dw <= base_dw
        assert not any(name == layer.name for name, _ in dw)


@settings(max_examples=60, deadline=None)
@given(descriptions())
def test_stop_gradient_never_adds_work(desc):
    base_dx, base_dw = planned(make_plan(load_bw_text(to_bw(desc), "gen.bw")))
    rng = random.Random(repr(desc))
    candidates = [(i, j) for i, l in enumerate(desc["layers"])
                  for j, (_, stop) in enumerate(l["inputs"]) if not stop]
    if not candidates:
        return
    i, j = rng.choice(candidates)
    layer = desc["layers"][i]
    inputs = list(layer["inputs"])
    inputs[j] = (inputs[j][0], True)
    cut = {**desc, "layers": desc["layers"][:i] + [{**layer, "inputs": inputs}] +
           desc["layers"][i + 1:]}
    dx, dw = planned(make_plan(load_bw_text(to_bw(cut), "gen.bw")))
    assert dx <= base_dx and dw <= base_dw
    assert (inputs[j][0], layer["name"], j) not in dx


@settings(max_examples=60, deadline=None)
@given(descriptions())
def test_every_gradient_serves_an_update_and_every_reachable_param_gets_one(desc):
    plan = make_plan(load_bw_text(to_bw(desc), "gen.bw"))
    net = plan.net
    trained = {(l.name, u.slot) for l in net.layers for u in l.params if u.lr_mult > 0}
    _, dx, dw = oracle(desc)[0], *planned(plan)
    # every dX that runs lies below a trainable parameter (or an input that asks for it)
    for src, dst, _ in dx:
        assert plan.flow.up[src] is not None
    # every trainable use whose layer reaches a loss gets its gradient
    for name, slot in trained:
        if plan.flow.down[name] is not None:
            assert (name, slot) in dw
    # and no frozen use ever does
    assert all(key in trained for key in dw)
