"""The loss-curve PNG of `bwplan train --plot` (needs matplotlib: pip install -e ".[plot]")."""
from __future__ import annotations

import io

from bwplan.errors import BwError
from bwplan.fsutil import write_atomic
from bwplan.source import Span


def plot_history(history, path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BwError(Span.synthetic("--plot"), "--plot needs matplotlib",
                      'pip install -e ".[plot]"') from None
    epochs = [r.epoch for r in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r.loss for r in history], marker="o", label="train loss")
    if any(r.val_loss is not None for r in history):
        ax.plot(epochs, [r.val_loss for r in history], marker="s", label="validation loss")
    for epoch, label in stage_marks(history):
        ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (epoch - 0.5, 0.98), xycoords=("data", "axes fraction"),
                    rotation=90, ha="right", va="top", fontsize=7, color="grey")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def stage_marks(history) -> list[tuple[int, str]]:
    """(epoch, its new rules) where gradual unfreezing or the schedule changed the
    freezing rules before that epoch."""
    return [(rec.epoch, ", ".join(f"{verb} {pattern}" for verb, pattern in
                                  rec.rules[len(prev.rules):]))
            for prev, rec in zip(history, history[1:]) if rec.rules != prev.rules]
