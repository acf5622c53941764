"""``gateway``: serve, check a config, or bring the whole local stack up.

::

    gateway serve [--config FILE] [--host H] [--port P] [--workers N]
    gateway archiver [--config FILE]   (what serve --workers N starts: see gateway.archiver)
    gateway check-config [--config FILE]
    gateway config show [--config FILE]
    gateway up [--model DIR_OR_HF_NAME] [--port 8000] [--vllm-port 8001]
    gateway report NAME [--config FILE] [--json] [--since YYYY-MM-DD [--until YYYY-MM-DD]]
    gateway experiments resume NAME [--config FILE] [--key KEY] [--json]
    gateway keys create|list|revoke|rotate|audit ...   (see gateway.admin.keys_cli)
    gateway migrate-keys --from URL [--config FILE] [--replace]   (see gateway.ops.migrate)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import getpass
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.admin import keys_cli
from gateway.core.config import DEFAULT_CONFIG, Settings, build_settings, load_or_exit, show_config
from gateway.core.documents import ExperimentState, Report


def load_config_or_exit(path: str | None) -> Settings:
    return load_or_exit(path, Settings, "gateway")


LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def log_config() -> dict[str, Any]:
    """One logging config for every process of the gateway (the parent, each worker, the
    archiver): time, level, process id and logger on each line, to stderr. uvicorn
    applies it in each worker it starts; its own loggers go to the root's handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {
            name: {"handlers": [], "level": "INFO", "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging() -> None:
    import logging.config

    logging.config.dictConfig(log_config())


def serve(settings: Settings, *, host: str, port: int, workers: int, config: str | None) -> None:
    from gateway.serving.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    configure_logging()
    # Several workers write their metrics to files that /metrics sums (prometheus-client's
    # multiprocess mode): a directory emptied now, given to the workers in the environment.
    metrics_dir, own_dir = os.environ.get(MULTIPROC_ENV), False
    if workers > 1 and not metrics_dir:
        metrics_dir, own_dir = tempfile.mkdtemp(prefix="flywheel-metrics-"), True
    if metrics_dir:
        os.environ[MULTIPROC_ENV] = str(prepare_multiprocess_dir(metrics_dir))
    try:
        _serve(settings, host=host, port=port, workers=workers, config=config)
    finally:
        if own_dir and metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(settings: Settings, *, host: str, port: int, workers: int, config: str | None) -> None:
    import uvicorn

    from gateway.app import create_app, serving_app
    from gateway.core.store import start_embedded

    if workers == 1:
        uvicorn.run(
            serving_app(create_app(settings)),
            host=host,
            port=port,
            log_level="info",
            log_config=log_config(),
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown.grace_s,
        )
        return
    # Several workers share one Redis: the embedded one is started here, in the parent.
    embedded = None
    if not settings.redis_url:
        embedded = start_embedded(settings.data_dir)
        os.environ["FLYWHEEL_REDIS_URL"] = embedded.url
    if config:
        os.environ["FLYWHEEL_CONFIG"] = str(Path(config).resolve())
    # One archiver for all the workers, in a process of its own (gateway/archiver.py): its
    # memory (Parquet, DuckDB) is paid once, never by a worker that serves requests.
    archiver = None
    if settings.archive.enabled:
        from gateway import archiver as archiver_process

        os.environ[archiver_process.ARCHIVER_ENV] = "process"
        archiver = archiver_process.start()
    try:
        uvicorn.run(
            "gateway.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            log_config=log_config(),
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown.grace_s,
        )
    finally:
        if archiver is not None:
            from gateway.archiver import stop_process

            stop_process(archiver)
        if embedded is not None:
            embedded.stop()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def up(args: argparse.Namespace) -> None:
    """vLLM (tiny model unless --model) + the gateway with embedded Redis; Ctrl-C stops both.

    While it runs, ``data_dir/stack.json`` says where both serve, so that ``retrain`` in
    the same directory finds them on any ports (``flywheel_stack.discovery``)."""
    from flywheel_stack import VLLMServer
    from flywheel_stack.discovery import announced, local_url

    if args.config or os.environ.get("FLYWHEEL_CONFIG"):
        settings = load_config_or_exit(args.config)
    else:  # the built-in default, with its upstream where this vLLM will listen
        doc = copy.deepcopy(DEFAULT_CONFIG)
        doc["upstreams"]["local"]["base_url"] = f"http://127.0.0.1:{args.vllm_port}/v1"
        settings = build_settings(doc)
        if args.model is not None:
            print(
                "gateway up: note: the built-in retrain settings are tuned for the tiny model; "
                f"for {args.model} write a config (examples/local.yaml) and pass --config",
                file=sys.stderr,
            )
    # uvicorn re-raises the SIGTERM it handled once it has shut down: make that an exit
    # that unwinds (and so stops vLLM below), not an instant death that orphans it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    model = args.model
    if model is None:
        from flywheel_stack.tiny_model import build_tiny_model

        model = str(build_tiny_model(settings.data_dir / "models" / "tiny"))
    rank = max((u.max_lora_rank or 0 for u in settings.upstreams.values()), default=0)
    log_path = settings.data_dir / "vllm.log"
    print(f"gateway up: starting vLLM on 127.0.0.1:{args.vllm_port} (log: {log_path}) ...")
    with VLLMServer(
        model, port=args.vllm_port, log_path=log_path, max_lora_rank=max(rank, 16)
    ) as vllm:
        print(
            f"gateway up: vLLM ready at {vllm.base_url}; gateway on http://{args.host}:{args.port}"
        )
        with announced(
            settings.data_dir,
            gateway_url=local_url(args.host, args.port),
            vllm_base_url=vllm.base_url,
        ):
            serve(settings, host=args.host, port=args.port, workers=1, config=args.config)


async def experiment_report(
    settings: Settings,
    name: str,
    since: str | None = None,
    until: str | None = None,
    workload: str | None = None,
) -> Report | dict[str, Any]:
    """The report of one experiment, read from the same Redis the gateway uses; with a
    window (``since``), over those days from the archive (of one ``workload``'s requests
    when given: only the archive's records name it)."""
    from gateway.control.control import Control
    from gateway.core import access, params, store
    from gateway.serving.metrics import Metrics
    from gateway.serving.upstream import UpstreamClient

    redis, embedded = await store.open_store(settings)
    try:
        metrics = Metrics()
        control = Control(
            redis=redis,
            ks=store.keyspace(settings),
            settings=settings,
            upstream=UpstreamClient(metrics, settings.upstreams),
            metrics=metrics,
        )
        await control.load()
        exp = control.router.experiments.get(name)
        operator = access.operator(f"cli:{getpass.getuser()}")
        owner = exp.tenant if exp is not None else access.NOBODY
        access.check(operator, "see", access.Resource("experiment", name, owner))
        params.check_workload_window(workload, since, until, "--since")
        if since is None and until is None:
            return await control.report(name)
        from gateway.ops import archive_query

        state = await control.experiments.state(name)
        return await archive_query.windowed(settings, state, since, until, workload)
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def resume_experiment(settings: Settings, name: str, key: str | None) -> ExperimentState:
    """Let the decider act again on ``name`` (``POST /admin/experiments/{name}/resume``),
    in the Redis the config names. With ``key``, as that key's holder, who must be an
    admin of the experiment's tenant (the admin API's rule); without, as ``cli:$USER``,
    an operator with the config (and so the Redis) in hand."""
    import getpass

    from gateway.control.experiments import Experiments
    from gateway.control.live import LiveState
    from gateway.core import access, store
    from gateway.core.auth import KeyRing, digest
    from gateway.core.errors import PermissionDenied

    redis, embedded = await store.open_store(settings)
    try:
        ks = store.keyspace(settings)
        live = LiveState(redis, ks, settings)
        with store.translated():
            await live.load()
        who = f"cli:{getpass.getuser()}"
        if key is not None:
            reviewers = {digest(k.key.get_secret_value()) for k in settings.auth.reviewer_keys}
            if digest(key.strip()) in reviewers:
                raise PermissionDenied("Resuming needs an admin key; a reviewer key was given.")
            ring = KeyRing(
                settings.auth.api_keys, settings.auth.admin_keys, runtime=lambda: live.principals
            )
            by = ring.authenticate_admin(f"Bearer {key.strip()}")
            exp = live.router.experiments.get(name)
            owner = exp.tenant if exp is not None else access.NOBODY
            access.check(by, "change", access.Resource("experiment", name, owner))
            who = by.name
        return await Experiments(redis, ks, settings, live).resume(name, who)
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def print_window_report(doc: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(x: Any, fmt: str = "{:g}") -> str:
        return "–" if x is None else fmt.format(x)

    def day(ts: float | None) -> str:
        return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))

    console = Console() if sys.stdout.isatty() else Console(width=200)
    arms = Table(
        title=f"Experiment {doc['experiment']}, {doc['since']} to {doc['until']}"
        + (f", workload {doc['workload']}" if doc.get("workload") else "")
        + " (from the archive)"
    )
    for col in (
        "arm",
        "requests",
        "error rate",
        "p50 / p95 ms",
        "prompt / completion tokens",
        "rated users",
        "ratings",
        "mean score (95% CI)",
        "failures",
        "corrections",
    ):
        arms.add_column(col, justify="left" if col == "arm" else "right", overflow="fold")
    for a in doc["arms"]:
        r, ci = a["ratings"], a["ratings"]["ci95"]
        arms.add_row(
            a["model"],
            str(a["requests"]),
            num(a["error_rate"], "{:.1%}"),
            f"{num(a['latency_ms']['p50'], '{:.1f}')} / {num(a['latency_ms']['p95'], '{:.1f}')}",
            f"{a['tokens']['prompt']} / {a['tokens']['completion']}",
            str(r["users"]),
            str(r["all"]),
            f"{num(r['mean_score'], '{:.3f}')} ({num(ci[0], '{:.3f}')}–{num(ci[1], '{:.3f}')})",
            num(r["failure_rate"], "{:.1%}"),
            str(r["corrections"]),
        )
    console.print(arms)
    covers = doc["archive"]["covers"]
    if covers is None:
        console.print("The archive holds nothing yet: every number is zero.")
    else:
        console.print(
            f"The archive covers {day(covers[0])} to {day(covers[1])} UTC of this window "
            f"(archived up to {day(doc['archive']['archived_until'])}); interactions and "
            "ratings not archived yet are not included."
        )


