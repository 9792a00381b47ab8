"""The CUDA target's kernel table: (op, component) -> source file, kernel, launch geometry.

The CUDA C lives in cuda/ at the top of the checkout (<prefix>/share/bwplan/cuda when
installed), one file per op family plus common.cuh. Each op's `OpDef.kernels["cuda"]`
names the kernel of every component as "<family>.<kernel>" (the file cuda/<family>.cu).
Most kernels need no launch code: default.py launches them by the default of their
component kind, binding their arguments by the names of their C parameters. The family
modules here hold rows (LAUNCH, keyed by (op, component)) only for the exceptions, with
the calling convention of the CPU kernels except that tensors are device addresses and
the result is a list of `Launch` records instead of work done:

    fwd(ctx, inputs, params, out, aux, training, env) -> [Launch]
    dx(ctx, saved, dout, index, out, accumulate, env) -> [Launch]
    dw(ctx, saved, dout, out, accumulate, env)        -> [Launch]

A gradient rule that splits by output rows (`GradRule.by_rows`: linear and conv2d dW and
dB) also has a sliced form, for a partly frozen parameter: its family module's ROWS row,

    dw_rows(ctx, saved, dout, out, accumulate, rows, env) -> [Launch]

computes only the trainable `rows` ((start, stop) ranges of the leading axis) of `out`
and leaves the others untouched; ROWS_KERNELS lists its kernels, ROWS_WORKSPACE its
split-K workspace (ctx, rows, env) -> bytes.

`accumulate` asks the kernel to add to `out` instead of overwriting it; `env`
(limits.Env) carries the device's multiprocessor count, the workspace (split-K partial
sums, the state of SSD's matching; a kernel's WORKSPACE row sizes it) and the dropout step
counter. Nothing here imports PyCUDA or needs a GPU: `bwplan compile --target cuda` and
the tests use it to generate and check sources on any machine.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from bwplan import ops as registry
from bwplan.errors import BwError, InternalError
from bwplan.kernels.cuda import conv, elementwise, linear, loss, norm, pool, shape, update
from bwplan.kernels.cuda import activation, broadcast, embed, reduction, spatial_norm
from bwplan.kernels.cuda import spatial
from bwplan.kernels.cuda import unpool
from bwplan.kernels.cuda import stochastic
from bwplan.kernels.cuda.default import default_launch
from bwplan.kernels.cuda.limits import Env, Launch, check

# family -> its launch module; the file is cuda/<family>.cu
FAMILIES = MappingProxyType({"conv": conv, "linear": linear, "elementwise": elementwise,
                             "pool": pool, "norm": norm, "shape": shape, "loss": loss,
                             "activation": activation, "reduction": reduction,
                             "broadcast": broadcast, "embed": embed,
                             "spatial_norm": spatial_norm, "spatial": spatial,
                             "unpool": unpool, "stochastic": stochastic})
COMMON = "common.cuh"
# the runtime's own kernels (optimizer step, seeds, gradient sums), not an op's
RUNTIME_SOURCE = "update.cu"
RUNTIME_KERNELS = update.KERNELS


@dataclass(frozen=True, slots=True)
class KernelEntry:
    op: str
    component: str
    source: str                       # file name in cuda/
    kernel: str                       # the extern "C" name the registry gives
    launch: Callable[..., list[Launch]]
    also: tuple[str, ...] = ()        # further kernels its launches may use (split-K)
    workspace: Callable[[object, Env], int] | None = None
    # the sliced form for a partly frozen parameter (None: the rule does not split by rows)
    rows: Callable[..., list[Launch]] | None = None
    rows_kernels: tuple[str, ...] = ()
    rows_workspace: Callable[[object, tuple, Env], int] | None = None

    @property
    def kernels(self) -> tuple[str, ...]:
        """Every kernel the entry's launches may use, whole or sliced."""
        return tuple(dict.fromkeys((self.kernel,) + self.also + self.rows_kernels))

    def kernels_for(self, sliced: bool) -> tuple[str, ...]:
        """The kernels of the whole form, or of the sliced form (a partly frozen
        parameter's dW)."""
        return self.rows_kernels if sliced else (self.kernel,) + self.also


def _entry(op_name: str, component: str) -> KernelEntry:
    op = registry.OPS[op_name]
    name = op.kernels.get("cuda", {}).get(component)
    if name is None:
        raise InternalError(f"no cuda kernel registered for {op_name} {component}")
    family, _, kernel = name.partition(".")
    module = FAMILIES.get(family)
    if module is None:
        raise InternalError(f"the cuda kernel {name} of {op_name} {component} is in no "
                            "family of bwplan/kernels/cuda")
    key, source = (op_name, component), f"{family}.cu"
    launch = getattr(module, "LAUNCH", {}).get(key) or default_launch(op, component, source,
                                                                        kernel)
    return KernelEntry(op_name, component, source, kernel, launch,
                       getattr(module, "ALSO", {}).get(key, ()),
                       getattr(module, "WORKSPACE", {}).get(key),
                       getattr(module, "ROWS", {}).get(key),
                       getattr(module, "ROWS_KERNELS", {}).get(key, ()),
                       getattr(module, "ROWS_WORKSPACE", {}).get(key))


def require_kernels(net) -> None:
    """A BwError at the first layer whose op has no cuda kernels, before anything is
    lowered."""
    for layer in net.layers:
        if "cuda" not in registry.OPS[layer.op].kernels:
            raise BwError(layer.span, f"the cuda target has no kernels for '{layer.name}' "
                          f"({layer.op}); run this net on the cpu target")


def _table() -> MappingProxyType:
    table = {}
    for op in registry.OPS.values():
        for component in op.kernels.get("cuda", {}):
            table[(op.name, component)] = _entry(op.name, component)
    return MappingProxyType(table)


# (op, component) -> KernelEntry, for every cuda kernel the registry names
TABLE = _table()


def entry(op_name: str, component: str) -> KernelEntry:
    found = TABLE.get((op_name, component))
    return found if found is not None else _entry(op_name, component)


def _checked(launched: list[Launch], allowed: tuple[str, ...], who: str) -> list[Launch]:
    """`launched`, each launch checked against the device limits and against the kernels
    `who` (an entry, or its sliced form) may use."""
    for launch in launched:
        if launch.kernel not in allowed:
            raise InternalError(f"{who} launches {launch.kernel}, which its entry does not "
                                "list")
        check(launch)
    return launched


def launches(entry_: KernelEntry, *args) -> list[Launch]:
    """The entry's launches for these arguments, each checked against the device limits
    and against the kernels the entry may use."""
    return _checked(entry_.launch(*args), entry_.kernels, f"{entry_.op} {entry_.component}")


def rows_launches(entry_: KernelEntry, ctx, saved, dout, out: int, accumulate: bool,
                  rows: tuple[tuple[int, int], ...], env: Env) -> list[Launch]:
    """The sliced form's launches (only `rows` of `out` written), checked like `launches`."""
    if entry_.rows is None:
        raise InternalError(f"{entry_.op} {entry_.component} has no sliced cuda kernel "
                            "(a ROWS row in its family module), yet its rows are frozen")
    return _checked(entry_.rows(ctx, saved, dout, out, accumulate, rows, env),
                    entry_.rows_kernels, f"{entry_.op} {entry_.component} (rows)")


__all__ = ["COMMON", "FAMILIES", "KernelEntry", "TABLE", "entry", "launches", "rows_launches",
           "Env", "Launch"]
