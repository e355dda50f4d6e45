"""A documented dataclass field; the CLI is generated from these (flag = field name with dashes)."""
from __future__ import annotations

import argparse
import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

# choices that belong to a registry of a package above config (attention / sampling / grammar
# backends, tool-call and reasoning parsers): that package registers them here, config never
# imports it
_REGISTERED_CHOICES: dict[str, Callable[[], list[str]]] = {}


def register_choices(key: str, provider: Callable[[], list[str]]) -> None:
    """`provider()` lists the values of fields declared with `choices=key`."""
    _REGISTERED_CHOICES[key] = provider


def cfg(default: Any, help: str, choices: str | list[str] | None = None,
        nargs: str | None = None, type_: type | None = None,
        aliases: list[str] | None = None) -> Any:
    """aliases: more CLI spellings of the flag (e.g. "--tp")."""
    meta = {"help": help, "choices": choices, "nargs": nargs, "type": type_,
            "aliases": aliases or []}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_spec(f: dataclasses.Field) -> tuple[Any, type, list[str] | None]:
    """(default, element type, choices) of a cfg() field: what the CLI flag and the Python-side
    check both enforce."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    choices = f.metadata.get("choices")
    if isinstance(choices, str):  # a registry's key; unrestricted until the registry registers
        provider = _REGISTERED_CHOICES.get(choices)
        choices = provider() if provider is not None else None
    if isinstance(default, bool):
        return default, bool, choices
    type_ = f.metadata.get("type") or (type(default) if default is not None else str)
    return default, type_, choices


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if not f.init or "help" not in f.metadata:
            continue
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", [])]
        default, type_, choices = field_spec(f)
        if type_ is bool:
            group.add_argument(*flags, action="store_true", default=default,
                               help=f.metadata["help"])
            continue
        group.add_argument(*flags, dest=f.name, type=type_, default=default, choices=choices,
                           nargs=f.metadata.get("nargs"), help=f.metadata["help"])


def check_kwarg(f: dataclasses.Field, value: Any) -> None:
    """Type and choices of one field set from Python (the CLI has argparse check them): a wrong
    value is a clear error naming the argument, not a failure deep in the engine later."""
    default, expected, choices = field_spec(f)
    if value is None and default is None:
        return
    values = value if f.metadata.get("nargs") and isinstance(value, (list, tuple)) else [value]
    for v in values:
        if expected is float:
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
        elif expected is int:
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        else:
            ok = isinstance(v, expected)
        if not ok:
            raise TypeError(f"engine argument {f.name}={value!r}: expected "
                            f"{'a list of ' if f.metadata.get('nargs') else ''}{expected.__name__}")
    if choices is not None and value not in choices:
        raise ValueError(f"engine argument {f.name}={value!r}: choose one of {list(choices)}")


def dataclass_kwargs(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in values.items() if k in names}
