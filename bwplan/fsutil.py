"""Atomic file writes: write beside the target, flush to disk, then rename over it, so an
interrupted write never leaves a truncated file where the user's file was.

What a write does to what is already there:
- a symbolic link is followed: the file it points to is replaced and the link stays;
- anything that is not a regular file (a device such as /dev/null, a directory, a FIFO)
  is refused, never replaced;
- the new file keeps the old file's permission bits, or for a new file gets the bits the
  umask gives (0666 & ~umask), as `open` would;
- a file with other hard links: the path gets the new content as a new file and the other
  names keep the old content. Keeping the links would need an in-place write, which an
  interruption could leave truncated; a save that cannot be torn matters more here.
- a save killed before its rename leaves `.NAME.PID.XXXX.tmp`; the next save of NAME
  removes those whose process is gone.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

from bwplan.errors import FileError
from bwplan.source import Span

# Temporary files of unknown owner are removed once they are this old.
_STALE_SECONDS = 600


def _target(path: str | os.PathLike) -> Path:
    """The file a write to `path` lands in: symbolic links resolved."""
    return Path(os.path.realpath(path))


def _refuse_special(target: Path, shown: str) -> os.stat_result | None:
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FileError(Span.whole(shown), f"cannot write: it is {kind}",
                        "name a new or regular file")
    return st


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_writable(path: str, option: str) -> None:
    """Fail now, before hours of training, if `path` cannot be written later."""
    target = _target(path)
    _refuse_special(target, path)
    parent = target.parent
    if not parent.is_dir():
        raise FileError(Span.synthetic(option), f"cannot write '{path}': the directory "
                        f"'{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and
                                                    not os.access(target, os.W_OK)):
        raise FileError(Span.synthetic(option), f"cannot write '{path}': permission denied")


def _remove_stale(target: Path) -> None:
    pattern = re.compile(r"^\." + re.escape(target.name) + r"\.(?:(\d+)\.)?[^/]*\.tmp$")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if m.group(1) is not None:
                pid = int(m.group(1))
                if pid == os.getpid() or _alive(pid):
                    continue
            elif time.time() - entry.stat().st_mtime < _STALE_SECONDS:
                continue
            os.unlink(entry.path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    target = _target(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        old = _refuse_special(target, str(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=target.parent)
        try:
            os.fchmod(fd, stat.S_IMODE(old.st_mode) if old else _new_file_mode())
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