def same_language(lang: dict[str, Any] | None) -> str:
    """An arm's share of answers in the question's language, and of how many."""
    if not lang or lang["share"] is None:
        return "–"
    return f"{lang['share']:.1%} of {lang['known']}"


def print_report(doc: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(x: Any, fmt: str = "{:g}") -> str:
        return "–" if x is None else fmt.format(x)

    # Piped output has no terminal width: do not squeeze it into rich's default 80 columns.
    # In a narrow terminal, cells wrap (fold) rather than being cut to "int…".
    console = Console() if sys.stdout.isatty() else Console(width=200)
    arms = Table(
        title=f"Experiment {doc['experiment']} (version {doc['version']}), "
        f"control: {doc['control']}"
    )
    for col in (
        "arm",
        "intended",
        "assigned",
        "requests",
        "error rate",
        "p50 / p95 ms",
        "TTFT p50 ms",
        "ratings",
        "mean score (95% CI)",
        "failures",
        "corrections",
        "cost / 1k req",
        "same language",
    ):
        arms.add_column(col, justify="left" if col == "arm" else "right", overflow="fold")
    for a in doc["arms"]:
        r = a["ratings"]
        ci = r["ci95"]
        arms.add_row(
            a["model"],
            f"{a['intended_share']:.1%}",
            str(a["assigned"]),
            str(a["requests"]),
            num(a["error_rate"], "{:.1%}"),
            f"{num(a['latency_ms']['p50'], '{:.1f}')} / {num(a['latency_ms']['p95'], '{:.1f}')}",
            num(a["ttft_ms"]["p50"], "{:.1f}"),
            str(r["count"]),
            f"{num(r['mean_score'], '{:.3f}')} ({num(ci[0], '{:.3f}')}–{num(ci[1], '{:.3f}')})",
            num(r["failure_rate"], "{:.1%}"),
            str(r["corrections"]),
            num(a["cost_per_1k_requests"], "{:.4f}"),
            same_language(a.get("language")),
        )
    console.print(arms)
    for saving in doc.get("savings") or []:
        console.print(f"Cost: {saving['text']}")
    from gateway.control.report import LANGUAGE_SAMPLE

    console.print(
        "same language: the share of answers in the language of the question, over each "
        f"arm's latest {LANGUAGE_SAMPLE} answers of this version still in Redis"
    )
    srm = doc["srm"]
    console.print(
        f"Sample ratio (version {srm['version']}, {srm['assigned']} users assigned): "
        f"chi² = {num(srm['chi2'], '{:.2f}')}, p = {num(srm['p_value'], '{:.3g}')}"
        + ("  [bold red]MISMATCH[/]" if srm["mismatch"] else "  ok")
    )
    if doc["comparisons"]:
        cmp = Table(title="Candidates vs control")
        for col in (
            "candidate",
            "test",
            "difference (95% CI)",
            "p-value",
            "P(better)",
            "guardrails",
            "verdict",
        ):
            cmp.add_column(col, overflow="fold")
        for c in doc["comparisons"]:
            ci = c["ci95"]
            cmp.add_row(
                c["candidate"],
                c["test"] or "–",
                f"{num(c['difference'], '{:+.3f}')} "
                f"({num(ci[0], '{:+.3f}')}…{num(ci[1], '{:+.3f}')})",
                num(c["p_value"], "{:.3g}")
                + (
                    f" (ramp {num(c.get('ramp_p_value'), '{:.3g}')}, {c['strata']} stages)"
                    if c.get("strata", 0) > 1
                    else ""
                ),
                num(c["prob_better"], "{:.1%}"),
                "ok" if c["guardrails_ok"] else "[red]broken[/]",
                c["verdict"],
            )
        console.print(cmp)
    d = doc["decision"]
    colour = {"promote": "green", "rollback": "red"}.get(d["action"], "yellow")
    target = f" {d['model']}" if d["model"] else ""
    console.print(f"Decision: [bold {colour}]{d['action']}{target}[/]")
    for reason in d["reasons"]:
        console.print(f"  - {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "YAML config file (default: $FLYWHEEL_CONFIG, else the built-in local default)"

    p = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--host", default=None, help="default: listen.host from the config")
    p.add_argument("--port", type=int, default=None, help="default: listen.port from the config")
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser(
        "archiver", help="run the archiver alone (serve --workers N starts one for its workers)"
    )
    p.add_argument("--config", default=None, help=config_help)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("--config", default=None, help=config_help)

    p = sub.add_parser("config", help="show the effective config")
    p.add_argument("action", choices=["show"], help="show: print it as YAML (secrets masked)")
    p.add_argument("--config", default=None, help=config_help)

    p = sub.add_parser("up", help="start vLLM (tiny model) and the gateway on this machine")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--model", default=None, help="model dir or HF name (default: the tiny model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--vllm-port", type=int, default=8001)

    p = sub.add_parser("report", help="print an experiment's A/B report and decision")
    p.add_argument("name", help="the experiment")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--since",
        default=None,
        metavar="YYYY-MM-DD",
        help="report over the days from this one (UTC), from the archive",
    )
    p.add_argument(
        "--until", default=None, metavar="YYYY-MM-DD", help="... to this one (default: today)"
    )
    p.add_argument(
        "--workload",
        default=None,
        metavar="NAME",
        help="with --since: only the requests of this workload (their metadata.workload)",
    )

    p = sub.add_parser("experiments", help="act on an experiment's live state")
    actions = p.add_subparsers(dest="action", required=True)
    one = actions.add_parser(
        "resume", help="let the decider act again after a person's change paused it"
    )
    one.add_argument("name", help="the experiment")
    one.add_argument("--config", default=None, help=config_help)
    one.add_argument(
        "--key",
        default=os.environ.get("FLYWHEEL_ADMIN_KEY"),
        help="act as this admin key's holder (default: $FLYWHEEL_ADMIN_KEY, else cli:$USER)",
    )
    one.add_argument("--json", action="store_true", help="print the new state as JSON")

    keys_cli.add_parser(sub, config_help)

    p = sub.add_parser(
        "migrate-keys", help="copy a single Redis's keys to the config's Redis (a cluster)"
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="the old Redis")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--replace", action="store_true", help="overwrite keys the target has")

    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys_cli.main(load_config_or_exit(args.config), args)
    if args.command == "migrate-keys":
        from gateway.ops.migrate import main as migrate_keys

        return migrate_keys(load_config_or_exit(args.config), args.source, args.replace)
    if args.command == "experiments":
        from gateway.core.errors import GatewayError
        from gateway.core.params import checked_workload

        s = load_config_or_exit(args.config)
        try:
            doc = asyncio.run(resume_experiment(s, args.name, args.key))
        except GatewayError as exc:
            print(f"gateway experiments resume: {exc.message}", file=sys.stderr)
            return 1
        if args.json:
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        else:
            print(f"{doc['name']}: automatic decisions resumed at version {doc['version']}")
        return 0
    if args.command == "check-config":
        s = load_config_or_exit(args.config)
        print(
            f"ok: {len(s.upstreams)} upstreams, {len(s.models)} models, "
            f"{len(s.experiments)} experiments (the retrain section: `retrain check-config`)"
        )
    elif args.command == "config":
        s = load_config_or_exit(args.config)
        source = args.config or os.environ.get("FLYWHEEL_CONFIG") or "the built-in default"
        print(show_config(s, source), end="")
    elif args.command == "serve":
        s = load_config_or_exit(args.config)
        serve(
            s,
            host=args.host or s.listen.host,
            port=args.port or s.listen.port,
            workers=args.workers,
            config=args.config,
        )
    elif args.command == "archiver":
        from gateway.archiver import run

        configure_logging()
        return run(load_config_or_exit(args.config))
    elif args.command == "up":
        up(args)
    elif args.command == "report":
        from gateway.core.errors import GatewayError
        from gateway.core.params import checked_workload

        s = load_config_or_exit(args.config)
        try:
            workload = checked_workload(args.workload, "--workload", blank=False)
            rep = asyncio.run(experiment_report(s, args.name, args.since, args.until, workload))
        except GatewayError as exc:
            print(f"gateway report: {exc.message}", file=sys.stderr)
            return 1
        if args.json:
            print(orjson.dumps(rep, option=orjson.OPT_INDENT_2).decode())
        elif rep["object"] == "experiment.window_report":
            print_window_report(rep)
        else:
            print_report(rep)
    return 0
