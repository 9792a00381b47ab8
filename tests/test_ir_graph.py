"""The NetworkX graph as the IR: the layers' order and adjacency come from it, the plan's
minimal backward subgraph is a graph users can query, and the verifiers that
BWPLAN_CHECKS=1 runs between passes catch broken invariants with the net printed around
the failure."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import networkx as nx
import pytest

from bwplan import load, load_bw_text, make_plan
from bwplan.errors import InternalError
from bwplan.ir import verify
from bwplan.ir.printer import print_net
from bwplan.lower.program import value
from bwplan.lower.schedule import lower

EXAMPLES = Path(__file__).parents[1] / "examples"

OUT_OF_ORDER = """input x : f32[2, 4]
input y : i64[2]
loss = softmax_cross_entropy(c, y)
c = linear(b, out=3)
b = relu(a)
a = linear(x, out=4) frozen
"""


def test_checks_are_on_in_the_test_suite():
    assert verify.enabled()


def test_layer_order_and_consumers_come_from_the_graph():
    net = load_bw_text(OUT_OF_ORDER, "t.bw")
    assert [l.name for l in net.layers] == ["a", "b", "c", "loss"]
    assert list(nx.topological_sort(net.graph))[-1] == "loss"
    assert [(e.src, e.dst) for e in net.consumers("b")] == [("b", "c")]
    assert net.graph.edges["a", "b", 0]["edge"] is net.layer("b").inputs[0]


def test_backward_graph_of_a_frozen_backbone_is_the_head():
    plan = make_plan(load(str(EXAMPLES / "frozen_backbone.bw")))
    g = plan.backward_graph
    assert isinstance(g, nx.DiGraph) and nx.is_frozen(g)
    layers = {n for n, d in g.nodes(data=True) if d["backward"]}
    assert layers == {"fc1", "relu4", "fc2", "loss"}
    assert not any(n.startswith("conv") for n in g)
    # fc1's input is kept for its dW, but no gradient flows into it
    assert g.nodes["flat"]["kept"] and not g.nodes["flat"]["grad"]
    assert g.edges["flat", "fc1"] == {"dx": False, "indices": (0,), "dx_indices": (),
                                       "kept": True}
    assert g.nodes["fc1"]["dw"] == ("fc1.weight", "fc1.bias") and g.nodes["fc1"]["dx"] == ()
    assert g.edges["relu4", "fc2"]["dx"]
    # what fc2's gradient reaches, by following dX edges only
    flows = nx.subgraph_view(g, filter_edge=lambda u, v: g.edges[u, v]["dx"])
    assert nx.ancestors(flows, "fc2") == {"fc1", "relu4"}


def test_backward_graph_of_a_frozen_middle_layer_passes_the_gradient_through():
    plan = make_plan(load(str(EXAMPLES / "middle_frozen.bw")))
    g = plan.backward_graph
    conv2 = g.nodes["conv2"]
    assert conv2["backward"] and conv2["dw"] == () and conv2["keeps"] == ()
    src = plan.net.layer("conv2").inputs[0].src
    assert conv2["dx"] == (src,)
    assert g.edges[src, "conv2"]["dx"] and not g.edges[src, "conv2"]["kept"]


def test_printer_marks_the_layer_asked_about():
    net = load_bw_text(OUT_OF_ORDER, "t.bw")
    text = print_net(net, around="b", context=1)
    assert ">> b = relu(a) negative_slope=0.0 : f32[2, 4]" in text
    assert "   a = linear(x) out=4 bias=True : f32[2, 4]  [weight: a.weight lr 0 (frozen at " \
        "t.bw:6:22)" in text
    assert text.startswith("   ... 2 lines above") and "loss" not in text


def test_verify_net_catches_layers_out_of_topological_order():
    net = load_bw_text(OUT_OF_ORDER, "t.bw")
    swapped = (net.layers[1], net.layers[0]) + net.layers[2:]
    with pytest.raises(InternalError) as info:
        verify.verify_net(net.replace_layers(swapped))
    assert "not in topological order" in str(info.value)
    assert ">> b = relu(a)" in info.value.context


def test_verify_program_catches_a_read_of_a_freed_buffer():
    plan = make_plan(load_bw_text(OUT_OF_ORDER, "t.bw"))
    program = lower(plan)
    fwd = list(program.forward)
    # free b right after it is computed, although c's dW reads it later
    fwd[1] = replace(fwd[1], frees=(value("b"),))
    from bwplan.lower.schedule import _lifetimes
    buffers, positions = _lifetimes(plan.net, fwd, program.seeds, program.backward)
    broken = replace(program, forward=tuple(fwd), buffers=buffers, positions=positions)
    with pytest.raises(InternalError) as info:
        verify.verify_program(broken)
    assert "uses b at position" in str(info.value)
    assert ">> c = linear(b)" in info.value.context


def test_lowering_reads_and_lifetimes_agree_with_the_peak():
    plan = make_plan(load(str(EXAMPLES / "middle_frozen.bw")))
    program = lower(plan)
    assert plan.summary.planned_peak_bytes == program.peak_bytes()
    # every need of a dW binds to a buffer that the step also lists among its reads
    for step in program.backward:
        bound = {b for s in step.saved for b in s.buffers}
        assert bound | {step.dout} == set(step.reads)
