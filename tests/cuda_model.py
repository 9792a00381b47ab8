"""A NumPy model of the cuda target's device, for running its data-parallel step on a
machine without a GPU.

What is real: `CudaTarget`, the lowering (`data_parallel_step`: the launch list, where the
buckets become ready, their transfers' device addresses, the SGD segments and launch
arguments), the step's driver (bwplan/runtime/cuda_exchange.py) and the bucket code shared
with the cpu target (bwplan/runtime/distributed.py). What is modelled: the device memory
(flat float32 arrays at the layout's symbolic addresses), the compute kernels (the
reference executor runs the same Program; a dW launch makes its parameter's gradient
appear in device memory only when that launch is issued, and every gradient starts the
step as NaN, so a copy queued too early reads NaN), the copies (a copy lands one launch
after it is queued, or
when polled a second time, so the driver must wait for it) and `sgd_update` (its segments, in
NumPy, with the launch's own lr, momentum and weight decay). PyCUDA itself is never run.
Every call is logged in `ModelExecutor.log`, in the order the driver issued it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from bwplan.kernels.cuda import limits
from bwplan.lower import cuda_launches as step_plan
from bwplan.lower.cuda_arena import plan_arena
from bwplan.runtime import cuda as cuda_runtime
from bwplan.runtime.backend import BACKENDS
from bwplan.runtime.executor import Executor, StepResult

BASE = step_plan.HOST_BASE


class ModelParams:
    """CudaParams over host arrays: parameters, gradients, velocities, one flat each."""

    def __init__(self, dev, params) -> None:
        self.offsets, self.shapes, total = {}, {}, 0
        for name, value in params.items():
            self.offsets[name] = total
            self.shapes[name] = tuple(np.shape(value))
            total += int(np.size(value))
        self.count, self.nbytes = total, 12 * max(total, 1)
        self.flat = {kind: np.zeros(max(total, 1), np.float32)
                     for kind in ("params", "grads", "velocity")}
        self.params_base, self.grads_base, self.velocity_base = 2 * BASE, 3 * BASE, 4 * BASE
        self.upload(params)

    def size(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    def view(self, kind: str, name: str) -> np.ndarray:
        off = self.offsets[name]
        return self.flat[kind][off:off + self.size(name)].reshape(self.shapes[name])

    def upload(self, params) -> None:
        for name, value in params.items():
            self.view("params", name)[...] = value

    def _download(self, base: int, names) -> dict[str, np.ndarray]:
        kind = "params" if base == self.params_base else "grads"
        return {n: self.view(kind, n).copy() for n in names}

    def download(self) -> dict[str, np.ndarray]:
        return self._download(self.params_base, self.offsets)

    def download_grads(self, names) -> dict[str, np.ndarray]:
        return self._download(self.grads_base, names)


class ModelExecutor(cuda_runtime.CudaExecutor):
    """The executor with its device calls modelled; `data_parallel_step` and `_stats` are
    the real ones."""

    made: list = []
    shared_log: list | None = None    # one log for every executor (and a test's comm)

    def __init__(self, program, state, settings=None, dev=None, seed=0, source="program"):
        self.program, self.net, self.state = program, program.plan.net, state
        self.settings = settings or cuda_runtime.SgdSettings()
        sizes = {p: state.size(p) for p in state.offsets}
        layout = step_plan.host_layout(program, sizes, plan_arena(program),
                                       limits.DEFAULT_SM_COUNT)
        self.layout = dataclasses.replace(
            layout, param_offsets=dict(state.offsets), params_base=state.params_base,
            grads_base=state.grads_base, velocity_base=state.velocity_base)
        self.scaled = np.zeros(max(1, sum(sizes[p] for p in self.layout.scaled_offsets)),
                               np.float32)
        self.segments = step_plan.segment_table(program, self.layout, self.settings)
        self._lists, self._dp_steps, self.copy_stream = {}, {}, None
        self.reference = Executor(program, BACKENDS["reference"]())
        self.log: list[tuple] = [] if self.shared_log is None else self.shared_log
        self._landing: list[list] = []
        ModelExecutor.made.append(self)

    def set_optimizer(self, settings) -> None:
        self.settings = settings
        self.segments = step_plan.segment_table(self.program, self.layout, settings)
        self._lists.clear()
        self._dp_steps.clear()

    # ---- memory ------------------------------------------------------------------------
    def _at(self, addr: int, elems: int) -> np.ndarray:
        """The device memory at a byte address: a view of the flat array holding it."""
        regions = [(self.state.grads_base, self.state.flat["grads"]),
                   (self.state.params_base, self.state.flat["params"]),
                   (self.layout.scaled_base, self.scaled)]
        for base, flat in regions:
            if base <= addr < base + 4 * flat.size:
                assert (addr - base) % 4 == 0
                start = (addr - base) // 4
                assert start + elems <= flat.size, "a copy runs past its buffer"
                return flat[start:start + elems]
        raise AssertionError(f"address {addr:#x} is in no device buffer")

    # ---- the DeviceSide ----------------------------------------------------------------
    def upload_batch(self, batch) -> None:
        self.log.append(("upload_batch",))
        self._batch, self._result, self._scales = dict(batch), None, {}
        self.state.flat["grads"][:] = np.nan     # what a copy read before its dW would see
        self.scaled[:] = np.nan

    def launch(self, item) -> None:
        for marker in self._landing:
            marker[0] = True
        self._landing = []
        self.log.append(("launch", item.phase, item.layer))
        first = len(self.program.forward) + len(self.program.seeds)
        if item.phase == "seed":
            seed = next(s for s in self.program.seeds if s.layer == item.layer)
            fill, = item.launches
            self._scales[seed.layer] = float(fill.args[2]) / seed.weight
        elif item.phase in ("dx", "dw"):
            self._compute()
            i = next(k for k, entry in enumerate(self._dp_step_items) if entry is item)
            self._reveal(i - first)
        elif item.phase == "update":
            self._sgd(item)

    def _compute(self) -> None:
        if self._result is not None:
            return
        grads, scaled, self._written = {}, {}, {}
        program = self.program

        def after(i: int) -> None:
            step = program.backward[i]
            if step.phase == "dw":
                p = step.param
                self._written[i] = (p, grads[p].copy(),
                                    scaled[p].copy() if p in scaled else None)

        params = {n: self.state.view("params", n) for n in self.state.offsets}
        self._result = self.reference.run(self._batch, params, grads, scaled, training=True,
                                          after_step=after, seed_scale=self._scales)

    def _reveal(self, i: int) -> None:
        if i not in self._written:
            return
        p, g, s = self._written[i]
        self.state.view("grads", p)[...] = g
        if s is not None and p in self.layout.scaled_offsets:
            off = self.layout.scaled_offsets[p]
            self.scaled[off:off + s.size] = s.reshape(-1)

    def _sgd(self, item) -> None:
        """sgd_update of update.cu over the segment table, with the launch's arguments."""
        launch, = item.launches
        assert launch.kernel == "sgd_update" and launch.grid[1] == len(self.segments)
        lr, momentum, wd = (float(v) for v in launch.args[5:8])
        flat = self.state.flat
        for seg in self.segments:
            p = slice(seg["param_off"], seg["param_off"] + seg["size"])
            w = flat["params"][p]
            diff = np.float32(seg["decay"] * wd) * w
            if seg["source"] >= 0:
                src = flat["grads"] if seg["source"] == 0 else self.scaled
                q = slice(seg["source_off"], seg["source_off"] + seg["size"])
                diff = diff + np.float32(seg["grad_mult"]) * src[q]
            flat["velocity"][p] = np.float32(momentum) * flat["velocity"][p] + \
                np.float32(lr) * diff
            flat["params"][p] = w - flat["velocity"][p]

    def copy_out(self, transfers, hosts):
        self.log.append(("copy_out", tuple(t.param for t in transfers)))
        for t, host in zip(transfers, hosts):
            host.reshape(-1)[:] = self._at(t.device, t.elems)
        marker = [False]
        self._landing.append(marker)
        return marker

    def copied(self, marker) -> bool:
        landed = marker[0]
        marker[0] = True      # the device moves on: polled again, the copy has landed
        return landed

    def finish_compute(self) -> StepResult:
        self._compute()
        for marker in self._landing:
            marker[0] = True
        self.log.append(("finish_compute",))
        r = self._result
        return StepResult(r.loss, dict(r.losses), dict(r.metrics), self._stats(True))

    def copy_in(self, transfers, hosts) -> None:
        self.log.append(("copy_in", tuple(t.param for t in transfers)))
        for t, host in zip(transfers, hosts):
            self._at(t.device, t.elems)[:] = host.reshape(-1)

    def read_params(self, names):
        self.log.append(("read_params", tuple(names)))
        return self.state._download(self.state.params_base, names)

    def write_params(self, values) -> None:
        self.log.append(("write_params", tuple(values)))
        self.state.upload(values)

    def synchronize(self) -> None:
        self.log.append(("synchronize",))

    def data_parallel_step(self, buckets, seed_scale):
        step = super().data_parallel_step(buckets, seed_scale)
        self._dp_step_items = step.compute
        return step


