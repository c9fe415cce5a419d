"""Declarative validation of every configuration dataclass: a field states its type (the annotation) and what is
valid (a :class:`Rule` in its metadata, written with :func:`setting`); one loop (:func:`validate`) checks them all.

``TrainConfig``, ``ModelConfig`` and ``PropagationConfig`` are checked by this one loop, so a value read from a
checkpoint, a config file, a flag or a Python call gets the same checks and the same one-line message
(``gap = (8, 4): needs min <= max``, ``decoder = 'self': valid: cross-self, cross, joint``): an
:class:`~siammae.errors.InputError` with ``.field`` set to the field's name. Relations between fields (``img_size``
divisible by ``patch_size``) are the one thing a config writes by hand, as a function given to :func:`validate`.
The rule's ``help`` is the field's one meaning: ``siammae-train`` builds its options and their help from it.
"""

from __future__ import annotations

import math
import numbers
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from siammae.errors import InputError


@dataclass(frozen=True)
class Rule:
    """What a field accepts besides its type (the type is the field's annotation): an inclusive range ``lo``..``hi``
    (``lo_open``: lo excluded; for pairs, every value), a set of ``choices``, and whether a pair is ordered
    (min <= max). ``help`` is the one-line meaning (shown by :func:`describe` and in ``--help``)."""

    help: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    ordered: bool = False

    def valid(self) -> str:
        """What would be valid, in words: ``valid: a, b``, ``in [0, 1)``, ``>= 1``."""
        if self.choices is not None:
            return f"valid: {', '.join(str(c) for c in self.choices)}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        if self.lo is not None and self.hi is not None:
            return f"must be in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"must be {'<' if self.hi_open else '<='} {self.hi:g}"
        return ""

    def accepts(self, value) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))


def setting(default, help: str, **rule):
    """A config field: its default, its meaning and its :class:`Rule` (in the field's metadata)."""
    return field(default=default, metadata={"rule": Rule(help, **rule)})


def rule_of(f) -> Rule:
    """The :class:`Rule` of a dataclass field (an empty one when the field has none)."""
    return f.metadata.get("rule") or Rule()


# ------------------------------------------------------------------------------------------------ validation
def bad(name: str, value, why: str) -> InputError:
    """The one error of a bad value: ``name = value: why``, with ``.field`` set to ``name``."""
    e = InputError(f"{name} = {value!r}: {why}")
    e.field = name
    return e


def validate(cfg, relations: Callable[[dict], None] | None = None) -> dict:
    """Check every field of the dataclass ``cfg`` against its type and :class:`Rule`, then ``relations(values)``
    (the rules that tie fields together) -> the normalised values (lists as tuples, ints as floats where a float is
    declared, paths as str). The first problem is an InputError ``name = value: what is valid`` (:func:`bad`)."""
    hints = type_hints(type(cfg))
    out = {}
    for f in fields(cfg):
        value = _coerce(f.name, getattr(cfg, f.name), hints[f.name])
        rule = rule_of(f)
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):  # nan passes every comparison
            raise bad(f.name, value, "must be a finite number")
        if value is not None:
            if not all(rule.accepts(v) for v in items):
                raise bad(f.name, value, rule.valid())
            if rule.ordered and value[0] > value[1]:
                raise bad(f.name, value, "needs min <= max")
        out[f.name] = value
    if relations is not None:
        relations(out)
    return out


def apply(cfg, relations: Callable[[dict], None] | None = None) -> None:
    """:func:`validate` ``cfg`` in its ``__post_init__`` and store the normalised values (frozen or not)."""
    for name, value in validate(cfg, relations).items():
        if getattr(cfg, name) is not value:
            object.__setattr__(cfg, name, value)


def check_names(cls, d: dict, source: str, what: str = "setting") -> None:
    """An InputError starting with ``source`` for the first key of ``d`` that is not a field of ``cls``."""
    known = [f.name for f in fields(cls)]
    for name in d:
        if name not in known:
            raise InputError(f"{source}: unknown {what} {name!r}; valid: {', '.join(known)}")


_HINTS: dict[type, dict] = {}


def type_hints(cls) -> dict:
    """The resolved annotations of a dataclass (cached: resolving them is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _coerce(name: str, value, hint):
    """``value`` as the annotation ``hint`` says (a list becomes a tuple, an int a float where a float is declared,
    a path a str); an InputError naming the field and the type otherwise."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        args = tuple(a for a in args if a is not type(None))
        hint = args[0] if len(args) == 1 else typing.Union[args]  # noqa: UP007 (a runtime union of the rest)
        args = typing.get_args(hint)
    elif value is None:
        raise bad(name, value, f"cannot be empty; expected {_TYPE_WORDS.get(hint, 'a list')}")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _either(name, value, args)
    if typing.get_origin(hint) is tuple:
        if args and args[-1] is Ellipsis:  # tuple[str, ...]: one value reads as a list of one
            items = (value,) if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(items, (list, tuple)):
                raise bad(name, value, f"expected a list of {_TYPE_WORDS[args[0]]}s")
            return tuple(_coerce(name, v, args[0]) for v in items)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(name, value, f"expected {len(args)} values (min, max)")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    return _scalar(name, value, hint)


def _either(name: str, value, kinds: tuple):
    """``int | float``: the value as it is, when it is one of ``kinds`` (no conversion: 12 stays 12)."""
    for kind in kinds:
        if kind in (int, float) and isinstance(value, kind) and not isinstance(value, bool):
            return value
    raise bad(name, value, f"must be {' or '.join(_TYPE_WORDS.get(k, str(k)) for k in kinds)}")


def _scalar(name: str, value, hint):
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's numbers too, not its bool
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float and number:
        return float(value)
    if hint is int and number and isinstance(value, numbers.Integral):
        return int(value)
    if hint is str and isinstance(value, (str, os.PathLike)):
        return str(value)
    raise bad(name, value, f"must be {_TYPE_WORDS.get(hint, hint)}")


def describe(cls) -> str:
    """Every field of ``cls`` with its type, default, what is valid and its meaning, one per line (docs, --help)."""
    hints = type_hints(cls)
    lines = []
    for f in fields(cls):
        rule = rule_of(f)
        hint = hints[f.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        valid = f"; {rule.valid()}" if rule.valid() else ""
        valid += ", min <= max" if rule.ordered else ""
        lines.append(f"{f.name} ({kind}, default {f.default!r}{valid}): {rule.help}")
    return "\n".join(lines)
