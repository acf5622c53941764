"""The ``retrain`` command line: offline jobs over what the gateway logged.

::

    retrain run --experiment NAME [--provider local|openai] [--processes N] [--config FILE]
    retrain icl --experiment NAME --teacher MODEL --base MODEL --name NAME [--k N]
                [--workload W] [--config FILE]
    retrain eval --candidate MODEL --control MODEL [--dataset DIR] [--golden FILE]
                 [--judge MODEL] [--out FILE.json] [--config FILE]
    retrain embed --base DIR --out DIR [--model NAME] [--triples FILE.jsonl] [--corpus FILE]
                  [--register NAME --upstream UP [--served-model ID]] [--report FILE.json]
    retrain jobs | status JOB [--follow] | cancel JOB | lineage MODEL   [--config FILE]
    retrain build --experiment NAME [--since DATE] [--out DIR] [--dry-run] [--config FILE]
    retrain archive [--compact | --migrate] [--config FILE]
    retrain forget --user U [--tenant T] [--config FILE]
    retrain forget --pending [--config FILE]
    retrain review export --experiment NAME --out FILE.jsonl [--config FILE]
    retrain review import --experiment NAME FILE.jsonl [--config FILE]
    retrain join-training [--launch-dir DIR]
    retrain export MODEL --out DIR [--merged] [--base MODEL] [--config FILE]
    retrain export-feedback --since DATE --out FILE.jsonl [--tenant T] [--config FILE]
    retrain check-config [--config FILE]
    retrain config show [--config FILE]
    retrain tiny-model --out DIR [--seed N] [--force]
    retrain tiny-adapter --model DIR --out DIR [--seed N]
    retrain tiny-embedder --out DIR [--seed N] [--force]

Exit codes of ``build`` and ``run`` (``retrain/exit_codes.py``): 0 done (a dataset
written, a canary registered, or nothing new), 1 failed (a rerun retries: nothing was
used up), 2 bad arguments or config, or a check before the run failed (nothing was
consumed), 3 over the cost cap, 4 below the minimum size, 5 another build or run of the
experiment holds its lock, 6 (``run``) the candidate did not pass the evaluation gate
and was not registered, 7 (``run``) too few held-out examples to evaluate a candidate
yet (nothing was trained). ``archive``: 0 done, 5 another archiver holds the lock.
``forget``: 0 done, 2 an empty or invalid user id, 5 the archiver or a build holds its
lock (a rerun finishes the work).
``eval`` (the gate alone, on any two models the gateway
serves): 0 passed, 6 rejected, 7 collect more, 1 error, 2 nothing to evaluate on.

A command that cannot do its work raises a :class:`retrain.errors.RetrainError` where
the problem is found; :func:`main` prints it (``retrain <command>: <message>``) and
exits with the class's code, in one place.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.core.config import NAME_MAX, valid_name
from gateway.core.documents import Evaluation, Manifest
from gateway.core.records import JobRecord
from retrain.errors import Busy, NotFound, RetrainError, UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrain",
        description=(__doc__ or "").replace("``", "").replace("\n::\n", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check-config", help="validate the whole config file, the retrain section included"
    )
    check.add_argument("--config", default=None, help="config file (default: $FLYWHEEL_CONFIG)")
    show = commands.add_parser("config", help="show the effective config")
    show.add_argument("action", choices=["show"], help="show: print it as YAML (secrets masked)")
    show.add_argument("--config", default=None, help="config file (default: $FLYWHEEL_CONFIG)")

    tiny = commands.add_parser(
        "tiny-model",
        help="build the tiny random-weight Llama used by tests and demos (offline)",
    )
    tiny.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny.add_argument("--force", action="store_true", help="rebuild even if already built")

    tiny_embed = commands.add_parser(
        "tiny-embedder",
        help="build the tiny random-weight embedding model used by tests and demos (offline)",
    )
    tiny_embed.add_argument("--out", type=Path, required=True, metavar="DIR")
    tiny_embed.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny_embed.add_argument("--force", action="store_true", help="rebuild even if already built")
    adapter = commands.add_parser(
        "tiny-adapter",
        help="save an untrained LoRA adapter for a model (answers differently; for trying the "
        "admin API and routing)",
    )
    adapter.add_argument("--model", type=Path, required=True, metavar="DIR", help="model dir")
    adapter.add_argument("--out", type=Path, required=True, metavar="DIR", help="adapter dir")
    adapter.add_argument("--seed", type=int, default=1, help="weight seed (default 1)")

    export = commands.add_parser(
        "export-feedback",
        help="write rated interactions with their ratings as JSON lines",
    )
    export.add_argument("--since", required=True, help="ISO date or date-time (UTC if naive)")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSONL output")
    export.add_argument(
        "--tenant", type=name_arg, default=None, help="only this tenant's responses"
    )
    export.add_argument("--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)")

    joiner = commands.add_parser(
        "join-training",
        help="on another machine of a multi-node training (PyTorchJob worker): wait for the "
        "first machine's retrain run to start training, and train with it",
    )
    joiner.add_argument(
        "--launch-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the shared directory the first machine writes to (default: $FLYWHEEL_LAUNCH_DIR)",
    )

    ship = commands.add_parser(
        "export",
        help="write a trained adapter, or with --merged the model with it merged in, to a "
        "directory (to serve as a plain model, or to ship)",
    )
    ship.add_argument("model", help="a model name the gateway serves, or an adapter directory")
    ship.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new directory")
    ship.add_argument(
        "--merged", action="store_true", help="merge the adapter into its base (merge_and_unload)"
    )
    ship.add_argument(
        "--base",
        default=None,
        metavar="MODEL",
        help="the base model (default: the one it was trained on)",
    )
    ship.add_argument("--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)")

    archive = commands.add_parser(
        "archive",
        help="copy interactions and ratings from Redis to the archive's Delta tables (archive.url)",
    )
    upkeep = archive.add_mutually_exclusive_group()
    upkeep.add_argument(
        "--compact",
        action="store_true",
        help="after the pass, compact every partition with more than one small file and "
        "vacuum what was replaced (archive.vacuum_retention_hours ago or earlier)",
    )
    upkeep.add_argument(
        "--migrate",
        action="store_true",
        help="only copy an archive of the earlier layout (Parquet files and manifest.json) "
        "into the tables, exactly once; the streams are not read",
    )
    archive.add_argument(
        "--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)"
    )

    forget = commands.add_parser(
        "forget",
        help="remove a user's interactions, ratings, archive rows and dataset examples",
    )
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", default=None, help="the user id (the requests' user)")
    who.add_argument(
        "--pending",
        action="store_true",
        help="rewrite the datasets of users forgotten through DELETE /admin/users/{user}",
    )
    forget.add_argument(
        "--tenant", type=name_arg, default=None, help="only that tenant's user (default: all)"
    )
    forget.add_argument("--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)")

    build = commands.add_parser("build", help="turn new ratings into the next dataset version")
    build.add_argument("--experiment", type=name_arg, required=True, help="whose ratings")
    build.add_argument("--since", default=None, help="skip (for good) ratings before this date")
    build.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="datasets root (default: retrain.dataset_dir)",
    )
    build.add_argument("--dry-run", action="store_true", help="report only: write nothing")
    build.add_argument(
        "--workload",
        type=name_arg,
        default=None,
        help="only the requests that named this workload (metadata.workload)",
    )
    build.add_argument(
        "--distill",
        action="store_true",
        help="examples from the teacher's answers (rated well, or unrated), not from failures",
    )
    build.add_argument(
        "--teacher", type=name_arg, default=None, metavar="MODEL", help="--distill: whose answers"
    )
    build.add_argument("--config", default=None, help="gateway config (default: $FLYWHEEL_CONFIG)")

    run = commands.add_parser("run", help="build, train, evaluate and register a canary")
    run.add_argument("--experiment", type=name_arg, required=True)
    run.add_argument(
        "--provider", choices=("local", "openai"), default=None, help="default: retrain.provider"
    )
    run.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="local: train in N processes, one per GPU (default: retrain.local.processes)",
    )
    run.add_argument(
        "--distill",
        action="store_true",
        help="train a student on the teacher's answers; canary it against the teacher",
    )
    run.add_argument(
        "--teacher", type=name_arg, default=None, metavar="MODEL", help="--distill: whose answers"
    )
    run.add_argument(
        "--student",
        default=None,
        metavar="BASE",
        help="--distill: the base model trained: a local one (default: retrain.local."
        "base_model), or with --provider openai a hosted one (default: retrain.openai."
        "base_model)",
    )
    run.add_argument(
        "--workload", type=name_arg, default=None, help="only the requests of this workload"
    )
    run.add_argument("--config", default=None)
    icl = commands.add_parser(
        "icl",
        help="gate and canary an in-context candidate: a base model plus the teacher's examples",
    )
    icl.add_argument("--experiment", type=name_arg, required=True)
    icl.add_argument(
        "--teacher", type=name_arg, required=True, metavar="MODEL", help="whose answers"
    )
    icl.add_argument(
        "--base", type=name_arg, required=True, metavar="MODEL", help="the served base model"
    )
    icl.add_argument("--name", type=name_arg, required=True, help="the candidate's model name")
    icl.add_argument(
        "--k", type=int, default=4, metavar="N", help="examples in front of a request (1-32)"
    )
    icl.add_argument(
        "--workload", type=name_arg, default=None, help="the workload's distillation dataset"
    )
    icl.add_argument("--config", default=None)
    ev = commands.add_parser("eval", help="the evaluation gate alone, on two served models")
    ev.add_argument("--candidate", required=True, metavar="MODEL", help="the model to judge")
    ev.add_argument("--control", required=True, metavar="MODEL", help="the model to beat")
    ev.add_argument(
        "--dataset",
        type=Path,
        default=None,
        metavar="DIR",
        help="a dataset version, or an experiment's datasets (the latest): "
        "its test split is the main evidence",
    )
    ev.add_argument(
        "--golden",
        type=Path,
        default=None,
        metavar="FILE",
        help="golden set, chat JSONL (default: retrain.eval.golden)",
    )
    ev.add_argument(
        "--judge", default=None, metavar="MODEL", help="LLM judge (default: retrain.eval.judge)"
    )
    ev.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="also write the full result as JSON"
    )
    ev.add_argument("--config", default=None)
    embed = commands.add_parser(
        "embed",
        help="fine-tune an embedding model on retrieval feedback, evaluate, gate, register",
    )
    embed.add_argument(
        "--base", required=True, help="the embedding model to fine-tune (a directory or name)"
    )
    embed.add_argument("--out", type=Path, required=True, metavar="DIR", help="the candidate")
    embed.add_argument(
        "--model", default=None, help="only the feedback on this model's responses (default: all)"
    )
    embed.add_argument(
        "--triples",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON lines of {query, positive, negative} or {query, passage, score}, added to "
        "the feedback (with --no-feedback, instead of it)",
    )
    embed.add_argument(
        "--no-feedback", action="store_true", help="do not read the gateway's retrieval feedback"
    )
    embed.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="FILE",
        help="more passages to rank in the evaluation (a line each, or JSON lines with text)",
    )
    embed.add_argument("--k", type=int, default=10, help="the cut-off of every metric (10)")
    embed.add_argument("--holdout", type=float, default=0.2, help="share of held-out queries")
    embed.add_argument("--min-triples", type=int, default=20, help="fewer: exit 4 (20)")
    embed.add_argument("--min-queries", type=int, default=10, help="fewer held out: exit 7 (10)")
    embed.add_argument(
        "--min-gain", type=float, default=0.0, help="the MRR gain's lower bound must pass it (0)"
    )
    embed.add_argument("--epochs", type=int, default=3)
    embed.add_argument("--batch-size", type=int, default=16)
    embed.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    embed.add_argument(
        "--register", default=None, metavar="NAME", help="on a pass, register it as NAME"
    )
    embed.add_argument(
        "--upstream", default=None, help="the upstream that serves the candidate (--register)"
    )
    embed.add_argument(
        "--served-model",
        default=None,
        metavar="ID",
        help="the model id that upstream serves it as (default: NAME)",
    )
    embed.add_argument("--report", type=Path, default=None, metavar="FILE", help="report JSON")
    embed.add_argument("--config", default=None)
    jobs = commands.add_parser("jobs", help="list fine-tuning jobs")
    jobs.add_argument("--config", default=None)
    status = commands.add_parser("status", help="one job, with its loss curve and evaluation")
    status.add_argument("job")
    status.add_argument("--follow", action="store_true", help="until the job ends")
    status.add_argument("--config", default=None)
    cancel = commands.add_parser("cancel", help="ask a running job to stop")
    cancel.add_argument("job")
    cancel.add_argument("--config", default=None)
    lineage = commands.add_parser("lineage", help="where a model version came from")
    lineage.add_argument("model")
    lineage.add_argument("--config", default=None)

    review = commands.add_parser("review", help="failures without a correction, for people")
    rsub = review.add_subparsers(dest="action", required=True)
    rexp = rsub.add_parser("export", help="write the review queue as JSON lines")
    rexp.add_argument("--experiment", type=name_arg, required=True)
    rexp.add_argument("--out", type=Path, required=True, metavar="FILE")
    rexp.add_argument("--config", default=None)
    rimp = rsub.add_parser("import", help="store the corrections written into an export")
    rimp.add_argument("--experiment", type=name_arg, required=True)
    rimp.add_argument("file", type=Path)
    rimp.add_argument("--config", default=None)
    return parser


def name_arg(value: str) -> str:
    """An experiment's or tenant's name, as the gateway accepts it (it becomes a Redis key
    and a directory under ``retrain.dataset_dir``)."""
    if not valid_name(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid name: letters, digits, '_', '-' and single dots, "
            f"starting with a letter or digit, at most {NAME_MAX} characters (no '/' or '..')"
        )
    return value


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: what this command started is stopped


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`RetrainError` is printed on stderr, a line each,
    and its class's exit code returned (the one place errors become exit codes)."""
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _command(args)
    except RetrainError as exc:
        where = f"retrain {args.command}"
        if args.command == "review":
            where += f" {args.action}"
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"{where}: {line}", file=sys.stderr)
        return int(exc.exit_code)


