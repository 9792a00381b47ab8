"""Weight files: `.npz` archives keyed by parameter name.

Loading checks every name and shape and reports every problem at once. A rename map covers
net surgery: `{"left/*": "tower/*", "right/*": "tower/*"}` initialises two independent
towers from one pretrained tower (keys are patterns over the net's parameter names, values
the file names they read, `*` standing for the same text on both sides); `skip` names
parameters to leave as initialised (a new head). Saving writes beside the target and
renames, so an interrupted save never leaves a corrupt file.
"""
from __future__ import annotations

import fnmatch
import io
import math
import re
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np

from bwplan.errors import BwError, FileError
from bwplan.fsutil import write_atomic
from bwplan.source import Span


class WeightsError(BwError):
    """Names or shapes of a weight file that do not fit the net."""


def save_weights(path: str, params: Mapping[str, np.ndarray]) -> None:
    """Refuses non-finite values, so a diverged run never replaces a good file."""
    bad = [k for k, v in params.items() if not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise WeightsError(Span.whole(path), f"not written: {len(bad)} parameter(s) hold NaN "
                           "or infinite values: " + ", ".join(sorted(bad)[:8]))
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in params.items()})
    write_atomic(path, buf.getvalue())


class NpzArchive:
    """The arrays of an .npz file, read one at a time on request: the member list comes
    from the zip directory, and only the arrays asked for are decompressed. Each array's
    header is checked against the member's size before any memory is set aside for it, and
    only plain numeric arrays are read (no objects, records or strings)."""

    def __init__(self, path: str, what: str = "weight file") -> None:
        self.path, self.what = path, what
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise FileError(Span.whole(path), f"no such {what}") from None
        except IsADirectoryError:
            raise FileError(Span.whole(path), f"is a directory, not a {what}") from None
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            if self._holds_text():
                raise FileError(Span.whole(path), f"not a readable .npz {what}: it holds text",
                                "a network (.bw, .prototxt) goes first on the command line; "
                                f"the {what} is an .npz of named arrays") from None
            raise FileError(Span.whole(path), f"not a readable .npz {what} ({self._why(err)})",
                            "write it with numpy.savez") from None
        self._members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}

    def _why(self, err: Exception) -> str:
        try:
            with open(self.path, "rb") as f:
                head = f.read(6)
        except OSError:
            head = b""
        if not head:
            return "the file is empty"
        if head == b"\x93NUMPY":
            return "it is a single .npy array, not an .npz archive of named arrays"
        return str(err)

    def _holds_text(self) -> bool:
        """Whether the file starts with printable text: a .bw or .prototxt given where the
        arrays go."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(64)
        except OSError:
            return False
        return bool(head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head)

    def __enter__(self) -> "NpzArchive":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str) -> np.ndarray:
        member = self._members[name]
        size = self._zip.getinfo(member).file_size
        bad = FileError
        try:
            with self._zip.open(member) as f:
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = reader(f)
                if dtype.hasobject or dtype.names or dtype.kind not in "fiub":
                    raise bad(Span.whole(self.path), f"array '{name}' holds {dtype} values, "
                              "not numbers")
                if math.prod(shape) * dtype.itemsize > size:
                    raise bad(Span.whole(self.path), f"array '{name}' claims shape "
                              f"{list(shape)}, more than its {size:,} bytes hold")
            with self._zip.open(member) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise bad(Span.whole(self.path), f"array '{name}' cannot be read ({err})") from None


def read_weights(path: str, names: Iterable[str] | None = None,
                 what: str = "weight file") -> dict[str, np.ndarray]:
    """The named arrays of the file that it holds (every array when names is None)."""
    with NpzArchive(path, what) as archive:
        wanted = archive.names if names is None else [n for n in names if n in archive]
        return {n: archive.read(n) for n in wanted}


def _check_patterns(path: str, params: Mapping[str, np.ndarray], rename: Mapping[str, str],
                    skip: list[str]) -> None:
    """A --skip or --rename pattern that names no parameter is a typo, as for --freeze."""
    for option, patterns in (("--skip", skip), ("--rename", list(rename))):
        for glob in patterns:
            matches = _pattern(glob).match if option == "--rename" else (
                lambda n, g=glob: fnmatch.fnmatchcase(n, g))
            if not any(matches(n) for n in params):
                close = [n for n in params if glob.strip("*.") and glob.strip("*.") in n]
                raise WeightsError(Span.synthetic(option), f"'{glob}' matches no parameter "
                                   "of the net", "parameters: " + ", ".join(
                                       (close or sorted(params))[:8]))


def _pattern(glob: str) -> re.Pattern:
    parts = [re.escape(p) for p in glob.split("*")]
    return re.compile("^" + "(.*)".join(parts) + "$")


def _file_key(name: str, rename: Mapping[str, str]) -> str:
    for net_glob, file_glob in rename.items():
        m = _pattern(net_glob).match(name)
        if m:
            key = file_glob
            for group in m.groups():
                key = key.replace("*", group, 1)
            return key
    return name


def load_into(params: dict[str, np.ndarray], path: str, rename: Mapping[str, str] | None = None,
              skip: Iterable[str] = (), strict: bool = True) -> dict[str, str]:
    """Copy the file's arrays into `params` in place. Returns {param: file key} loaded.
    Missing parameters are an error unless `skip` matches them or strict is False; shape
    mismatches always are. Every problem is listed in one error."""
    rename = dict(rename or {})
    skip = list(skip)
    _check_patterns(path, params, rename, skip)
    with NpzArchive(path) as archive:
        wanted = {}
        for name in params:
            if not any(fnmatch.fnmatchcase(name, s) for s in skip):
                wanted[name] = _file_key(name, rename)
        data = {k: archive.read(k) for k in set(wanted.values()) if k in archive}
        in_file = archive.names
    problems: list[str] = []
    loaded: dict[str, str] = {}
    for name, key in wanted.items():
        value = params[name]
        if key not in data:
            if strict:
                problems.append(f"  {name}: no array '{key}' in the file")
            continue
        arr = data[key]
        if arr.shape != value.shape:
            problems.append(f"  {name}: the net needs shape {list(value.shape)}, '{key}' in the "
                            f"file has {list(arr.shape)}")
            continue
        if arr.dtype.kind == "b":
            problems.append(f"  {name}: '{key}' in the file holds booleans, not numbers")
            continue
        if not np.isfinite(arr).all():
            problems.append(f"  {name}: '{key}' in the file holds NaN or infinite values")
            continue
        loaded[name] = key
    if problems:
        unused = sorted(set(in_file) - set(loaded.values()))
        hint = ("unused arrays in the file: " + ", ".join(unused[:8]) +
                (" ..." if len(unused) > 8 else "")) if unused else None
        raise WeightsError(Span.whole(path), f"{len(problems)} parameter(s) cannot be loaded:\n"
                           + "\n".join(problems), hint)
    for name, key in loaded.items():
        params[name][...] = data[key]
    return loaded
