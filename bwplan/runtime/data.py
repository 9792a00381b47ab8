"""Data sets for `bwplan train`: an `.npz` file whose arrays are named after the net's inputs
(e.g. `image`, `label`), optionally with validation arrays named `val/<input>`; and the
scikit-learn digits set exported in that form, for a demo that needs no download."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from bwplan.errors import BwError, DataError
from bwplan.fsutil import write_atomic
from bwplan.runtime.weights import NpzArchive
from bwplan.source import Span


@dataclass(frozen=True)
class Dataset:
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    # the arrays of unbatched inputs: each goes whole with every batch
    whole: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return len(next(v for k, v in self.train.items() if k not in self.whole))

    def rows(self, arrays: Mapping[str, np.ndarray], idx) -> dict[str, np.ndarray]:
        """The samples `idx` (indices or a slice) of a split; unbatched arrays whole."""
        return {k: v if k in self.whole else v[idx] for k, v in arrays.items()}

    def batches(self, batch: int, rng: np.random.Generator | None
                ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(sample indices, batch) pairs over one epoch, shuffled when rng is given; the
        last batch may be smaller."""
        order = rng.permutation(self.size) if rng is not None else np.arange(self.size)
        for start in range(0, self.size, batch):
            idx = np.sort(order[start:start + batch])
            yield idx, self.rows(self.train, idx)


def load_dataset(path: str, inputs: list[str],
                 shapes: Mapping[str, tuple[int, ...]] | None = None,
                 unbatched: frozenset[str] = frozenset()) -> Dataset:
    """Reads only the arrays of the net's inputs (and their val/ twins). shapes: the net's
    declared input shapes; arrays must match them but for the batch dimension (checked
    here, so that the error names the data file). unbatched: inputs without a batch axis,
    whose arrays match their shapes exactly and go whole with every batch."""
    with NpzArchive(path, "data file") as archive:
        missing = [n for n in inputs if n not in archive]
        if missing:
            raise DataError(Span.whole(path), "the data file lacks arrays for the net's "
                            "inputs: " + ", ".join(missing),
                            "arrays in the file: " + ", ".join(sorted(archive.names)))
        arrays = {n: archive.read(n) for n in inputs + [f"val/{n}" for n in inputs]
                  if n in archive}
    scalar = [n for n, v in arrays.items() if v.ndim == 0]
    if scalar:
        raise DataError(Span.whole(path), f"array '{scalar[0]}' is a single value (0-d): "
                        "a data array holds one sample per row")
    train = {n: arrays[n] for n in inputs}
    batched = {n: v for n, v in train.items() if n not in unbatched}
    if not batched:
        raise DataError(Span.whole(path), "every input of the net is unbatched: the data "
                        "file has no samples to take batches of")
    sizes = {len(v) for v in batched.values()}
    if len(sizes) != 1:
        raise DataError(Span.whole(path), "the input arrays differ in length: " +
                        ", ".join(f"{n}: {len(v)}" for n, v in batched.items()))
    val = {n: arrays[f"val/{n}"] for n in inputs if f"val/{n}" in arrays}
    for name, want in (shapes or {}).items():
        for key, arr in ((name, train.get(name)), (f"val/{name}", val.get(name))):
            whole = name in unbatched
            if arr is not None and (arr.ndim != len(want) or arr.shape[1:] != tuple(want[1:])
                                    or whole and arr.shape != tuple(want)):
                expected = ", ".join(["N"] * (not whole) + [str(d) for d in want[not whole:]])
                raise DataError(Span.whole(path), f"array '{key}' has shape {list(arr.shape)}; "
                                f"the net's input '{name}' is [{expected}]" +
                                (" (unbatched: the whole array goes with every batch)"
                                 if whole else ""))
    if val:     # an unbatched input is the same for validation unless val/ says otherwise
        val.update({n: train[n] for n in unbatched if n in train and n not in val})
    if val and len(val) != len(inputs):
        raise DataError(Span.whole(path), "validation arrays must cover every input")
    return Dataset(train, val, frozenset(unbatched) & set(inputs))


def digits(classes: list[int], val_fraction: float = 0.2, seed: int = 0,
           relabel: bool = True) -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits restricted to `classes`, as image f32[N, 1, 8, 8] in [0, 1]
    and label i64[N] (renumbered 0..k-1 in the order of `classes` when relabel)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise BwError(Span.synthetic("data"), "the digits data set comes with scikit-learn, "
                      "which is not installed", 'pip install -e ".[demo]"') from None
    d = load_digits()
    keep = np.isin(d.target, classes)
    images = (d.images[keep] / 16.0).astype(np.float32)[:, None]
    labels = d.target[keep]
    if relabel:
        labels = np.searchsorted(np.array(classes), labels) if classes == sorted(classes) else \
            np.array([classes.index(int(t)) for t in labels])
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_val = int(round(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return {"image": images[train], "label": labels[train],
            "val/image": images[val], "val/label": labels[val]}


def save_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def random_batch(net, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch of random data at the net's declared input shapes (`compile --profile`):
    floats standard normal; integer inputs (labels) below the class count of the layers
    that read them (at least 2)."""
    from bwplan.runtime.backend import numpy_dtype
    rng = np.random.default_rng(seed)
    batch = {}
    for inp in net.inputs:
        dtype = numpy_dtype(inp.type.dtype)
        if np.issubdtype(dtype, np.integer):
            high = 2
            for e in net.consumers(inp.name):
                shape = net.tensor_type(net.layer(e.dst).inputs[0].src).shape
                high = max(high, shape[1] if len(shape) > 1 else 2)
            batch[inp.name] = rng.integers(0, high, inp.type.shape).astype(dtype)
        else:
            batch[inp.name] = rng.standard_normal(inp.type.shape).astype(dtype)
    return batch
