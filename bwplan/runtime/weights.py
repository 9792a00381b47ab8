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
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in params.items()})
    write_atomic(path, buf.getvalue())


def read_weights(path: str, kind: str = "weight") -> dict[str, np.ndarray]:
    """The arrays of an .npz file; kind names the file in errors ("weight", "data")."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise FileError(Span.whole(path), f"no such {kind} file") from None
    except OSError as err:
        raise FileError(Span.whole(path), f"cannot read the {kind} file ({err.strerror})") \
            from None
    if not head.startswith((b"PK", b"\x93NUMPY")):
        # np.load would take it for a pickle and talk about allow_pickle
        text = bool(head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        raise FileError(Span.whole(path), f"not a readable .npz {kind} file"
                        + (": it holds text" if text else ""),
                        "a network (.bw, .prototxt) goes first on the command line; the "
                        f"{kind} file is an .npz of named arrays" if text else None)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise FileError(Span.whole(path), f"not a readable .npz {kind} file ({err})") from None


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
    data = read_weights(path)
    rename = dict(rename or {})
    skip = list(skip)
    problems: list[str] = []
    loaded: dict[str, str] = {}
    for name, value in params.items():
        if any(fnmatch.fnmatchcase(name, s) for s in skip):
            continue
        key = _file_key(name, rename)
        if key not in data:
            if strict:
                problems.append(f"  {name}: no array '{key}' in the file")
            continue
        arr = data[key]
        if arr.shape != value.shape:
            problems.append(f"  {name}: the net needs shape {list(value.shape)}, '{key}' in the "
                            f"file has {list(arr.shape)}")
            continue
        loaded[name] = key
    if problems:
        unused = sorted(set(data) - set(loaded.values()))
        hint = ("unused arrays in the file: " + ", ".join(unused[:8]) +
                (" ..." if len(unused) > 8 else "")) if unused else None
        raise WeightsError(Span.whole(path), f"{len(problems)} parameter(s) cannot be loaded:\n"
                           + "\n".join(problems), hint)
    for name, key in loaded.items():
        params[name][...] = data[key]
    return loaded
