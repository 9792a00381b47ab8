"""The library's front door: `bwplan.compile` turns a network into a `CompiledNet` that
runs the forward pass, only the backward work the plan kept, and the parameter update.

    prog = bwplan.compile("examples/frozen_backbone.bw", target="cpu")
    prog.set_optimizer(lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss = prog.step({"image": x, "label": y})
    prog.grads                      # the gradients this step computed, by parameter
    prog.save_weights("tuned.npz")
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from bwplan.errors import BwError
from bwplan.frontend import ast
from bwplan.frontend.import_warning import ImportWarning
from bwplan.frontend.load import Loaded, load_module
from bwplan.ir.build import build
from bwplan.ir.net import Net
from bwplan.lower.program import Program
from bwplan.lower.schedule import lower_inference
from bwplan.plan.plan import Plan, make_plan
from bwplan.plan.policy import apply_policy
from bwplan.runtime.backend import numpy_dtype
from bwplan.runtime.checks import label_problem
from bwplan.runtime.executor import StepResult, StepStats
from bwplan.runtime.init import initial_params
from bwplan.optim import SgdSettings
from bwplan.runtime.optimizer import Sgd
from bwplan.runtime.target import Target, target_class
from bwplan.source import Span


class BatchError(BwError):
    """A batch that does not match the net's inputs."""


def _rules(freeze: Iterable[str], unfreeze: Iterable[str]) -> list[tuple[str, str]]:
    return [("freeze", p) for p in freeze] + [("unfreeze", p) for p in unfreeze]


def compile(source: str | Loaded, target: str = "cpu", freeze: Iterable[str] = (),
            unfreeze: Iterable[str] = (), rules: Iterable[tuple[str, str]] | None = None,
            prune: bool = True, seed: int = 0, caffe_options: Mapping | None = None,
            onnx_options: Mapping | None = None) -> "CompiledNet":
    """Compile a .bw / .prototxt / .onnx file (or .bw source text) for `target` ("cpu";
    "reference" for the NumPy references; "cuda" for one GPU). `freeze`/`unfreeze` are
    globs on layer names (freezes first), or give `rules` as ordered (action, glob) pairs.
    An ONNX model starts from its own weights; `onnx_options` may give `input_shapes`
    ({input: shape}, for dynamic axes) and `loss` (see docs/onnx.md). `source` may also be
    what `bwplan.frontend.load.load_module` returned (the options are then its own)."""
    loaded = (source if isinstance(source, Loaded)
              else load_module(source, caffe_options, onnx_options))
    order = list(rules) if rules is not None else _rules(freeze, unfreeze)
    net = CompiledNet(loaded.module, target, order, prune, seed, loaded.weights)
    net.warnings = loaded.warnings
    return net


