"""argparse types the muxbench commands share: a bad value is one usage line and exit status 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def number_in(kind: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: `kind` parsed from the text and checked to lie in [low, high]."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        # float() accepts "nan" and "inf"; neither is a rate, a duration or a size.
        if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def positive_int(text: str) -> int:
    """A count or a size: 1, 2, 3 ..."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cpu_list(text: str) -> list[int]:
    """CPU numbers as `taskset -c` takes them: 0,1 or 2-5 or both (sorted, no repeats)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            first, last = -1, -1
        if not 0 <= first <= last:
            raise argparse.ArgumentTypeError(
                f"not a list of CPU numbers (e.g. 0,1 or 2-5): {text!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise argparse.ArgumentTypeError("empty CPU list")
    return sorted(cpus)


def float_where(holds: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """An argparse type: a float for which holds(value), else `wanted` as the error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails any test holds() makes
        if not holds(value):
            raise argparse.ArgumentTypeError(f"{wanted}, got {text}")
        return value
    return parse
