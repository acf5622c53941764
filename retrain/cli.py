"""The ``retrain`` command line: offline jobs over what the gateway logged.

::

    retrain export-feedback --since DATE --out FILE.jsonl [--config FILE]
    retrain tiny-model --out DIR [--seed N] [--force]
"""

from __future__ import annotations

import argparse
import sys
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

    export = commands.add_parser(
        "export-feedback",
        help="write rated interactions with their ratings as JSON lines",
    )
    export.add_argument("--since", required=True, help="ISO date or date-time (UTC if naive)")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSONL output")
    export.add_argument("--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tiny-model":
        from retrain.tiny_model import build_tiny_model

        print(build_tiny_model(args.out, seed=args.seed, force=args.force))
        return 0
    if args.command == "export-feedback":
        from gateway.cli import load_config_or_exit
        from retrain.feedback_log import connect, export_feedback, parse_since

        try:
            since = parse_since(args.since)
        except ValueError:
            print(f"retrain: --since: not an ISO date: {args.since!r}", file=sys.stderr)
            return 2
        n = export_feedback(connect(load_config_or_exit(args.config)), since, args.out)
        print(f"wrote {n} rated responses to {args.out}")
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse guarantees one
