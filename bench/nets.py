"""The benchmark networks and freezing scenarios.

Networks are the .bw files in examples/ (defined exactly as the benchmark specifies), plus
Caffe's CIFAR-10 "quick" model imported from its prototxt when ../shared/caffe is present.
Scenarios are freezing rules derived from each net's parameterised layers (topological
order): `full` (as written), `head` (only the last parameterised layer trains), `top3` (the
last three train), `mid_frozen` (the middle parameterised layer frozen, the gradient flowing
through it), `head_rows90` (class-incremental: the head trains, with the first 90% of its
output rows, weight and bias, frozen, and at least one row training: 1 of siamese_mlp's 2;
compare it with `head`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CAFFE = ROOT.parent / "shared" / "caffe"


@dataclass(frozen=True)
class BenchNet:
    name: str
    path: Path
    caffe_time_log: Path | None = None     # `caffe time` output for the same net and batch


NETWORKS = {
    "cnn_small": BenchNet("cnn_small", ROOT / "examples" / "cnn_small.bw"),
    "resnet_mini": BenchNet("resnet_mini", ROOT / "examples" / "resnet_mini.bw"),
    "siamese_mlp": BenchNet("siamese_mlp", ROOT / "examples" / "siamese_mlp.bw"),
    "inception_branch": BenchNet("inception_branch", ROOT / "examples" / "inception_branch.bw"),
    "cifar10_quick": BenchNet("cifar10_quick", SHARED_CAFFE / "base_cifar10_quick.prototxt",
                              SHARED_CAFFE / "time_base_cifar10_quick.log"),
}
SCENARIOS = ("full", "head", "top3", "mid_frozen", "head_rows90")
ROWS_FROZEN = 0.9   # head_rows90: the share of the head's output rows kept


def available(names) -> list[BenchNet]:
    return [NETWORKS[n] for n in names if NETWORKS[n].path.exists()]


def param_layers(net) -> list[str]:
    return [l.name for l in net.layers if any(net.params[u.param].learnable for u in l.params)]


def scenario_rules(net, scenario: str) -> list[tuple[str, str]]:
    layers = param_layers(net)
    if scenario == "full":
        return []
    if scenario == "head":
        return [("freeze", "*"), ("unfreeze", layers[-1])]
    if scenario == "top3":
        return [("freeze", "*")] + [("unfreeze", n) for n in layers[-3:]]
    if scenario == "mid_frozen":
        return [("freeze", layers[len(layers) // 2])]
    if scenario == "head_rows90":
        head = net.layer(layers[-1])
        rows = []
        for u in head.params:
            if net.params[u.param].learnable:
                n = net.params[u.param].type.shape[0]
                rows.append(("freeze", f"{u.param}[0:{min(n - 1, round(ROWS_FROZEN * n))}]"))
        return scenario_rules(net, "head") + rows
    raise ValueError(scenario)