class CompiledNet:
    """source -> Net -> Plan -> Program, run by a target (bwplan/runtime/target.py) that
    holds the parameters: `target` is the target's name, `runtime` the target itself."""

    def __init__(self, module: ast.Module, target: str, rules, prune: bool, seed: int,
                 weights: Mapping[str, np.ndarray] | None = None) -> None:
        target_cls = target_class(target)
        self.module = module
        self.target = target
        self.prune = prune
        self.seed = seed
        self.rules = list(rules)
        self.net: Net = apply_policy(build(module), self.rules)
        target_cls.check_net(self.net)
        self.plan: Plan = make_plan(self.net)
        self.program: Program = self.plan.program(prune)   # the one the plan's figures read
        self._imported_weights = weights or {}   # an imported model's own weights
        self.runtime: Target = target_cls(self._initial_params, seed)
        self.optimizer = Sgd(update=self.runtime.update_kernel)
        self.grads: dict[str, np.ndarray] = {}
        self.last_stats: StepStats | None = None
        self.last_program: Program | None = None
        self.last_cached = False   # whether the last step read its frozen prefix from a cache
        self.steps_taken = 0
        self._executors: dict[tuple, object] = {}   # prepared programs, by (mode, batch)
        # a bwplan.runtime.distributed.DataParallel when training data-parallel
        self.data_parallel = None
        # the importer's warnings (a Caffe net's differences, an ONNX model's notes)
        self.warnings: tuple[ImportWarning, ...] = ()

    def _initial_params(self) -> dict[str, np.ndarray]:
        params = initial_params(self.net, self.seed)
        for name, value in self._imported_weights.items():
            params[name][...] = value
        return params

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The parameters, by name, on the host; initialised (seeded) when first read (on
        the host targets), so that planning and `compile` never allocate them."""
        return self.runtime.params

    @params.setter
    def params(self, value: dict[str, np.ndarray]) -> None:
        self.runtime.params = value

    # ---- configuration -----------------------------------------------------------------
    def set_optimizer(self, lr: float = 0.01, momentum: float = 0.9,
                      weight_decay: float = 0.0) -> None:
        velocity = self.optimizer.velocity
        self.optimizer = Sgd(SgdSettings(lr, momentum, weight_decay), self.optimizer.update)
        self.optimizer.velocity = velocity
        self.runtime.set_optimizer(self.optimizer.settings)

    def replan(self, rules: Iterable[tuple[str, str]]) -> None:
        """Apply a new freezing scheme (gradual unfreezing): re-plan and re-lower; the
        parameters, optimizer state and every compiled kernel are kept."""
        self.rules = list(rules)
        self.net = apply_policy(build(self.module), self.rules)
        self.plan = make_plan(self.net)
        self.program = self.plan.program(self.prune)
        self._executors.clear()
        self.runtime.forget()

    def load_weights(self, path: str, rename: Mapping[str, str] | None = None,
                     skip: Iterable[str] = (), strict: bool = True) -> dict[str, str]:
        return self.runtime.load_weights(path, rename, skip, strict)

    def save_weights(self, path: str) -> None:
        self.runtime.save_weights(path)

    # ---- artifacts (bwplan/artifacts.py: the files `bwplan compile` writes) --------------
    def plan_json(self) -> str:
        """The plan as `explain --format json` prints it (the artifact's plan.json)."""
        from bwplan.explain.json_report import render_json
        return render_json(self.plan)

    def program_json(self) -> str:
        """The program a training step runs, as JSON (the artifact's schedule.json)."""
        from bwplan.lower.program_json import render_program_json
        return render_program_json(self.program)

    # ---- running -----------------------------------------------------------------------
    def step(self, batch: Mapping[str, np.ndarray],
             given: Mapping[str, np.ndarray] | None = None) -> float:
        """One training step: forward, the planned backward, the update. Returns the
        weighted sum of the losses. `given` supplies the frozen prefix's boundary tensors
        (from `prefix_outputs`), whose layers are then not run."""
        result = self.run_step(batch, given)
        return result.loss

    def run_step(self, batch, given=None, capture: tuple[str, ...] = ()) -> StepResult:
        dp = self.data_parallel
        if dp is not None and dp.is_empty(batch):
            return dp.empty_step(self)
        batch = self._check(batch)
        prepared = self._executor(batch, "train")
        result, self.grads = self.runtime.step(
            prepared, batch, self.optimizer, seed=self.seed * 1_000_003 + self.steps_taken,
            given=given, capture=capture, prefix_skip=self._prefix_skip, data_parallel=dp)
        self.last_stats = result.stats
        self.last_program = prepared.program
        self.last_cached = bool(given)
        self.steps_taken += 1
        return result

    def forward(self, batch: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
                training: bool = False) -> dict[str, np.ndarray]:
        """Run the forward pass only and return the requested layer outputs (default: the
        losses, metrics and every layer nothing consumes)."""
        batch = self._check(batch)
        names = tuple(outputs) if outputs is not None else None
        prepared = self._executor(batch, ("infer", names))
        return self.runtime.forward(prepared, batch, training, self.seed, names)

    def prefix_outputs(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The frozen prefix's boundary tensors for this batch, to cache and pass back to
        `step(batch, given=...)` in later epochs."""
        prefix = self.plan.prefix
        if not prefix.cacheable:
            raise BwError(Span.synthetic("cache"), "the frozen prefix cannot be cached: " +
                          prefix.reason)
        return self.forward(batch, prefix.boundary)

    # ---- internals ---------------------------------------------------------------------
    def _prefix_skip(self, given) -> frozenset[str]:
        prefix = self.plan.prefix
        if not prefix.cacheable:
            raise BwError(Span.synthetic("cache"), "the frozen prefix cannot be cached: " +
                          prefix.reason)
        if any(self.plan.layer(n).has_backward for n in prefix.layers):
            raise BwError(Span.synthetic("cache"), "an input asks for its gradient through "
                          "the frozen prefix, so the prefix must run every step")
        missing = set(prefix.boundary) - set(given)
        if missing:
            raise BatchError(Span.synthetic("cache"), "cached prefix lacks " +
                             ", ".join(sorted(missing)))
        return frozenset(prefix.layers)

    def _check(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        names = [i.name for i in self.net.inputs]
        missing = [n for n in names if n not in batch]
        extra = [k for k in batch if k not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if extra:
                parts.append("unknown " + ", ".join(extra))
            raise BatchError(Span.synthetic("batch"), "the batch does not match the net's "
                             "inputs: " + "; ".join(parts), "inputs: " + ", ".join(names))
        batch_sizes = set()
        for inp in self.net.inputs:
            arr = np.asarray(batch[inp.name])
            want = inp.type.shape
            if arr.ndim != len(want) or tuple(arr.shape[1:]) != tuple(want[1:]) or (
                    not inp.batched and tuple(arr.shape) != tuple(want)):
                raise BatchError(Span.synthetic("batch"), f"input '{inp.name}' has shape "
                                 f"{list(arr.shape)}, the net expects {list(want)}" +
                                 ("" if inp.batched else " (it has no batch axis)"))
            dtype = numpy_dtype(inp.type.dtype)
            if arr.dtype.kind not in "fiu":
                raise BatchError(Span.synthetic("batch"), f"input '{inp.name}' must hold "
                                 f"real numbers, got {arr.dtype}")
            if arr.dtype != dtype:
                if np.issubdtype(dtype, np.integer) and not np.issubdtype(arr.dtype, np.integer):
                    raise BatchError(Span.synthetic("batch"), f"input '{inp.name}' must hold "
                                     f"integers ({inp.type.dtype}), got {arr.dtype}")
                arr = arr.astype(dtype)
            if arr.dtype.kind in "iu":
                problem = label_problem(self.net, inp.name, arr)
                if problem:
                    raise BatchError(Span.synthetic("batch"), f"input '{inp.name}' holds "
                                     + problem[0], problem[1])
            out[inp.name] = np.ascontiguousarray(arr)
            if arr.ndim and inp.batched:
                batch_sizes.add(arr.shape[0])
        if len(batch_sizes) > 1:
            raise BatchError(Span.synthetic("batch"), "inputs disagree on the batch size: " +
                             ", ".join(map(str, sorted(batch_sizes))))
        return out

    def _executor(self, batch, mode):
        """The program for this batch size and mode, prepared by the target (cached)."""
        n = next((batch[i.name].shape[0] for i in self.net.inputs
                  if i.batched and batch[i.name].ndim), None)
        key = (mode, n)
        ex = self._executors.get(key)
        if ex is not None:
            return ex
        declared = next((i.type.shape[0] for i in self.net.inputs
                         if i.batched and i.type.shape), None)
        if n is None or n == declared:
            plan = self.plan
        else:
            plan = make_plan(apply_policy(build(_with_batch(self.module, n)), self.rules))
        if mode == "train":
            program = plan.program(self.prune)
        else:
            program = lower_inference(plan, mode[1])
        ex = self.runtime.prepare(program)
        self._executors[key] = ex
        return ex


def _with_batch(module: ast.Module, n: int) -> ast.Module:
    """The same network with every batched input's leading dimension set to n."""
    statements = tuple(
        replace(s, type=s.type.with_shape(n, *s.type.shape[1:]))
        if isinstance(s, ast.InputDecl) and s.type.shape and s.batched else s
        for s in module.statements)
    return ast.Module(module.path, statements)
