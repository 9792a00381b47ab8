"""Benchmark output: a Markdown table, JSON, and a PNG chart."""
from __future__ import annotations

import io
import json


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


COLUMNS = ("net", "scenario", "batch", "fwd GFLOP", "bwd GFLOP full / planned",
           "dX+dW kernels full / pruned", "step ms pruned (min-max)", "step ms full",
           "step ms torch eager / channels_last / compile", "step saved (FLOP model)",
           "bwd saved (FLOP model)", "bwd efficiency", "fwd share", "peak MiB pruned / estimate",
           "kept MiB bwplan / torch", "pruned / torch best: wall (p10-p90), cpu [best]",
           "pruned / torch eager: wall (p10-p90), cpu", "alone: ms bwplan / torch (ratio)",
           "load avg start / end")


def _ratio(r: dict | None) -> str:
    if not r:
        return "-"
    w, c = r["wall"], r["cpu"]
    return f"{w['median']:.2f} ({w['p10']:.2f}-{w['p90']:.2f}), {c['median']:.2f}"


def _torch_ms(st: dict) -> str:
    return " / ".join(f"{st[k]['median']:.1f}" if k in st else "-"
                      for k in ("torch_eager", "torch_channels_last", "torch_compile"))


def _row(r: dict) -> list[str]:
    f, st, sv, k = r["flops"], r["step_ms"], r["saving"], r["kernels"]
    torch_ms = _torch_ms(st)
    best = f"{_ratio(r['vs_torch_best'])} [{r['torch_best']}]" if "vs_torch_best" in r else "-"
    load = (f"{r['load_average']['start'][0]:.1f} / {r['load_average']['end'][0]:.1f}"
            if "load_average" in r else "-")
    alone = (f"{st['bwplan_alone']['median']:.1f} / {st['torch_alone']['median']:.1f} "
             f"({r['vs_torch_alone']:.2f})" if "torch_alone" in st else "-")
    return [
        r["net"], r["scenario"], str(r["batch"]), f"{f['forward'] / 1e9:.2f}",
        f"{f['backward_full'] / 1e9:.2f} / {f['backward_planned'] / 1e9:.2f}",
        f"{k['full']['dx'] + k['full']['dw']} / {k['pruned']['dx'] + k['pruned']['dw']}",
        f"{st['pruned']['median']:.1f} ({st['pruned']['min']:.1f}-{st['pruned']['max']:.1f})",
        f"{st['full']['median']:.1f}", torch_ms,
        f"{_pct(sv['measured_step'])} ({_pct(sv['flop_step'])})",
        f"{_pct(sv['measured_backward'])} ({_pct(sv['flop_backward'])})",
        _pct(sv["efficiency_backward"]), _pct(r["forward_share"]),
        f"{_mib(r['peak_bytes']['pruned'])} / {_mib(r['peak_bytes']['planned_estimate'])}",
        f"{_mib(r['kept_bytes']['planned'])} / {_mib(r['kept_bytes']['torch_saved'])}",
        best, _ratio(r.get("vs_torch_eager")), alone, load,
    ]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_json(path, payload) -> None:
    from bwplan.fsutil import write_atomic
    write_atomic(path, json.dumps(payload, indent=1) + "\n")


