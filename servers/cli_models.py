"""`muxbench models`: one line per model -- name, availability, description."""

from __future__ import annotations

import argparse

from servers.models import MODELS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "List every server model: its name, `available` or `unavailable: REASON`, "
        "and what it shows."
    )


def run(args: argparse.Namespace) -> int:
    width = max(map(len, MODELS))
    for model in MODELS.values():
        reason = model.unavailable_reason()
        status = "available" if reason is None else f"unavailable: {reason}"
        print(f"{model.name:<{width}}  {status}  {model.description}")
    return 0