def _command(args: argparse.Namespace) -> int:
    if args.command in ("check-config", "config"):
        return _config(args)
    if args.command == "tiny-model":
        from flywheel_stack.tiny_model import build_tiny_model

        print(build_tiny_model(args.out, seed=args.seed, force=args.force))
        return 0
    if args.command == "tiny-embedder":
        from flywheel_stack.tiny_embedder import build_tiny_embedder

        print(build_tiny_embedder(args.out, seed=args.seed, force=args.force))
        return 0
    if args.command == "tiny-adapter":
        from flywheel_stack import make_test_adapter

        print(make_test_adapter(args.model, args.out, seed=args.seed))
        return 0
    if args.command == "export-feedback":
        from gateway.core.store import keyspace
        from retrain.config import load as load_config
        from retrain.feedback_log import connect, export_feedback, parse_since

        since = parse_since(args.since)
        from gateway.ops.archive import open_archive

        settings = load_config(args.config)
        archive = open_archive(settings.data_dir, settings.archive)
        n = export_feedback(
            connect(settings),
            keyspace(settings),
            since,
            args.out,
            tenant=args.tenant,
            archive=archive,
        )
        print(f"wrote {n} rated responses to {args.out}")
        return 0
    if args.command == "join-training":
        import os

        from retrain.local_train import LAUNCH_DIR_ENV, join

        launch_dir = args.launch_dir or os.environ.get(LAUNCH_DIR_ENV)
        if not launch_dir:
            raise UsageError(f"--launch-dir or ${LAUNCH_DIR_ENV}")
        return join(Path(launch_dir))
    if args.command == "export":
        return _export(args)

    if args.command == "archive":
        return _archive(args)
    if args.command == "build":
        return _build(args)
    if args.command == "forget":
        return _forget(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "icl":
        return _icl(args)
    if args.command == "embed":
        return _embed(args)
    if args.command in ("run", "jobs", "status", "cancel", "lineage"):
        return _jobs(args)
    if args.command == "review":
        from gateway.core.store import keyspace
        from retrain.config import load as load_config
        from retrain.feedback_log import connect
        from retrain.review import export_review, import_review

        settings = load_config(args.config)
        client, ks = connect(settings), keyspace(settings)
        if args.action == "export":
            n = export_review(client, ks, args.experiment, args.out)
            print(f"wrote {n} failures awaiting a correction to {args.out}")
            return 0
        n = import_review(client, ks, args.experiment, args.file)
        print(f"stored {n} corrections; the next build uses them")
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse guarantees one


def _export(args: argparse.Namespace) -> int:
    from retrain.export import export

    adapter, base = Path(args.model), args.base
    if not adapter.is_dir():  # a model name: the gateway knows its adapter
        from gateway.core.store import keyspace
        from retrain.config import load as load_config
        from retrain.feedback_log import connect
        from retrain.gateway_client import Gateway
        from retrain.jobs import JobStore

        settings = load_config(args.config)
        info = Gateway(settings).model(args.model)
        path = info.get("adapter_path")
        if not path:
            raise UsageError(
                f"{args.model} is not served from an adapter "
                f"(it is {info.get('model')} on {info.get('upstream')}): nothing to export"
            )
        adapter = Path(path)
        job_id = (info.get("lineage") or {}).get("job")
        job = JobStore(connect(settings), keyspace(settings)).get(job_id) if job_id else None
        base = base or (job or {}).get("base_model") or settings.retrain.local.base_model
    out = export(adapter, args.out, merged=args.merged, base=base)
    what = "merged model (serve it as a plain model)" if args.merged else "adapter"
    print(f"wrote the {what} of {args.model} to {out}")
    return 0


def _archive(args: argparse.Namespace) -> int:
    from gateway.core.store import keyspace
    from gateway.ops.archive import Archiver, open_archive
    from retrain.config import load as load_config
    from retrain.feedback_log import connect

    settings = load_config(args.config)
    cfg = settings.archive
    archiver = Archiver(
        connect(settings),
        keyspace(settings),
        open_archive(settings.data_dir, cfg),
        batch=cfg.batch,
        lock_ttl_s=cfg.lock_ttl_s,
    )
    try:
        if args.migrate:
            result = archiver.maintain(compact=False)
        else:
            result = archiver.run_once()
            if args.compact and not result.held_by:
                upkeep = archiver.maintain(compact=True)
                result.compacted += upkeep.compacted
                result.held_by = upkeep.held_by
    finally:
        archiver.release()
    if result.held_by:
        raise Busy(f"another archiver is running ({result.held_by})")
    if result.migrated or args.migrate:
        print(f"migrated {result.migrated} rows from manifest.json into the Delta tables")
        if args.migrate:
            return 0
    if result.compacted:
        print(f"compacted {result.compacted} partitions")
    print(
        f"archived {result.written['interactions']} interactions and "
        f"{result.written['feedback']} ratings in {result.files} commits"
        + (f"; {result.expired} had left Redis unarchived" if result.expired else "")
    )
    return 0


def _forget(args: argparse.Namespace) -> int:
    import orjson

    from gateway.core.store import keyspace
    from retrain.config import load as load_config
    from retrain.feedback_log import connect
    from retrain.forget import forget_pending, forget_user

    settings = load_config(args.config)
    client, ks = connect(settings), keyspace(settings)
    if args.pending:
        done: object = forget_pending(client, ks, settings)
    else:
        done = forget_user(client, ks, settings, args.user, args.tenant)
    print(orjson.dumps(done, option=orjson.OPT_INDENT_2).decode())
    return 0


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from gateway.core.store import keyspace
    from retrain.config import load as load_config
    from retrain.dataset import Builder
    from retrain.feedback_log import connect, parse_since

    since = parse_since(args.since) if args.since else None
    if args.distill != bool(args.teacher):
        raise UsageError("--distill and --teacher MODEL go together")
    settings = load_config(args.config)
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bars:

        def progress(stage: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(stage, total=total)
            return lambda n: bars.advance(task, n)

        builder = Builder(
            connect(settings),
            keyspace(settings),
            settings,
            args.experiment,
            out=args.out,
            since=since,
            progress=progress,
            workload=args.workload,
            teacher=args.teacher,
        )
        result = builder.run(dry_run=args.dry_run)
    if result.manifest:
        print_summary(result.manifest)
    stream = sys.stdout if result.exit_code == 0 else sys.stderr
    where = f" ({result.path})" if result.path else ""
    print(f"retrain build: {result.status}: {result.message}{where}", file=stream)
    return result.exit_code


def _eval(args: argparse.Namespace) -> int:
    import json

    from retrain import evaluate, tokens
    from retrain.config import load as load_config
    from retrain.gateway_client import Gateway

    settings = load_config(args.config)
    cfg = settings.retrain.eval
    if args.judge:
        cfg = cfg.model_copy(update={"judge": args.judge})
    golden = args.golden or cfg.golden
    if args.dataset is not None and (args.dataset / "latest").is_file():  # an experiment's root
        args.dataset = args.dataset / (args.dataset / "latest").read_text().strip()
    if args.dataset is None and golden is None:
        raise UsageError(
            "nothing to evaluate on: give --dataset DIR or --golden FILE "
            "(or set retrain.eval.golden)"
        )
    gateway = Gateway(settings)
    models = [args.control, args.candidate]
    counter = tokens.for_models(settings, gateway.model, models)
    result = evaluate.gate_dataset(
        args.dataset, gateway.ask, args.control, args.candidate, cfg, golden, counter
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print_evaluation(result)
    return evaluate.OUTCOME_CODES[result["outcome"]]


def _embed(args: argparse.Namespace) -> int:
    import json

    from retrain import embed
    from retrain.config import load as load_config
    from retrain.exit_codes import ExitCode

    if args.register and not args.upstream:
        raise UsageError("--register needs --upstream")
    settings = load_config(args.config)
    triples = embed.read_triples(args.triples) if args.triples else []
    corpus = embed.read_corpus(args.corpus) if args.corpus else []
    if not args.no_feedback:
        from gateway.core.store import keyspace
        from retrain.feedback_log import connect

        events = embed.read_feedback(connect(settings), keyspace(settings), args.model)
        triples = embed.triples_of(events) + triples
    cfg = settings.retrain.eval
    outcome = embed.run_embed(
        base=args.base,
        out=args.out,
        triples=triples,
        corpus=corpus,
        k=args.k,
        holdout=args.holdout,
        min_triples=args.min_triples,
        min_queries=args.min_queries,
        min_gain=args.min_gain,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=cfg.seed,
        confidence=cfg.confidence,
        samples=cfg.bootstrap_samples,
    )
    report = outcome.report
    if outcome.code == ExitCode.OK and args.register:
        from retrain.gateway_client import Gateway

        body = {
            "name": args.register,
            "upstream": args.upstream,
            "model": args.served_model or args.register,
            "lineage": {"base": args.base, "path": str(args.out), "kind": "embedding"},
        }
        report["registered"] = Gateway(settings).register(body)["id"]
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(json.dumps(report, indent=1, ensure_ascii=False))
    if "reason" in report:
        print(f"retrain embed: {report['reason']}", file=sys.stderr)
    elif not report.get("passed"):
        gain = report["mrr_gain"]
        print(
            f"retrain embed: rejected: MRR@{args.k} gain {gain['estimate']:+.4f}, interval "
            f"[{gain['low']:+.4f}, {gain['high']:+.4f}]: the lower bound is not above "
            f"{args.min_gain}",
            file=sys.stderr,
        )
    return int(outcome.code)


def _icl(args: argparse.Namespace) -> int:
    from retrain.config import load as load_config
    from retrain.exit_codes import ExitCode
    from retrain.icl import register_icl

    if not 1 <= args.k <= 32:
        raise UsageError(f"--k must be from 1 to 32, not {args.k}")
    settings = load_config(args.config)
    done = register_icl(
        settings,
        log=lambda m: print(f"retrain icl: {m}", file=sys.stderr),
        experiment=args.experiment,
        teacher=args.teacher,
        base=args.base,
        name=args.name,
        k=args.k,
        workload=args.workload,
    )
    if not done.canaried:
        print(f"{done.name} not registered: {done.evaluation['reason']}")
        return done.code
    share = settings.retrain.canary_share
    print(
        f"{done.name} is a canary of '{args.experiment}' at {share:.0%}: {args.base} with "
        f"{args.k} of the {done.examples} examples of {done.dataset} in front of each request "
        f"({done.evaluation['reason']})"
    )
    return int(ExitCode.OK)


def _config(args: argparse.Namespace) -> int:
    import os

    from gateway.core.config import show_config
    from retrain.config import load as load_config

    settings = load_config(args.config)
    if args.command == "check-config":
        print(
            f"ok: {len(settings.upstreams)} upstreams, {len(settings.models)} models, "
            f"{len(settings.experiments)} experiments; the retrain section too"
        )
    else:
        source = args.config or os.environ.get("FLYWHEEL_CONFIG") or "the built-in default"
        print(show_config(settings, source, "retrain"), end="")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    import time

    from gateway.core.store import keyspace
    from retrain.config import load as load_config
    from retrain.feedback_log import connect
    from retrain.jobs import FINAL, JobStore

    if args.command == "run" and (
        args.distill != bool(args.teacher) or (args.student and not args.distill)
    ):
        raise UsageError("--distill and --teacher MODEL go together (and --student with them)")
    settings = load_config(args.config)
    client, ks = connect(settings), keyspace(settings)  # built once for the whole command
    store = JobStore(client, ks)
    if args.command == "run":
        from pydantic import ValidationError

        from retrain.config import LocalTraining
        from retrain.cycle import Distillation, run

        if args.student:  # the base model the provider that trains fine-tunes
            section = (
                "openai" if (args.provider or settings.retrain.provider) == "openai" else "local"
            )
            trained = getattr(settings.retrain, section).model_copy(
                update={"base_model": args.student}
            )
            retrain = settings.retrain.model_copy(update={section: trained})
            settings = settings.model_copy(update={"retrain": retrain})
        if args.processes is not None:
            try:
                local = LocalTraining.model_validate(
                    {**settings.retrain.local.model_dump(), "processes": args.processes}
                )
            except ValidationError as exc:
                why = "; ".join(str(e["msg"]) for e in exc.errors())
                raise UsageError(f"--processes {args.processes}: {why}") from None
            retrain = settings.retrain.model_copy(update={"local": local})
            settings = settings.model_copy(update={"retrain": retrain})

        result = run(
            client,
            ks,
            settings,
            args.experiment,
            provider=args.provider,
            log=lambda line: print(f"retrain run: {line}", flush=True),
            distill=Distillation(args.teacher) if args.teacher else None,
            workload=args.workload,
        )
        stream = sys.stdout if result.exit_code == 0 else sys.stderr
        print(f"retrain run: {result.message}", file=stream)
        if result.job and (evaluation := result.job.get("evaluation")):
            print_evaluation(evaluation, rows=False)
        return result.exit_code
    if args.command == "jobs":
        jobs = store.list()
        print_jobs(jobs)
        if settings.retrain.openai.api_key.get_secret_value():
            print_remote_jobs(settings, store.list(1000))
        return 0
    if args.command == "lineage":
        return print_lineage(settings, store, args.model)
    job = store.get(args.job)
    if job is None:
        raise NotFound(f"no job {args.job!r}")
    if args.command == "cancel":
        if job["status"] in FINAL:
            raise RetrainError(f"{job['id']} already ended: {job['status']}")
        store.update(job["id"], status="cancelling")
        print(f"asked {job['id']} to stop")
        return 0
    shown = 0
    while True:  # status [--follow]
        for row in job["loss"][shown:]:
            print(
                "  step {step}: {parts}".format(
                    step=row["step"],
                    parts=", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "step"),
                )
            )
        shown = len(job["loss"])
        if not args.follow or job["status"] in FINAL:
            break
        time.sleep(1)
        job = store.get(job["id"]) or job
    print_jobs([job])
    if evaluation := job.get("evaluation"):
        print_evaluation(evaluation)
    if job.get("error"):
        print(f"error: {job['error']}")
    return 0


def print_jobs(jobs: list[JobRecord]) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Fine-tuning jobs")
    for col in ("job", "experiment", "provider", "dataset", "status", "created", "model"):
        table.add_column(col)
    for j in jobs:
        created = datetime.fromtimestamp(j["created"], UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            j["id"],
            j.get("experiment", ""),
            j.get("provider", ""),
            j.get("dataset_id", ""),
            j["status"],
            created,
            j.get("model_name") or j.get("result_model") or "–",
        )
    Console().print(table)


def print_remote_jobs(settings: Any, tracked: list[JobRecord]) -> None:
    """OpenAI's own list of fine-tuning jobs, each with the job that tracks it (if any):
    a job launched elsewhere, or left by a run that died, shows up here too."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from retrain.openai_ft import OpenAIProvider

    try:
        remote = OpenAIProvider(settings.retrain.openai).list_jobs()
    except Exception as exc:  # noqa: BLE001 - the local list is printed; say why not this one
        print(f"retrain jobs: OpenAI's jobs not listed: {exc}", file=sys.stderr)
        return
    by_remote: dict[str, str] = {}
    for j in tracked:  # newest first: a retried job is shown with its latest tracker
        if j.get("provider_job"):
            by_remote.setdefault(str(j["provider_job"]), j["id"])
    table = Table(title="OpenAI fine-tuning jobs")
    for col in ("openai job", "status", "model", "result", "created", "tracked by"):
        table.add_column(col)
    for r in remote:
        created = datetime.fromtimestamp(r["created_at"], UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            r["id"],
            r["status"],
            r["model"],
            r["fine_tuned_model"] or "–",
            created,
            by_remote.get(r["id"], "not tracked"),
        )
    Console().print(table)


def print_evaluation(ev: Evaluation, rows: bool = True) -> None:
    """The gate's result: one line per source, the verdict, and (``rows``) one table
    row per example."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "outcome" not in ev:  # recorded before the gate had sources
        print(ev["reason"])
        return
    metric = ev["config"]["metric"]
    table = Table(title=f"Evaluation of {ev['candidate']} against {ev['control']}: {ev['outcome']}")
    for col in (
        "source",
        "examples",
        "control",
        "candidate",
        f"gain ({metric})",
        "exact match",
        "valid JSON",
        "same language",
        "passed",
    ):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, s in (("test", ev.get("test")), ("golden", ev.get("golden"))):
        if not s:
            continue
        gain = s.get("gain") or {}
        valid = (
            f"{s['control_valid_json']:.0%} → {s['candidate_valid_json']:.0%}"
            if "json_examples" in s
            else "–"
        )
        same = (
            f"{s['control_same_language']:.0%} → {s['candidate_same_language']:.0%}"
            if "control_same_language" in s
            else "–"
        )
        table.add_row(
            source,
            str(s["n"]),
            f"{s['control_' + metric]:.3f}",
            f"{s['candidate_' + metric]:.3f}",
            f"{gain['estimate']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]" if gain else "–",
            f"{s['control_exact']:.0%} → {s['candidate_exact']:.0%}",
            valid,
            same,
            "yes" if s["passed"] else "NO",
        )
    judge = ev.get("judge")
    if judge:
        rate = judge["win_rate"]
        table.add_row(
            f"judge {judge['model']}",
            str(judge["n"]),
            f"{judge['losses']} wins",
            f"{judge['wins']} wins",
            f"win rate {rate['estimate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]",
            f"{judge['ties']} ties",
            f"{judge['inconsistent']} inconsistent",
            "",
            "yes" if judge["passed"] else "NO",
        )
    if rows and ev["rows"]:
        console.print(example_table(ev["rows"], metric, console.width))
    console.print(table)
    print(f"rule: {ev['rule']}")
    if ev.get("tokenizer"):
        print(f"answer budgets (max_tokens) counted by: {ev['tokenizer']}")
    print(ev["reason"])


def _cut(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def example_table(rows: list[dict[str, Any]], metric: str, width: int) -> Any:
    """Every example, one line each: prompt, expected, both answers (cut to share what
    ``width`` leaves), the scores, the judge's verdicts."""
    from rich.table import Table

    cells = []
    for i, row in enumerate(rows, 1):
        ctl, cand = row["control"], row["candidate"]
        exact = f"{'✓' if ctl['exact'] else '✗'}→{'✓' if cand['exact'] else '✗'}"
        if "valid_json" in ctl:
            exact += f" JSON {'✓' if ctl['valid_json'] else '✗'}→"
            exact += "✓" if cand["valid_json"] else "✗"
        verdicts = row.get("judge")
        judged = (
            f"{verdicts['verdict']} ({verdicts['candidate_first']}/{verdicts['control_first']})"
            if verdicts
            else "–"
        )
        scores = f"{float(ctl[metric]):.3f}→{float(cand[metric]):.3f} ({row['gain']:+.3f})"
        cells.append(
            [
                str(i),
                row["source"],
                row["prompt"],
                row["expected"],
                ctl["answer"],
                cand["answer"],
                scores,
                exact,
                judged,
            ]
        )
    heads = ["#", "source", "prompt", "expected", "control", "candidate", metric, "exact", "judge"]
    texts = (2, 3, 4, 5)
    fixed = sum(
        max(len(heads[c]), *(len(r[c]) for r in cells)) + 3
        for c in range(len(heads))
        if c not in texts
    )
    text_width = max(12, (width - fixed - 4) // len(texts) - 3)
    table = Table(title="Per example (judge: verdict (candidate first/control first))")
    for head in heads:
        table.add_column(head, no_wrap=True)
    for r in cells:
        table.add_row(*(_cut(v, text_width) if c in texts else v for c, v in enumerate(r)))
    return table


def print_lineage(settings: Any, store: Any, model: str) -> int:
    from retrain.gateway_client import Gateway

    job = next((j for j in store.list(1000) if j.get("model_name") == model), None)
    info: dict[str, Any]
    try:
        info = dict(Gateway(settings).model(model))
    except (RuntimeError, OSError) as exc:
        info = {"error": str(exc)}
    lineage = info.get("lineage") or {}
    job_id = lineage.get("job") or (job or {}).get("id")
    job = store.get(job_id) if job_id else job
    print(f"model {model}: {info.get('adapter_path') or info.get('model') or info.get('error')}")
    if job:
        print(f"  ← job {job['id']} ({job['provider']}, {job['status']})")
        print(
            f"  ← dataset {job['dataset_id']} at {job['dataset_path']} "
            f"(parent: {job.get('dataset_parent') or 'none'})"
        )
        if job.get("evaluation"):
            print(f"  evaluation: {job['evaluation']['reason']}")
    for exp in info.get("experiments") or []:
        print(f"  → arm of experiment {exp} (report: gateway report {exp})")
    return 0 if job or info.get("lineage") else 1


def print_summary(manifest: Manifest) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Dataset {manifest['id']} of {manifest['experiment']} "
        f"(parent: {manifest['parent'] or 'none'})"
    )
    for col in ("file", "examples", "tokens", "by source"):
        table.add_column(col, justify="left" if col in ("file", "by source") else "right")
    for name in (
        "train",
        "validation",
        "test",
        "preference",
        "preference_validation",
        "preference_test",
    ):
        if name in manifest["counts"]:
            sources = ", ".join(f"{k} {v}" for k, v in sorted(manifest["by_source"][name].items()))
            table.add_row(
                name, str(manifest["counts"][name]), str(manifest["tokens"][name]), sources
            )
    console = Console()
    console.print(table)
    if d := manifest.get("distill"):
        console.print(f"distilled from {d['teacher']}: {d['answers']} answers read")
    if manifest.get("workload"):
        console.print(f"workload: {manifest['workload']}")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(manifest["dropped"].items())) or "none"
    console.print(
        f"new examples: {manifest['new_examples']}; dropped: {dropped}; "
        f"events: {len(manifest['feedback_events'])}; "
        f"review queue: +{manifest['review_queue']['added']}"
    )
    for c in manifest["cost_estimates"]:
        console.print(
            f"estimated cost: {c['provider']} {c['model']}, {c['epochs']} epochs, "
            f"{c['tokens']} tokens: {c['cost']:.4f}"
        )
