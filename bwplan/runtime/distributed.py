"""Data-parallel training over MPI (mpi4py): each rank runs the planned step on its shard of
every global batch, and only the gradients the plan computes travel.

What it does:
- `world()` gives the communicator when `mpiexec` started several processes (None
  otherwise); `guarded(comm, fn, ...)` runs a command so that a rank that fails prints
  "rank R of N failed: <cause>" and aborts the whole job (MPI_Abort) instead of leaving the
  others waiting; ranks other than 0 print nothing else.
- `DataParallel(prog, comm)` attaches to a CompiledNet. Every rank takes the contiguous shard
  `np.array_split` gives it of each global batch; each loss seed is scaled by the shard's
  share of the batch (every loss op averages over its batch), so the sum over ranks of the
  shard gradients is the global-batch gradient and the all-reduce is a plain sum. The
  gradient buckets come from `bwplan.lower.buckets` (built once per plan, rebuilt and
  announced when the plan changes); a bucket's `Iallreduce` starts right after the backward
  step that completes it, later steps poll MPI so it progresses, and the update of each
  bucket's parameters waits for that bucket alone. Decay-only parameters update locally.
  A gradient that travels whole lives in its bucket's buffer (the dW kernels write there);
  a partly frozen one keeps its own array, and only its trainable rows are copied into the
  bucket before the all-reduce and back after it.
- Running statistics (BatchNorm mean/var) are averaged over the ranks every step (weighted
  by shard size), so every rank holds the same parameters after every step; the
  normalisation itself uses each shard's own batch statistics (as PyTorch DDP without
  SyncBatchNorm). Weighted layers that are not loss ops sum over their batch, so their
  seeds are not scaled.

The cuda target runs the same bucket code: its gradients are copied to the host arrays
`begin` points at the buckets, and `finish` hands each summed bucket back to the device
(bwplan/runtime/cuda_exchange.py); it reaches this module only through `bucket_ready`,
`progress` and `finish`.

What it does not do: CUDA-aware MPI (device buffers handed to MPI), a softmax loss with
`ignore_label` normalised over the global count of valid labels (each shard normalises by
its own count, as DDP does), or dropout masks equal to a one-process run's (each rank draws its shard's mask from the same seed).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from bwplan import ops as registry
from bwplan.errors import BwError, InternalError
from bwplan.lower.buckets import DEFAULT_CAP_BYTES, BucketPlan, gradient_buckets
from bwplan.lower.program import Program
from bwplan.runtime.backend import numpy_dtype
from bwplan.runtime.data import Dataset
from bwplan.runtime.executor import StepResult, StepStats
from bwplan.source import Span

# what launchers set: MPICH/Hydra and Intel MPI (PMI_SIZE), Open MPI, PMIx launchers
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
DEFAULT_TIMEOUT_S = 300.0
_SPIN_S = 0.02   # how long a wait polls without sleeping


class DistributedError(BwError):
    """A data-parallel job that cannot go on: a setting the ranks cannot share, ranks that
    disagree, or a rank that stopped answering."""


def _error(what: str, message: str, hint: str | None = None) -> DistributedError:
    return DistributedError(Span.synthetic(what), message, hint)


def launched_size() -> int:
    """How many processes the launcher started (1 when not under mpiexec)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


_WORLD: list = []   # the one Communicator of this process, once made