def install(monkeypatch=None) -> None:
    """Put the model behind the cuda target (with pytest's monkeypatch, or for good in a
    subprocess)."""
    ModelExecutor.made, ModelExecutor.shared_log = [], None
    for name, value in (("device", lambda: None), ("CudaParams", ModelParams),
                        ("CudaExecutor", ModelExecutor)):
        if monkeypatch is not None:
            monkeypatch.setattr(cuda_runtime, name, value)
        else:
            setattr(cuda_runtime, name, value)


# ---- SSD's MultiBoxLoss kernels, modelled launch by launch ----------------------------------
# Written from the multibox section of cuda/loss.cu, with its block and thread structure
# where the decisions depend on it: a block's thread-strided scans, its butterfly (value,
# prior) reductions, the radix select's passes and the ordered compactions in chunks of the
# block. What is not the device's: exp and log are the host's libm (math.exp, math.log,
# as the cpu kernels call), and a block's float sums are added in prior order rather than in
# its reduction tree (both are well inside the 1e-6 the tests allow).
import math
import struct

FLT_MIN = float(np.finfo(np.float32).tiny)


class ByteMemory:
    """Device memory at byte addresses: regions of bytes (poisoned with 0xFF: a float read
    before it is written is NaN, an int -1), typed views into them."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, np.ndarray]] = []

    def add(self, base: int, nbytes: int) -> None:
        self.regions.append((base, np.full(max(nbytes, 8), 0xFF, np.uint8)))

    def view(self, addr: int, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        for base, raw in self.regions:
            if base <= addr < base + raw.size:
                off = addr - base
                assert off % dtype.itemsize == 0, "a misaligned pointer"
                assert off + count * dtype.itemsize <= raw.size, "a view runs past its region"
                return raw[off:off + count * dtype.itemsize].view(dtype)
        raise AssertionError(f"address {addr:#x} is in no device region")


def _args(launch) -> list:
    return [int(a) if isinstance(a, np.integer) else float(a) for a in launch.args]


def _kept_jaccard(a, b) -> float:
    """bw_kept_jaccard: the cpu kernel's expression, in doubles."""
    a0, a1, a2, a3 = (float(v) for v in a)
    b0, b1, b2, b3 = (float(v) for v in b)
    iw = min(a2, b2) - max(a0, b0)
    ih = min(a3, b3) - max(a1, b1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih

    def size(x0, y0, x1, y1):
        return 0.0 if (x1 < x0 or y1 < y0) else (x1 - x0) * (y1 - y0)
    v = inter / (size(a0, a1, a2, a3) + size(b0, b1, b2, b3) - inter)
    return v if v > 1e-6 else 0.0


def _softmax_parts(z) -> tuple[float, float]:
    top = float(z[0])
    for q in range(1, len(z)):
        top = float(z[q]) if float(z[q]) > top else top
    return top, sum(math.exp(float(v) - top) for v in z)


def _class_loss(z, q: int, top: float, total: float) -> float:
    prob = math.exp(float(z[q]) - top) / total
    return -math.log(FLT_MIN if FLT_MIN > prob else prob)


def order_key(v: float) -> int:
    """bw_order_key: a double's order as an unsigned 64-bit key, NaN lowest, -0 as +0."""
    if v != v:
        return 0
    if v == 0.0:
        v = 0.0
    bits = struct.unpack("<Q", struct.pack("<d", v))[0]
    return (~bits & (2**64 - 1)) if bits >> 63 else bits | (1 << 63)


def _better(v, i, ov, oi) -> tuple[float, int]:
    """bw_take_better"""
    if ov > v or (ov == v and oi >= 0 and (i < 0 or oi < i)):
        return ov, oi
    return v, i


def _butterfly(pairs: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """A warp's xor-shuffle reduction: after it every lane holds the warp's better pair."""
    for o in (16, 8, 4, 2, 1):
        pairs = [_better(*pairs[lane], *pairs[lane ^ o]) for lane in range(32)]
    return pairs


def block_argmax(bv: np.ndarray, unmatched: np.ndarray, threads: int) -> int:
    """The bipartite round's reduction: each thread's first largest bv > 0 of its strided
    priors, then the butterfly in each warp and across the warps' results."""
    p = bv.size
    pairs = []
    for t in range(threads):
        v, at = 0.0, -1
        for i in range(t, p, threads):
            if unmatched[i] and bv[i] > v:
                v, at = float(bv[i]), i
        pairs.append((v, at))
    warps = [_butterfly(pairs[w:w + 32])[0] for w in range(0, threads, 32)]
    lanes = warps + [(0.0, -1)] * (32 - len(warps))
    return _butterfly(lanes)[0][1]


def ordered_ranks(takes: list[bool], base: int) -> tuple[list[int], int]:
    """bw_ordered_rank over one chunk: each take's rank in thread order after `base`."""
    ranks, at = [], base
    for take in takes:
        ranks.append(at)
        at += bool(take)
    return ranks, at


class MultiboxModel:
    """The multibox kernels (and `fill`, which seeds the loss) run on a ByteMemory."""

    def __init__(self, mem: ByteMemory) -> None:
        self.mem = mem
        self.launched: list[str] = []

    def f32(self, addr, n):
        return self.mem.view(addr, np.float32, n)

    def f64(self, addr, n):
        return self.mem.view(addr, np.float64, n)

    def i32(self, addr, n):
        return self.mem.view(addr, np.int32, n)

    def run(self, launch) -> None:
        self.launched.append(launch.kernel)
        getattr(self, launch.kernel)(launch, *_args(launch))

    def fill(self, launch, dst, n, value):
        self.f32(dst, n)[:] = value

    def multibox_gather_gt(self, launch, gt, rows, num, use_difficult, background, gidx,
                           gcount):
        t = launch.block[0]
        table = self.f32(gt, 8 * rows).reshape(rows, 8)
        counts = self.i32(gcount, num + 1)
        for n in range(launch.grid[0]):
            base, bad = 0, False
            for r0 in range(0, rows, t):
                chunk = range(r0, min(r0 + t, rows))
                takes = [int(table[r, 0]) == n and (use_difficult or table[r, 7] == 0)
                         for r in chunk]
                bad |= any(int(table[r, 0]) >= num or (int(table[r, 0]) >= 0 and
                                                       int(table[r, 1]) == background)
                           for r in chunk)
                ranks, base = ordered_ranks(takes, base)
                for r, take, rank in zip(chunk, takes, ranks):
                    if take:
                        self.i32(gidx, num * rows)[n * rows + rank] = r
            counts[n] = base
            if n == 0:
                counts[num] = int(bad)

    def _box(self, gt, row):
        return self.f32(gt + 4 * (8 * int(row) + 3), 4)

    def multibox_overlaps(self, launch, priors, gt, gidx, gcount, rows, num, p, ov, bv, bj,
                          argall):
        pri = self.f32(priors, 4 * p).reshape(p, 4)
        idx, counts = self.i32(gidx, num * rows), self.i32(gcount, num + 1)
        o, b, j, a = (self.f64(ov, num * p), self.f64(bv, num * p), self.i32(bj, num * p),
                      self.i32(argall, num * p))
        for e in range(num * p):
            n, i = divmod(e, p)
            best, arg = 0.0, -1
            for k in range(counts[n]):
                v = _kept_jaccard(pri[i], self._box(gt, idx[n * rows + k]))
                if v > best:
                    best, arg = v, k
            o[e] = b[e] = best
            j[e] = a[e] = arg

    def multibox_bipartite(self, launch, priors, gt, gidx, gcount, rows, p, bv, bj, argall,
                           ov, match, used, per_prediction, threshold):
        t, num = launch.block[0], launch.grid[0]
        pri = self.f32(priors, 4 * p).reshape(p, 4)
        idx, counts = self.i32(gidx, num * rows), self.i32(gcount, num + 1)
        for n in range(num):
            g, sl = int(counts[n]), slice(n * p, (n + 1) * p)
            b, j, m = self.f64(bv, num * p)[sl], self.i32(bj, num * p)[sl], \
                self.i32(match, num * p)[sl]
            taken = self.i32(used, num * rows)[n * rows:n * rows + g]
            m[:] = -1
            taken[:] = 0
            for _ in range(g):
                at = block_argmax(b, m < 0, t)
                if at < 0:
                    break
                box = int(j[at])
                m[at] = box
                taken[box] = 1
                for i in range(p):
                    if m[i] >= 0 or j[i] != box:
                        continue
                    best, arg = 0.0, -1
                    for k in range(g):
                        if taken[k]:
                            continue
                        v = _kept_jaccard(pri[i], self._box(gt, idx[n * rows + k]))
                        if v > best:
                            best, arg = v, k
                    b[i], j[i] = best, arg
            if per_prediction:
                o, a = self.f64(ov, num * p)[sl], self.i32(argall, num * p)[sl]
                take = (m < 0) & (o > 0.0) & (o >= threshold)
                m[take] = a[take]

    def multibox_score(self, launch, loc, conf, priors, gt, gidx, rows, num, p, c,
                       background, mine, neg_overlap, match, ov, targets, labels, lsum,
                       closs):
        pri = self.f32(priors, 8 * p).reshape(2, p, 4)
        lo, z_all = self.f32(loc, 4 * num * p).reshape(-1, 4), \
            self.f32(conf, num * p * c).reshape(-1, c)
        idx, m_all, o = self.i32(gidx, num * rows), self.i32(match, num * p), \
            self.f64(ov, num * p)
        for e in range(num * p):
            n, i = divmod(e, p)
            m, z = int(m_all[e]), z_all[e]
            code, smooth, score, label = [0.0] * 4, 0.0, 0.0, -1
            if m >= 0:
                row = self.f32(gt + 4 * 8 * int(idx[n * rows + m]), 8)
                p0, p1, p2, p3 = (float(v) for v in pri[0, i])
                var = [float(v) for v in pri[1, i]]
                x0, y0, x1, y1 = (float(v) for v in row[3:7])
                pw, ph = p2 - p0, p3 - p1
                pcx, pcy = (p0 + p2) / 2, (p1 + p3) / 2
                bw, bh = x1 - x0, y1 - y0
                bcx, bcy = (x0 + x1) / 2, (y0 + y1) / 2
                code = [(bcx - pcx) / pw / var[0], (bcy - pcy) / ph / var[1],
                        math.log(bw / pw) / var[2], math.log(bh / ph) / var[3]]
                label = int(row[1])
                for k in range(4):
                    d = float(lo[e, k]) - code[k]
                    smooth += 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5
            candidate = m < 0 and mine and o[e] < neg_overlap
            if m >= 0 or candidate:
                score = _class_loss(z, label if m >= 0 else background, *_softmax_parts(z))
            if targets:
                self.f32(targets, 4 * num * p)[4 * e:4 * e + 4] = code
            if labels:
                self.f32(labels, num * p)[e] = label
            self.f64(lsum, num * p)[e] = smooth
            self.f64(closs, num * p)[e] = score

    def multibox_mine(self, launch, match, ov, lsum, closs, p, mine, neg_pos_ratio,
                      neg_overlap, background, labels, partial):
        t, num = launch.block[0], launch.grid[0]
        for n in range(num):
            sl = slice(n * p, (n + 1) * p)
            m, o = self.i32(match, num * p)[sl], self.f64(ov, num * p)[sl]
            ls, cl = self.f64(lsum, num * p)[sl], self.f64(closs, num * p)[sl]
            pos = int((m >= 0).sum())
            cand = (m < 0) & (o < neg_overlap)
            cands = int(cand.sum())
            keep = 0 if not mine else min(int(pos * neg_pos_ratio), cands)
            keys = [order_key(float(v)) for v in cl]
            prefix, mask, left = 0, 0, keep
            if 0 < keep < cands:
                for shift in range(56, -8, -8):
                    hist = [0] * 256
                    for i in range(p):
                        if cand[i] and (keys[i] & mask) == prefix:
                            hist[(keys[i] >> shift) & 255] += 1
                    d = 255
                    while d > 0 and hist[d] < left:
                        left -= hist[d]
                        d -= 1
                    prefix |= d << shift
                    mask |= 255 << shift
            every = keep >= cands
            base, loc_sum, conf_sum = 0, 0.0, 0.0
            for i0 in range(0, p, t):
                chunk = range(i0, min(i0 + t, p))
                ties = [bool(mine and cand[i] and not every and keep > 0
                             and keys[i] == prefix) for i in chunk]
                ranks, base = ordered_ranks(ties, base)
                for i, tie, rank in zip(chunk, ties, ranks):
                    if m[i] >= 0:
                        loc_sum += float(ls[i])
                        conf_sum += float(cl[i])
                    c = bool(mine and cand[i])
                    if c and (every or (keep > 0 and (keys[i] > prefix or
                                                      (tie and rank < left)))):
                        conf_sum += float(cl[i])
                        if labels:
                            self.f32(labels, num * p)[n * p + i] = background
            self.f64(partial, 3 * num)[3 * n:3 * n + 3] = (loc_sum, conf_sum, pos)

    def multibox_loss_fwd(self, launch, partial, gcount, num, p, normalization, loc_weight,
                          loss):
        parts = self.f64(partial, 3 * num).reshape(num, 3)
        loc_sum, conf_sum, pos = (float(v) for v in parts.sum(axis=0))
        from bwplan.ops.loss import NORMALIZATIONS, normalizer
        norm = normalizer(NORMALIZATIONS[normalization], num, num * p, int(pos))
        bad = self.i32(gcount, num + 1)[num]
        self.f32(loss, 1)[0] = math.nan if bad else (loc_weight * loc_sum + conf_sum) / norm

    def multibox_grad_scale(self, launch, labels, num, p, background, normalization, factor,
                            dout, scale):
        from bwplan.ops.loss import NORMALIZATIONS, normalizer
        lab = self.f32(labels, num * p)
        pos = int(((lab >= 0) & (lab != np.float32(background))).sum())
        norm = normalizer(NORMALIZATIONS[normalization], num, num * p, pos)
        self.f64(scale, 1)[0] = factor * float(self.f32(dout, 1)[0]) / norm

    def multibox_loss_dx_loc(self, launch, loc, targets, labels, background, scale, dx, n,
                             accumulate):
        s = float(self.f64(scale, 1)[0])
        lab = self.f32(labels, n // 4).astype(np.int64).repeat(4)
        d = self.f32(loc, n).astype(np.float64) - self.f32(targets, n).astype(np.float64)
        g = np.where(np.abs(d) < 1.0, d, np.sign(d)) * s
        g = np.where((lab >= 0) & (lab != background), g, 0.0).astype(np.float32)
        out = self.f32(dx, n)
        out[:] = out + g if accumulate else g

    def multibox_loss_dx_conf(self, launch, conf, labels, scale, dx, priors, c, accumulate):
        s = float(self.f64(scale, 1)[0])
        z_all, lab = self.f32(conf, priors * c).reshape(priors, c), self.f32(labels, priors)
        out = self.f32(dx, priors * c).reshape(priors, c)
        for e in range(priors):
            q_lab = int(lab[e])
            if q_lab < 0:
                g = np.zeros(c, np.float32)
            else:
                top, total = _softmax_parts(z_all[e])
                g = np.array([(math.exp(float(v) - top) / total - (q == q_lab)) * s
                              for q, v in enumerate(z_all[e])], np.float32)
            out[e] = out[e] + g if accumulate else g
