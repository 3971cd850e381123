"""Command-line options derived from a settings dataclass, so each knob is declared once (with its help)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of ``cls``; lists take several values, booleans are flags."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        kind = _base_type(hints[item.name])
        default = item.default if item.default is not dataclasses.MISSING else None
        help_text = item.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
        elif kind is list:
            parser.add_argument(flag, nargs="*", default=[], help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (default: {default})")


def dataclass_from_args(cls: type, args: argparse.Namespace, **values: Any):
    names = {item.name for item in dataclasses.fields(cls)}
    return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)} | values)


def _base_type(hint: Any) -> type:
    """``int | None`` -> int, ``list[str]`` -> list."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    origin = typing.get_origin(hint)
    return origin if origin is not None else hint
