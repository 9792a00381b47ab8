"""The two rewrites Caffe's Net::Init applies to the layer list before it builds the net:
FilterNet (keep the layers whose include / exclude rules meet the state: the phase, level 0,
no stages) and InsertSplits (a blob read by several bottoms, a nonzero loss_weight counting
as a reader, gets a Split layer `<blob>_<layer>_<top>_split` with tops `..._split_<k>`).
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from types import MappingProxyType

from bwplan.caffe.model import PHASES, CaffeLayer, CaffeNet, StateRule
from bwplan.caffe.schema import Record
from bwplan.errors import CaffeError
from bwplan.source import Span


# ---- FilterNet ----------------------------------------------------------------------------
def _meets(rule: StateRule, phase: str, layer: str, log: list[str]) -> bool:
    """Caffe's StateMeetsRule for the state {phase, level 0, no stages}."""
    level = 0
    if rule.phase is not None and rule.phase != phase:
        log.append(f"The NetState phase ({PHASES.index(phase)}) differed from the phase "
                   f"({PHASES.index(rule.phase)}) specified by a rule in layer {layer}")
        return False
    if rule.min_level is not None and level < rule.min_level:
        log.append(f"The NetState level ({level}) is above the min_level ({rule.min_level}) "
                   f"specified by a rule in layer {layer}")
        return False
    if rule.max_level is not None and level > rule.max_level:
        log.append(f"The NetState level ({level}) is above the max_level ({rule.max_level}) "
                   f"specified by a rule in layer {layer}")
        return False
    for stage in rule.stages:
        log.append(f"The NetState did not contain stage '{stage}' specified by a rule in "
                   f"layer {layer}")
        return False
    return True


def filter_net(layers: Sequence[CaffeLayer], phase: str,
               log: list[str] | None = None) -> tuple[CaffeLayer, ...]:
    log = [] if log is None else log
    kept = []
    for layer in layers:
        if layer.include and layer.exclude:
            raise CaffeError(layer.span, "Check failed: layer_param.include_size() == 0 || "
                             "layer_param.exclude_size() == 0 Specify either include rules "
                             "or exclude rules; not both.")
        included = not layer.include
        for rule in layer.exclude:
            if included and _meets(rule, phase, layer.name, log):
                included = False
        for rule in layer.include:
            if not included and _meets(rule, phase, layer.name, log):
                included = True
        if included:
            kept.append(layer)
    return tuple(kept)


# ---- InsertSplits -------------------------------------------------------------------------
_EMPTY = Record("LayerParameter", MappingProxyType({}), MappingProxyType({}),
                Span.synthetic("split"))


def split_layer_name(layer: str, blob: str, top: int) -> str:
    return f"{blob}_{layer}_{top}_split"


def split_blob_name(layer: str, blob: str, top: int, k: int) -> str:
    return f"{blob}_{layer}_{top}_split_{k}"


def insert_splits(layers: Sequence[CaffeLayer]) -> tuple[tuple[CaffeLayer, bool], ...]:
    """Caffe's InsertSplits. Returns (layer, is_inserted_split) pairs."""
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    readers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottoms):
            if blob not in last_top:
                close = difflib.get_close_matches(blob, list(last_top), n=1)
                raise CaffeError(layer.bottom_span(j), f"Unknown bottom blob '{blob}' "
                                 f"(layer '{layer.name}', bottom index {j})",
                                 f"did you mean '{close[0]}'?" if close else
                                 "a bottom must be the top of an earlier layer")
            source[i, j] = last_top[blob]
            readers[last_top[blob]] = readers.get(last_top[blob], 0) + 1
        for j, blob in enumerate(layer.tops):
            last_top[blob] = (i, j)
        # a top used as a loss counts as one more reader
        for j in range(min(len(layer.loss_weight), len(layer.tops))):
            top = last_top[layer.tops[j]]
            loss_weight[top] = layer.loss_weight[j]
            if loss_weight[top]:
                readers[top] = readers.get(top, 0) + 1
    next_split: dict[tuple[int, int], int] = {}
    out: list[tuple[CaffeLayer, bool]] = []
    for i, layer in enumerate(layers):
        bottoms = list(layer.bottoms)
        for j, blob in enumerate(bottoms):
            top = source[i, j]
            if readers.get(top, 0) > 1:
                k = next_split.get(top, 0)
                next_split[top] = k + 1
                bottoms[j] = split_blob_name(layers[top[0]].name, blob, top[1], k)
        layer = dataclasses.replace(layer, bottoms=tuple(bottoms))
        splits = []
        for j, blob in enumerate(layer.tops):
            count = readers.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            tops = tuple(split_blob_name(layer.name, blob, j, k) for k in range(count))
            weights = ((weight,) + (0.0,) * (count - 1)) if weight else ()
            splits.append(CaffeLayer(split_layer_name(layer.name, blob, j), "Split", (blob,),
                                     tops, (), (), weights, (), (), _EMPTY,
                                     layer.top_span(j)))
            if weight:
                # the producer's loss moves to the split's first top
                layer = dataclasses.replace(layer, loss_weight=())
                next_split[i, j] = next_split.get((i, j), 0) + 1
        out.append((layer, False))
        out.extend((s, True) for s in splits)
    return tuple(out)


def built_layers(net: CaffeNet, phase: str = "TRAIN"
                 ) -> tuple[tuple[CaffeLayer, CaffeLayer | None], ...]:
    """The layers Net::Init builds, in order (after FilterNet and InsertSplits), each with
    the prototxt layer it came from (None for an inserted Split). The prototxt layer keeps
    its own bottoms and loss weights, which InsertSplits rewrites in the built layer."""
    kept = filter_net(net.layers, phase)
    originals = iter(kept)
    return tuple((layer, None if is_split else next(originals))
                 for layer, is_split in insert_splits(kept))
