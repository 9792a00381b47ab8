"""A one-line progress bar on stderr (redrawn in place on a terminal, one line per epoch
otherwise), so training output stays readable in logs."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, stream=None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.compiled = 0

    def batch(self, epoch: int, epochs: int, k: int, n: int, loss: float, rate: float) -> None:
        if not self.tty:
            return
        filled = int(self.width * k / n)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\repoch {epoch}/{epochs} [{bar}] {k}/{n}  loss {loss:.4f}  "
                          f"{rate:,.0f} samples/s ")
        self.stream.flush()

    def compiling(self, count: int, name: str) -> None:
        """A kernel finished compiling (count: in the process): the notice once, then (on
        a terminal) how many compiled so far."""
        self.compiled += 1
        if self.tty:
            self.stream.write(f"\r\033[Kcompiling kernels (first run only)… {self.compiled} "
                              f"done ({name})")
        elif self.compiled == 1:
            self.stream.write("compiling kernels (first run only)…\n")
        self.stream.flush()

    def epoch(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
