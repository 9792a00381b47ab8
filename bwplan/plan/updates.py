"""What the optimizer step does to each parameter, with Caffe's semantics: the update of a
parameter is lr * sum over uses of (use lr_mult * use gradient), plus weight decay
lr * decay_mult * weight_decay * w scaled by the parameter's lr multiplier; a parameter
whose every use has lr_mult 0 does not change at all (the decay is multiplied by 0 too), and
a trainable parameter that receives no gradient still decays."""
from __future__ import annotations


from bwplan.ir.net import Net
from bwplan.records import record


@record
class UseTerm:
    layer: str
    lr_mult: float
    computed: bool      # whether this use's gradient is computed


@record
class ParamUpdate:
    param: str
    kind: str                 # "sgd" | "decay_only" | "none"
    terms: tuple[UseTerm, ...]
    decay_lr_mult: float      # the lr multiplier that scales this parameter's decay
    decay_mult: float
    nbytes: int
    text: str
    # the [start, stop) leading-axis ranges the update touches; () for the whole tensor
    rows: tuple[tuple[int, int], ...] = ()
    # the bytes of the rows the update touches: what a data-parallel step must all-reduce
    sent_bytes: int = 0


def param_updates(net: Net, dw_needed: dict[tuple[str, str], bool]) -> tuple[ParamUpdate, ...]:
    out = []
    for name, param in net.params.items():
        uses = net.uses_of(name)
        if not param.learnable or not uses:
            continue
        terms = tuple(UseTerm(layer, u.lr_mult, dw_needed.get((layer, u.slot), False))
                      for layer, u in uses)
        # Caffe scales decay by the parameter's lr_mult; with per-use multipliers the
        # largest one is used, so a parameter with any trainable use decays like one.
        decay_lr = max(t.lr_mult for t in terms)
        decay = uses[0][1].decay_mult
        computed = [t for t in terms if t.computed]
        if decay_lr == 0:
            kind, text = "none", "frozen: no update (lr_mult 0 multiplies the decay as well)"
        elif computed:
            kind = "sgd"
            decay_term = f"{_g(decay)}*wd*w" if decay else ""
            if len(terms) == 1:
                inner = f"(g + {decay_term})" if decay else "g"
                text = f"w -= lr*{_g(terms[0].lr_mult)}*{inner}"
            else:
                parts = " + ".join(f"{_g(t.lr_mult)}*g[{t.layer}]" for t in computed)
                if decay:
                    parts += f" + {_g(decay_lr)}*{decay_term}"
                text = f"w -= lr*({parts})"
                if len({t.lr_mult for t in terms}) > 1:
                    text += ("; the per-use multipliers scale each use's gradient (with "
                             "momentum they act as gradient multipliers, not learning rates)")
        elif decay > 0:
            kind, text = "decay_only", ("no gradient reaches it, but weight decay still "
                                        f"shrinks it (decay_mult {_g(decay)})")
        else:
            kind, text = "none", "no gradient reaches it and decay_mult is 0: it never changes"
        rows = param.trainable_rows() if kind != "none" else ()
        if rows:
            text += f"; rows {_ranges(rows)} of {param.type.shape[0]} only, the rest kept"
        sent = param.type.nbytes
        if rows:
            sent = sent // param.type.shape[0] * sum(b - a for a, b in rows)
        out.append(ParamUpdate(name, kind, terms, decay_lr, decay, param.type.nbytes, text,
                               rows, sent))
    return tuple(out)


def _ranges(rows) -> str:
    return ", ".join(f"{a}:{b}" for a, b in rows)


def _g(x: float) -> str:
    return f"{x:g}"
