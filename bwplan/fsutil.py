"""Atomic file writes: write beside the target, flush to disk, then rename over it, so an
interrupted write never leaves a truncated file where the user's file was."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bwplan.errors import FileError
from bwplan.source import Span


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    target = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent)
        try:
            with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise FileError(Span.whole(str(path)), f"cannot write: {err.strerror}") from None
