"""The controls: one module per kind of layout input, each a `Control` class (base.py) that owns
its record keys, batching, tokenizer, checkpoint formats, overlay, sidecar fields and training
loss (docs/adding_a_control.md).

    interactions.py   InteractDiffusion's (subject, action, object) triplets with boxes
    phrases.py        GLIGEN's phrases with boxes
    segments.py       DenseDiffusion's segments (training-free attention modulation)

A control module registers its class with `@register`; this package imports each module once
(the one line a new control adds here). Everything else reaches the controls through CONTROLS
and the functions below, never by naming a kind.
"""
from __future__ import annotations

from typing import Sequence

from hoi.records import ConditionError
from interact.controls.base import (CONTROLS, Control, ControlInput, Format, FuserInput,
                                    TextEncoders, phrase_table, register)
from interact.controls import interactions, phrases, segments  # noqa: F401  (the registry: one module each)

RECORD_FIELDS = ("prompt", "source")   # besides the controls' keys; `source` is a free-text note


def record_keys() -> list[str]:
    """Every key a layout record may have."""
    return [*RECORD_FIELDS, *(k for cls in CONTROLS.values() for k in cls.record_keys)]


def unknown_record_keys(record: dict) -> list[str]:
    """Keys of a layout record that nothing reads (a per-record `seed` or `steps`, a typo)."""
    known = set(record_keys())
    return sorted(str(key) for key in record if key not in known)


def parse_record(record, where: str, base_dir: str | None = None) -> dict[str, list]:
    """{control name: items} of a batch-file record, each control's keys parsed and checked by
    it; at most one control per slot (interactions or GLIGEN's phrases, not both)."""
    if not isinstance(record, dict):
        raise ConditionError(f"{where}: expected a JSON object, got {type(record).__name__}")
    out = {}
    for name, cls in CONTROLS.items():
        items = cls.parse(record, where, base_dir)
        if items is not None:
            out[name] = items
    by_slot: dict[str, list[str]] = {}
    for name in out:
        by_slot.setdefault(CONTROLS[name].slot, []).append(name)
    for names in by_slot.values():
        if len(names) > 1:
            labels = " and ".join(CONTROLS[n].record_label for n in names)
            raise ConditionError(f"{where}: has both {labels}; give one of them per record (they are alternative "
                                 f"inputs of one kind)")
    if not out:
        options = ", ".join(cls.record_label for cls in CONTROLS.values())
        raise ConditionError(f"{where}: missing field(s): a record gives one of {options}")
    return out


def route(items: Sequence) -> dict[str, list]:
    """Python items (Interaction, GroundedPhrase, Segment, ...) sorted by the control they belong to."""
    out: dict[str, list] = {}
    for i, item in enumerate(items):
        owner = next((name for name, cls in CONTROLS.items() if isinstance(item, cls.item_type)), None)
        if owner is None:
            kinds = ", ".join(cls.item_type.__name__ for cls in CONTROLS.values())
            raise ConditionError(f"item {i} = {item!r}: expected one of {kinds}")
        out.setdefault(owner, []).append(item)
    return out


def control_of(position_net) -> type[Control]:
    """The trained control whose tokenizer `position_net` is."""
    for cls in CONTROLS.values():
        if cls.trained and cls.tokenizer_class is not None and isinstance(position_net, cls.tokenizer_class):
            return cls
    raise ValueError(f"the tokenizer {type(position_net).__name__} is no registered control's tokenizer_class "
                     f"(registered: {', '.join(CONTROLS)})")


def model_controls(position_net) -> dict[str, Control]:
    """A model's controls: the trained one whose tokenizer `position_net` is, and every
    training-free one."""
    trained = control_of(position_net)
    return {name: cls(position_net) if cls is trained else cls() for name, cls in CONTROLS.items()
            if cls is trained or not cls.trained}


def checkpoint_formats() -> list[Format]:
    """Every trained control's checkpoint formats, in registration order."""
    return [f for cls in CONTROLS.values() for f in cls.formats]


__all__ = ["CONTROLS", "Control", "ControlInput", "Format", "FuserInput", "TextEncoders", "checkpoint_formats",
           "control_of", "model_controls", "parse_record", "phrase_table", "record_keys", "register", "route",
           "unknown_record_keys"]