def world(timeout_s: float | None = None) -> "Communicator | None":
    size = launched_size()
    if size <= 1:
        return None
    if _WORLD:
        return _WORLD[0]
    try:
        from mpi4py import MPI
    except ImportError:
        raise _error("mpiexec", f"started by mpiexec with {size} processes, but mpi4py is "
                     "not installed", 'pip install -e ".[mpi]"') from None
    comm = Communicator(MPI.COMM_WORLD, timeout_s)
    # ranks on one machine share its cores: each runs its kernels on its part of them
    local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    from bwplan.kernels.cpu.threads import available_cores
    os.environ.setdefault("BWPLAN_THREADS", str(max(1, available_cores() // local)))
    _WORLD.append(comm)
    return comm


class Communicator:
    """COMM_WORLD with waits that give up: every collective here is nonblocking, and a wait
    longer than `timeout_s` (env BWPLAN_MPI_TIMEOUT, default 300 s) raises instead of
    hanging on a rank that stopped."""

    def __init__(self, comm, timeout_s: float | None = None) -> None:
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        env = os.environ.get("BWPLAN_MPI_TIMEOUT", "")
        self.timeout_s = timeout_s or (float(env) if env else DEFAULT_TIMEOUT_S)

    def iallreduce(self, buf: np.ndarray):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def progress(self, requests) -> None:
        """Let outstanding collectives advance (MPICH progresses only inside MPI calls)."""
        if requests:
            self.MPI.Request.Testall(requests)

    def wait(self, request, what: str) -> float:
        """Wait for one request; returns the seconds spent waiting."""
        start = time.perf_counter()
        while not request.Test():
            elapsed = time.perf_counter() - start
            if elapsed > self.timeout_s:
                raise _error("mpi", f"waited {elapsed:.0f} s for {what}: another rank "
                             "stopped answering", "set BWPLAN_MPI_TIMEOUT to wait longer")
            # spin first: a sleeping rank on a busy machine may get its core back only
            # milliseconds after the data arrived; after a while, leave the core to others
            if elapsed > _SPIN_S:
                time.sleep(100e-6)
        return time.perf_counter() - start

    def broadcast(self, arrays: Mapping[str, np.ndarray], what: str) -> None:
        """Rank 0's arrays, in place, on every rank."""
        for name in sorted(arrays):
            buf = arrays[name]
            if not buf.flags.c_contiguous:
                raise _error("mpi", f"{name} is not contiguous")
            self.wait(self.comm.Ibcast(buf, root=0), f"{what} ({name})")

    def gather_digest(self, text: bytes, what: str) -> list[bytes]:
        """Every rank's SHA-256 of `text`, by rank."""
        mine = np.frombuffer(hashlib.sha256(text).digest(), np.uint8).copy()
        out = np.empty((self.size, mine.size), np.uint8)
        self.wait(self.comm.Iallgather(mine, out), what)
        return [bytes(row) for row in out]

    def check_same(self, text: bytes, what: str, hint: str | None = None) -> None:
        """Fail unless every rank passed the same `text`."""
        digests = self.gather_digest(text, what)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise _error("mpi", f"rank{'s' if len(differ) > 1 else ''} "
                         f"{', '.join(map(str, differ))} disagree{'' if len(differ) > 1 else 's'}"
                         f" with rank 0 on {what}", hint)

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


# ---- running a command on every rank ------------------------------------------------------
def guarded(comm: Communicator, fn: Callable[..., int], *args, debug: bool = False) -> int:
    """Run fn(*args) on this rank. Ranks other than 0 print nothing, except their own
    failure; a failure on any rank (an exception or a non-zero status) prints the rank and
    the cause and aborts every rank with status 2 (a bad input) or 3 (a bug)."""
    from bwplan.diagnostics import format_error
    err_stream = sys.stderr
    quiet = comm.rank != 0
    try:
        with _silenced(quiet):
            code = fn(*args)
        if code == 0:
            return 0
        cause, status = f"exit status {code}", code
    except BwError as err:
        cause, status = format_error(err), 2
    except KeyboardInterrupt:
        cause, status = "interrupted", 130
    except Exception as err:     # noqa: BLE001 - any failure must end every rank
        if debug:
            import traceback
            traceback.print_exc(file=err_stream)
        cause = f"{type(err).__name__}: {err}"
        if isinstance(err, InternalError):
            cause = f"internal error: {err} (this is a bug in bwplan; rerun with --debug)"
        status = 3
    if quiet:
        # when rank 0 fails the same way, its abort usually arrives first: one message
        time.sleep(0.5)
    print(f"bwplan: rank {comm.rank} of {comm.size} failed: {cause}", file=err_stream,
          flush=True)
    sys.stdout.flush()
    # the launcher forwards a rank's output asynchronously; an abort at once can kill the
    # processes before the message reaches it (seen under load: an empty stderr)
    time.sleep(0.3)
    comm.abort(status)
    return status


@contextlib.contextmanager
def _silenced(quiet: bool):
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        yield


# ---- the data-parallel step --------------------------------------------------------------
def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """This rank's contiguous part of n samples, as np.array_split divides them."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class ShardedDataset(Dataset):
    """The same data set; each global batch yields only this rank's shard."""

    dp: "DataParallel | None" = None

    def batches(self, batch, rng):
        for idx, b in super().batches(batch, rng):
            lo, hi = shard_bounds(len(idx), self.dp.comm.rank, self.dp.comm.size)
            yield idx[lo:hi], self.dp.local(b)


@dataclass
class CommStats:
    """What the data-parallel steps sent and waited for."""

    steps: int = 0
    bytes_per_step: int = 0       # gradient buckets + running statistics + the loss
    gradient_bytes: int = 0
    buckets: int = 0
    wait_seconds: float = 0.0     # total time the updates spent blocked on the network
    last_wait_seconds: float = 0.0
    # time.perf_counter() when the last update began (CLOCK_MONOTONIC on Linux: the same
    # clock in every process of one machine, so ranks' skew can be measured)
    last_ready: float = 0.0
    rebuilds: int = 0


@dataclass
class _Bound:
    """A Program's buckets with their flat buffers and where each starts."""

    program: Program
    buckets: BucketPlan
    buffers: list[np.ndarray]
    views: dict[str, tuple[str, np.ndarray]]             # param -> (grads|scaled, view)
    # per bucket, its partly frozen entries: (entry, the gradient's own array)
    packed: dict[int, list[tuple]]
    ready: dict[int, list[int]]                          # backward step -> buckets to start
    seed_role: dict[str, bool]                           # loss layer -> averages its batch
    local_updates: tuple = ()                            # updates with nothing to wait for
    bucket_updates: list[tuple] = field(default_factory=list)
    statistics: tuple[str, ...] = ()                     # running statistics to average


class DataParallel:
    """Attach with `DataParallel(prog, comm)`; then `prog.run_step(dp.local(batch))` or
    `train(prog, dp.shard(data, batch), ...)` on every rank."""

    def __init__(self, prog, comm: Communicator, cap_bytes: int = DEFAULT_CAP_BYTES,
                 overlap: bool = True, announce: Callable[[str], None] | None = None) -> None:
        if prog.runtime.gradient_stores() is None:
            raise _error("--target", f"the {prog.target} target keeps its gradients where "
                         "MPI cannot reach them", "use --target cpu under mpiexec")
        self.prog = prog
        self.comm = comm
        self.cap_bytes = cap_bytes
        self.overlap = overlap
        self.announce = announce or (lambda text: print(text, file=sys.stderr))
        self.share = 1.0 / comm.size     # this rank's part of the current global batch
        self.stats = CommStats()
        self._bound: dict[int, _Bound] = {}
        self._buffers: dict[tuple, list[np.ndarray]] = {}
        self._layout: tuple | None = None
        self._current: _Bound | None = None
        self._pending: list = []
        self._started: list[tuple[int, object]] = []
        self._stat_request = None
        self._stat_buffer: np.ndarray | None = None
        prog.data_parallel = self

    # ---- setup ---------------------------------------------------------------------------
    def synchronise(self, data: Dataset | None = None) -> None:
        """Check that every rank compiled the same net (and read the same data), then give
        every rank rank 0's parameters."""
        prog = self.prog
        net = "\n".join(f"{n} {p.type} {p.learnable}" for n, p in prog.net.params.items())
        net += "\n" + "\n".join(f"{l.name} {l.op} {l.out}" for l in prog.net.layers)
        net += "\n" + repr(prog.rules) + repr(prog.prune)
        self.comm.check_same(net.encode(), "the network (layers, parameters, freezing)",
                             "every rank must read the same file with the same options")
        if data is not None:
            shapes = repr(sorted((k, v.shape, str(v.dtype)) for k, v in data.train.items()))
            self.comm.check_same(shapes.encode(), "the data (array names and shapes)",
                                 "every rank must read the same --data file")
        self.comm.broadcast(prog.params, "rank 0's initial parameters")
        self.check_parameters("the initial parameters")

    def check_parameters(self, what: str) -> None:
        """Fail unless every rank holds bit-identical parameters."""
        h = hashlib.sha256()
        for name in sorted(self.prog.params):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.prog.params[name]).tobytes())
        self.comm.check_same(h.digest(), what)

    def local(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This rank's contiguous shard of a global batch; its share scales the losses.
        An unbatched input (no batch axis) goes whole to every rank."""
        whole = {i.name for i in self.prog.net.inputs if not i.batched}
        n = len(next(v for k, v in batch.items() if k not in whole))
        lo, hi = shard_bounds(n, self.comm.rank, self.comm.size)
        self.share = (hi - lo) / n if n else 0.0
        return {k: v if k in whole else v[lo:hi] for k, v in batch.items()}

    def shard(self, data: Dataset, batch: int) -> ShardedDataset:
        if batch % self.comm.size:
            raise _error("--batch", f"the global batch {batch} does not divide evenly among "
                         f"{self.comm.size} processes",
                         f"use a multiple of {self.comm.size}, e.g. "
                         f"{max(1, batch // self.comm.size) * self.comm.size}")
        return ShardedDataset(data.train, data.val, data.whole, dp=self)

    # ---- hooks called by CompiledNet.run_step --------------------------------------------
    def is_empty(self, batch: Mapping[str, np.ndarray]) -> bool:
        """A shard with no samples (the last global batch smaller than the rank count)."""
        whole = {i.name for i in self.prog.net.inputs if not i.batched}
        return any(np.asarray(v).ndim and len(v) == 0 for k, v in batch.items()
                   if k not in whole)

    def begin(self, program: Program, grads: dict, scaled: dict) -> dict:
        """Point the gradients at the bucket buffers; returns the executor's hooks."""
        bound = self._bind(program)
        for param, (where, view) in bound.views.items():
            (grads if where == "grads" else scaled)[param] = view
        self._current = bound
        self.stats.buckets = len(bound.buckets.buckets)
        self.stats.gradient_bytes = bound.buckets.nbytes
        self._pending, self._started = [], []
        self._stat_request = None
        seed_scale = {name: (self.share if averages else 1.0)
                      for name, averages in bound.seed_role.items()}
        return {"after_step": self._after_step, "seed_scale": seed_scale}

    def update(self, result: StepResult, optimizer, params, grads, scaled
               ) -> tuple[StepResult, int]:
        """Apply the host optimizer's update as the buckets arrive; returns the step's
        result with the global loss, and the number of parameters updated."""
        bound = self._current
        return self.finish(
            result, params, lambda: optimizer.step(bound.local_updates, params, grads, scaled),
            lambda b: optimizer.step(bound.bucket_updates[b], params, grads, scaled))

    @property
    def statistics(self) -> tuple[str, ...]:
        """The running statistics this step averages (their names)."""
        return self._current.statistics if self._current else ()

    def progress(self) -> None:
        """Let the started all-reduces advance (while a device target copies buckets)."""
        self.comm.progress(self._pending)

    def bucket_ready(self, b: int) -> None:
        """Bucket b's gradients are all on the host (a device target copied them out):
        start its all-reduce, and let the others progress."""
        if self.overlap and all(b != k for k, _ in self._started):
            self._start(b)
        self.comm.progress(self._pending)

    def finish(self, result: StepResult, params, apply_local: Callable[[], int],
               apply_bucket: Callable[[int], int]) -> tuple[StepResult, int]:
        """The end of every data-parallel step, whichever target computed the gradients:
        start what has not started (the running statistics, read from `params`, the
        buckets, the losses), run `apply_local()` (the updates that wait for nothing), then
        per bucket as its sum arrives unpack it and run `apply_bucket(b)`; the statistics
        come back averaged into `params`. Returns the global result and what the applies
        counted."""
        self.stats.last_ready = time.perf_counter()
        bound = self._current
        self._start_statistics(params)
        for b in range(len(bound.buckets.buckets)):
            if all(b != k for k, _ in self._started):
                self._start(b)
        program = bound.program
        share = {n: (self.share if bound.seed_role.get(n, True) else 1.0)
                 for n, _ in program.losses}
        losses = np.array([result.losses.get(n, 0.0) * share[n] for n, _ in program.losses],
                          np.float64)
        loss_request = self.comm.iallreduce(losses)
        launched = apply_local()
        waited = 0.0
        for b, request in self._started:
            waited += self.comm.wait(request, f"the all-reduce of gradient bucket {b}")
            self._unpack(b)
            launched += apply_bucket(b)
        if self._stat_request is not None:
            waited += self.comm.wait(self._stat_request, "the running statistics")
            offset = 0
            for name in bound.statistics:
                size = params[name].size
                params[name][...] = self._stat_buffer[offset:offset + size].reshape(
                    params[name].shape)
                offset += size
        waited += self.comm.wait(loss_request, "the loss")
        self.stats.steps += 1
        self.stats.wait_seconds += waited
        self.stats.last_wait_seconds = waited
        self.stats.bytes_per_step = bound.buckets.nbytes + losses.nbytes + (
            0 if self._stat_buffer is None or not bound.statistics else self._stat_buffer.nbytes)
        global_losses = {n: float(v) for (n, _), v in zip(program.losses, losses)}
        loss = sum(w * global_losses[n] for n, w in program.losses)
        return replace(result, loss=loss, losses=global_losses), launched

    def empty_step(self, prog) -> StepResult:
        """A rank with no samples this step still joins every collective, with zeros."""
        bound = self._current or self._bind(prog.program)
        stores = prog.runtime.gradient_stores()
        self.begin(bound.program, stores.grads, stores.scaled)
        for buf in bound.buffers:
            buf.fill(0)
        for entries in bound.packed.values():
            for _, own in entries:
                own.fill(0)
        program = bound.program
        result = StepResult(0.0, {n: 0.0 for n, _ in program.losses}, {}, StepStats())
        computed = {s.param for s in program.backward if s.phase == "dw"}
        grads = {p: stores.grads[p] for p in computed if p in stores.grads}
        scaled = {p: stores.scaled[p] for p in computed if p in program.mixed_scale
                  and p in stores.scaled}
        if stores.device_update is not None:     # the zeros go to the device's update
            result, launched = stores.device_update(self, result)
        else:
            result, launched = self.update(result, prog.optimizer, prog.params, grads, scaled)
        result.stats.launched["update"] = launched
        prog.grads = grads
        prog.last_stats = result.stats
        prog.last_program = program
        prog.steps_taken += 1
        return result

    def bucket_plan(self, program: Program | None = None) -> BucketPlan:
        """The buckets of `program` (default: the last step's, else the compiled one)."""
        if program is None:
            return (self._current or self._bind(self.prog.program)).buckets
        return self._bind(program).buckets

    def bucket_buffers(self) -> list[np.ndarray]:
        """The last step's bucket buffers (after its update: the summed gradients)."""
        return list(self._current.buffers) if self._current else []

    # ---- internals -----------------------------------------------------------------------
    def _bind(self, program: Program) -> _Bound:
        bound = self._bound.get(id(program))
        if bound is not None and bound.program is program:
            return bound
        buckets = gradient_buckets(program, self.cap_bytes)
        layout = buckets.layout() + tuple((e.param, e.source) for b in buckets.buckets
                                          for e in b.entries)
        if layout != self._layout:
            self.comm.check_same(repr(layout).encode(), "the gradient buckets")
            if self._layout is not None:
                self.stats.rebuilds += 1
                self.announce(f"data-parallel: the plan changed, gradient buckets rebuilt: "
                              f"{summary(buckets)}")
            self._layout = layout
        buffers = self._buffers.get(layout)
        if buffers is None:
            buffers = [np.zeros(b.size, numpy_dtype(b.dtype)) for b in buckets.buckets]
            self._buffers[layout] = buffers
        views, ready = {}, {}
        packed: dict[int, list[tuple]] = {}
        for b, buf in zip(buckets.buckets, buffers):
            for e in b.entries:
                if e.rows:
                    own = np.zeros(e.shape, buf.dtype)
                    views[e.param] = (e.source, own)
                    packed.setdefault(b.index, []).append((e, own))
                else:
                    views[e.param] = (e.source,
                                      buf[e.offset:e.offset + e.size].reshape(e.shape))
            ready.setdefault(b.ready_after, []).append(b.index)
        net = program.plan.net
        seed_role = {n: registry.OPS[net.layer(n).op].role == "loss" for n, _ in program.losses}
        in_bucket = {p: b.index for b in buckets.buckets for p in (e.param for e in b.entries)}
        updates = [u for u in program.plan.updates if u.kind != "none"]
        statistics = tuple(
            name for name, p in net.params.items() if not p.learnable and any(
                registry.OPS[net.layer(layer).op].state_update_ref is not None
                for layer, _ in net.uses_of(name)))
        bound = _Bound(program, buckets, buffers, views, packed, ready, seed_role,
                       tuple(u for u in updates if u.param not in in_bucket),
                       [tuple(u for u in updates if in_bucket.get(u.param) == b.index)
                        for b in buckets.buckets], statistics)
        self._bound[id(program)] = bound
        return bound

    def _after_step(self, i: int) -> None:
        if i == 0:
            self._start_statistics(self.prog.params)
        if self.overlap:
            for b in self._current.ready.get(i, ()):
                self._start(b)
        self.comm.progress(self._pending)

    def _start(self, b: int) -> None:
        self._pack(b)
        request = self.comm.iallreduce(self._current.buffers[b])
        self._started.append((b, request))
        self._pending.append(request)

    def _pack(self, b: int) -> None:
        """Copy the trainable rows of bucket b's partly frozen gradients into it."""
        buf = self._current.buffers[b]
        for e, own in self._current.packed.get(b, ()):
            flat, at = own.reshape(-1), e.offset
            for lo, hi in e.rows:
                n = (hi - lo) * e.row_size
                buf[at:at + n] = flat[lo * e.row_size:hi * e.row_size]
                at += n

    def _unpack(self, b: int) -> None:
        """The summed rows back into the gradients' arrays (the frozen rows stay 0)."""
        buf = self._current.buffers[b]
        for e, own in self._current.packed.get(b, ()):
            flat, at = own.reshape(-1), e.offset
            for lo, hi in e.rows:
                n = (hi - lo) * e.row_size
                flat[lo * e.row_size:hi * e.row_size] = buf[at:at + n]
                at += n

    def _start_statistics(self, params) -> None:
        names = self._current.statistics
        if self._stat_request is not None or not names:
            return
        total = sum(params[n].size for n in names)
        if self._stat_buffer is None or self._stat_buffer.size != total:
            self._stat_buffer = np.empty(total, np.float64)
        offset = 0
        for n in names:
            # weighted by the shard's share: equal shards average, an empty one counts 0
            self._stat_buffer[offset:offset + params[n].size] = params[n].reshape(-1)
            self._stat_buffer[offset:offset + params[n].size] *= self.share
            offset += params[n].size
        self._stat_request = self.comm.iallreduce(self._stat_buffer)
        self._pending.append(self._stat_request)

    def profile_lines(self) -> list[str]:
        from bwplan.explain.units import nbytes
        s = self.stats
        mean = s.wait_seconds / max(1, s.steps)
        return [f"data-parallel: {self.comm.size} processes, {s.buckets} gradient buckets, "
                f"{nbytes(s.gradient_bytes)} of gradients ({nbytes(s.bytes_per_step)} in all)"
                f" all-reduced per step",
                f"  waiting on communication: {1e3 * mean:.2f} ms per step on average, "
                f"{1e3 * s.last_wait_seconds:.2f} ms in the last step, rank 0"]


def summary(buckets: BucketPlan) -> str:
    from bwplan.explain.units import nbytes
    if not buckets.buckets:
        return "nothing to send (no parameter gets a gradient)"
    return (f"{len(buckets.buckets)} bucket{'s' if len(buckets.buckets) > 1 else ''}, "
            f"{len(buckets.params)} gradients, {nbytes(buckets.nbytes)} per step")



def attach(prog, comm: Communicator, data: Dataset, batch: int,
           cap_bytes: int = DEFAULT_CAP_BYTES) -> tuple[DataParallel, ShardedDataset]:
    """What `bwplan train` does under mpiexec: attach, check the ranks agree, give them rank
    0's parameters, and shard the data; rank 0 says what each step will send."""
    if cap_bytes <= 0:
        raise _error("--bucket-kib", "the bucket size must be positive")
    if batch <= 0:
        raise _error("--batch", f"--batch must be positive, got {batch}")
    dp = DataParallel(prog, comm, cap_bytes)
    sharded = dp.shard(data, batch)
    dp.synchronise(data)
    pids = np.zeros(comm.size, np.int64)
    mine = np.array([os.getpid()], np.int64)
    comm.wait(comm.comm.Iallgather(mine, pids), "the process ids")
    buckets = dp.bucket_plan(prog.program)
    learnable = sum(p.type.nbytes for p in prog.net.params.values() if p.learnable)
    from bwplan.explain.units import nbytes
    dp.announce(f"data-parallel: {comm.size} processes (pids by rank: "
                f"{', '.join(map(str, pids))}), global batch {batch} = {comm.size} x "
                f"{batch // comm.size}; {summary(buckets)} (all learnable parameters: "
                f"{nbytes(learnable)})")
    return dp, sharded
