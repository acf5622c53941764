"""The ``retrain`` command line: offline jobs over what the gateway logged.

::

    retrain build --experiment NAME [--since DATE] [--out DIR] [--dry-run] [--config FILE]
    retrain review export --experiment NAME --out FILE.jsonl [--config FILE]
    retrain review import --experiment NAME FILE.jsonl [--config FILE]
    retrain export-feedback --since DATE --out FILE.jsonl [--config FILE]
    retrain tiny-model --out DIR [--seed N] [--force]

Exit codes of ``build``: 0 written (or nothing new, or a dry run), 1 error, 2 bad
arguments or config, 3 over the cost cap, 4 below the minimum size, 5 another build of
the experiment is running.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


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

    build = commands.add_parser("build", help="turn new ratings into the next dataset version")
    build.add_argument("--experiment", required=True, help="whose ratings")
    build.add_argument("--since", default=None, help="skip (for good) ratings before this date")
    build.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="datasets root (default: retrain.dataset_dir)")  # fmt: skip
    build.add_argument("--dry-run", action="store_true", help="report only: write nothing")
    build.add_argument("--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)")

    review = commands.add_parser("review", help="failures without a correction, for people")
    rsub = review.add_subparsers(dest="action", required=True)
    rexp = rsub.add_parser("export", help="write the review queue as JSON lines")
    rexp.add_argument("--experiment", required=True)
    rexp.add_argument("--out", type=Path, required=True, metavar="FILE")
    rexp.add_argument("--config", default=None)
    rimp = rsub.add_parser("import", help="store the corrections written into an export")
    rimp.add_argument("--experiment", required=True)
    rimp.add_argument("file", type=Path)
    rimp.add_argument("--config", default=None)
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
    if args.command == "build":
        return _build(args)
    if args.command == "review":
        from gateway.cli import load_config_or_exit
        from retrain.feedback_log import connect
        from retrain.review import ReviewError, export_review, import_review

        client = connect(load_config_or_exit(args.config))
        if args.action == "export":
            n = export_review(client, args.experiment, args.out)
            print(f"wrote {n} failures awaiting a correction to {args.out}")
            return 0
        try:
            n = import_review(client, args.experiment, args.file)
        except (ReviewError, OSError) as exc:
            print(f"retrain: review import: {exc}", file=sys.stderr)
            return 1
        print(f"stored {n} corrections; the next build uses them")
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse guarantees one


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from gateway.cli import load_config_or_exit
    from retrain.dataset import USAGE, Builder
    from retrain.feedback_log import connect, parse_since

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError:
        print(f"retrain: --since: not an ISO date: {args.since!r}", file=sys.stderr)
        return USAGE
    settings = load_config_or_exit(args.config)
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bars:

        def progress(stage: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(stage, total=total)
            return lambda n: bars.advance(task, n)

        builder = Builder(connect(settings), settings, args.experiment, out=args.out,
                          since=since, progress=progress)  # fmt: skip
        result = builder.run(dry_run=args.dry_run)
    if result.manifest:
        print_summary(result.manifest)
    stream = sys.stdout if result.exit_code == 0 else sys.stderr
    where = f" ({result.path})" if result.path else ""
    print(f"retrain build: {result.status}: {result.message}{where}", file=stream)
    return result.exit_code


def print_summary(manifest: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Dataset {manifest['id']} of {manifest['experiment']} "
                  f"(parent: {manifest['parent'] or 'none'})")  # fmt: skip
    for col in ("file", "examples", "tokens", "by source"):
        table.add_column(col, justify="left" if col in ("file", "by source") else "right")
    for name in ("train", "validation", "test", "preference", "preference_validation",
                 "preference_test"):  # fmt: skip
        if name in manifest["counts"]:
            sources = ", ".join(f"{k} {v}" for k, v in sorted(manifest["by_source"][name].items()))
            table.add_row(name, str(manifest["counts"][name]), str(manifest["tokens"][name]),
                          sources)  # fmt: skip
    console = Console()
    console.print(table)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(manifest["dropped"].items())) or "none"
    console.print(f"new examples: {manifest['new_examples']}; dropped: {dropped}; "
                  f"events: {len(manifest['feedback_events'])}; "
                  f"review queue: +{manifest['review_queue']['added']}")  # fmt: skip
    for c in manifest["cost_estimates"]:
        console.print(f"estimated cost: {c['provider']} {c['model']}, {c['epochs']} epochs, "
                      f"{c['tokens']} tokens: {c['cost']:.4f}")  # fmt: skip
