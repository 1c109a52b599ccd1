"""Options dataclasses built from parsed arguments, so a command does not copy each
`--some-flag` into `some_flag=args.some_flag` by hand."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """`cls(...)` with every field that has an argument of the same name taken from `args`;
    `given` sets (or overrides) fields by hand; the rest keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(given) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)}")
    taken = {n: getattr(args, n) for n in names - set(given) if hasattr(args, n)}
    return cls(**taken, **given)
