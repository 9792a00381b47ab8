"""A one-line progress bar on stderr (redrawn in place on a terminal, one line per epoch
otherwise), so training output stays readable in logs."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, stream=None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def batch(self, epoch: int, epochs: int, k: int, n: int, loss: float, rate: float) -> None:
        if not self.tty:
            return
        filled = int(self.width * k / n)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\repoch {epoch}/{epochs} [{bar}] {k}/{n}  loss {loss:.4f}  "
                          f"{rate:,.0f} samples/s ")
        self.stream.flush()

    def epoch(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
