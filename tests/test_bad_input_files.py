"""fsutil.write_atomic keeps what a write must not change: a symlink stays a link (its
target gets the content), a device is refused, permissions follow the old file or the
umask, and temporary files of killed saves are removed by the next save."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from bwplan.errors import FileError
from bwplan.fsutil import check_writable, write_atomic


def test_a_symlink_is_written_through(tmp_path):
    real = tmp_path / "real.npz"
    real.write_text("old")
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_special_file_is_refused(tmp_path):
    """A FIFO stands for any non-regular file (/dev/null as root): it is refused, never
    replaced. The test uses its own FIFO so that it cannot damage /dev/null when run
    against a version that would replace it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match="not a regular file"):
        write_atomic(fifo, b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(FileError, match="it is a directory"):
        write_atomic(tmp_path, b"x")
    with pytest.raises(FileError, match="not a regular file"):
        check_writable(str(fifo), "--out")


def test_modes_follow_the_old_file_or_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("x")
        os.chmod(kept, 0o640)
        write_atomic(kept, "y")
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o640 and kept.read_text() == "y"
    finally:
        os.umask(old)


def test_hard_links_keep_the_old_content(tmp_path):
    """The documented choice: the path gets a new file; other names keep the old one."""
    a = tmp_path / "a.txt"
    a.write_text("old")
    os.link(a, tmp_path / "b.txt")
    write_atomic(a, "new")
    assert a.read_text() == "new" and (tmp_path / "b.txt").read_text() == "old"


def test_temporaries_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    target = tmp_path / "w.npz"
    code = ("import os, tempfile; fd, p = tempfile.mkstemp(prefix='.w.npz.%d.' % os.getpid(),"
            f" suffix='.tmp', dir={str(tmp_path)!r}); os.write(fd, b'x' * 100); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)   # exits before its rename
    stale = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1
    mine = tmp_path / f".w.npz.{os.getpid()}.live.tmp"   # a save still in progress
    mine.write_text("x")
    write_atomic(target, b"data")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["w.npz", mine.name])


def test_check_writable_names_the_option(tmp_path):
    with pytest.raises(FileError, match="does not exist") as err:
        check_writable(str(tmp_path / "missing" / "x.npz"), "--out")
    assert err.value.span.path == "--out"
    check_writable(str(tmp_path / "fine.npz"), "--out")
