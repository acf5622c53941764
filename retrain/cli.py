"""The ``retrain`` command line: offline jobs (for now, building the tiny test model)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser(
        "tiny-model",
        help="build the tiny random-weight Llama used by tests and demos (offline)",
    )
    tiny.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny.add_argument("--force", action="store_true", help="rebuild even if already built")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tiny-model":
        from retrain.tiny_model import build_tiny_model

        print(build_tiny_model(args.out, seed=args.seed, force=args.force))
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse guarantees one