def chart(rows: list[dict], path) -> bool:
    """Step time and activation bytes kept for the backward, per case: bwplan pruned and
    unpruned, PyTorch (interleaved, and alone where measured). False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from bwplan.fsutil import write_atomic
    labels = [f"{r['net']}\n{r['scenario']}" for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(2, 1, figsize=(max(9, len(rows) * 0.8), 9), dpi=100)
    xs = list(range(len(rows)))
    series = (("pruned", "bwplan"), ("full", "bwplan --no-prune"),
              ("torch_eager", "PyTorch eager"), ("torch_channels_last", "PyTorch channels_last"),
              ("torch_compile", "PyTorch compile"), ("bwplan_alone", "bwplan alone"),
              ("torch_alone", "PyTorch alone (best variant)"))
    width = 0.8 / len(series)
    for i, (key, name) in enumerate(series):
        times = [r["step_ms"][key]["median"] if key in r["step_ms"] else 0 for r in rows]
        ax_t.bar([x + (i - len(series) // 2) * width for x in xs], times, width, label=name)
    ax_t.set_ylabel("step time, ms (median)")
    ax_t.legend(fontsize=8)
    kept = (("planned", "bwplan"), ("full", "bwplan --no-prune"), ("torch_saved", "PyTorch"))
    width = 0.8 / len(kept)
    for i, (key, name) in enumerate(kept):
        mem = [(r["kept_bytes"][key] or 0) / 2**20 for r in rows]
        ax_m.bar([x + (i - 1) * width for x in xs], mem, width, label=name)
    ax_m.set_ylabel("activations kept for the backward, MiB")
    ax_m.legend(fontsize=8)
    for ax in (ax_t, ax_m):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return True


def extras_markdown(extras: dict) -> str:
    out = []
    if extras.get("cache"):
        out += ["", "Frozen-prefix cache (head scenario, epoch seconds):", "",
                "| net | prefix layers | uncached epoch | first cached epoch | cached epochs |",
                "| --- | --- | --- | --- | --- |"]
        for c in extras["cache"]:
            out.append(f"| {c['net']} | {c['prefix_layers']} | "
                       f"{min(c['epoch_s_uncached']):.3f} | {c['epoch_s_first_cached']:.3f} | "
                       f"{min(c['epoch_s_cached']):.3f} |")
    for g in extras.get("gradual", []):
        out += ["", f"Gradual unfreezing ({g['net']}): one more unit per stage", "",
                "| stage | unfrozen | dW kernels | re-plan ms | first step ms | new kernels |",
                "| --- | --- | --- | --- | --- | --- |"]
        for k, st in enumerate(g["stages"]):
            last = st["unfrozen"][-1] if st["unfrozen"] else "(all frozen)"
            out.append(f"| {k} | {last} | {st['dw_kernels']} | {st['replan_ms']:.1f} | "
                       f"{st['first_step_ms']:.1f} | {st['new_compilations']} |")
    for c in extras.get("caffe_time", []):
        out += ["", f"Against `caffe time` ({c['net']}; Caffe's figures from its logs):", "",
                "| case | batch | Caffe fwd ms | bwplan fwd ms | Caffe bwd ms | bwplan bwd ms |",
                "| --- | --- | --- | --- | --- | --- |"]
        for x in c["cases"]:
            out.append(f"| {x['case']} | {x['batch']} | {x['caffe_forward_ms']:.1f} | "
                       f"{x['bwplan_forward_ms']:.1f} | {x['caffe_backward_ms']:.1f} | "
                       f"{x['bwplan_backward_ms']:.1f} |")
    return "\n".join(out) + ("\n" if out else "")


def targets(rows: list[dict]) -> str:
    """The CPU target's benchmark goals, each marked met or not from the rows."""
    lines = ["", "Targets:"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    eff = [(r, r["saving"]["efficiency_backward"]) for r in rows
           if r["saving"]["efficiency_backward"] is not None]
    low = [f"{r['net']}/{r['scenario']} {100 * e:.0f}%" for r, e in eff if e < 0.9]
    lines.append(f"- backward time saved >= 90% of the FLOP model's backward saving: "
                 f"{verdict(not low)} ({len(eff) - len(low)} of {len(eff)} cases reach it"
                 + (f"; below: {', '.join(low)})" if low else ")"))
    head = [r for r in rows if r["scenario"] == "head"]
    over = [f"{r['net']} {_mib(r['kept_measured'])} vs {_mib(r['kept_bytes']['planned'])} MiB"
            for r in head if r["kept_measured"] > 1.1 * r["kept_bytes"]["planned"] + 4096]
    peak_over = [r["net"] for r in head
                 if r["peak_bytes"]["pruned"] > 1.1 * r["peak_bytes"]["planned_estimate"]]
    lines.append(f"- frozen-backbone (head) run: activations surviving the forward <= planned "
                 f"kept bytes + 10%: {verdict(not over)}"
                 + (f" ({'; '.join(over)})" if over else "")
                 + f"; peak <= the plan's peak estimate + 10%: {verdict(not peak_over)}")
    mid = [r for r in rows if r["scenario"] == "mid_frozen" and r["kept_bytes"]["torch_saved"]]
    not_below = [f"{r['net']} {_mib(r['kept_bytes']['planned'])} vs "
                 f"{_mib(r['kept_bytes']['torch_saved'])} MiB" for r in mid
                 # a few bytes (PyTorch's saved loss scalar) do not make it "below"
                 if r["kept_bytes"]["planned"] >= r["kept_bytes"]["torch_saved"] - 1024]
    lines.append(f"- middle-frozen: activations kept for the backward below PyTorch's: "
                 f"{verdict(not not_below)} ({len(mid) - len(not_below)} of {len(mid)} cases"
                 + (f"; not below: {', '.join(not_below)})" if not_below else ")"))
    lines += _speed_targets(rows, verdict)
    return "\n".join(lines) + "\n"


# the step-time goals: bwplan pruned at most these times PyTorch (median paired wall ratio)
SPEED_TARGETS = (("vs_torch_best", 1.0, "PyTorch at its best"),
                 ("vs_torch_eager", 0.8, "PyTorch's default NCHW eager"))


def _speed_targets(rows: list[dict], verdict) -> list[str]:
    lines = []
    for key, bound, what in SPEED_TARGETS:
        have = [r for r in rows if key in r]
        if not have:
            continue
        wall = [r[key]["wall"]["median"] for r in have]
        cpu = [r[key]["cpu"]["median"] for r in have]
        over = [f"{r['net']}/{r['scenario']} {r[key]['wall']['median']:.2f}" for r in have
                if r[key]["wall"]["median"] > bound]
        lines.append(f"- pruned step <= {bound:.1f}x {what} (median paired wall ratio, "
                     f"interleaved): {verdict(not over)} ({len(have) - len(over)} of "
                     f"{len(have)} cases; wall {min(wall):.2f}-{max(wall):.2f}, CPU time "
                     f"{min(cpu):.2f}-{max(cpu):.2f}" + (f"; over: {', '.join(over)})"
                                                         if over else ")"))
    alone = [r["vs_torch_alone"] for r in rows if "vs_torch_alone" in r]
    if alone:
        lines.append(f"- each alone, against the winning PyTorch variant: "
                     f"{verdict(max(alone) <= 1.0)} (ratio {min(alone):.2f}-{max(alone):.2f})")
    return lines
