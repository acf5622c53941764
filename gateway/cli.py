"""``gateway``: serve, check a config, or bring the whole local stack up.

::

    gateway serve [--config FILE] [--host H] [--port P] [--workers N]
    gateway check-config [--config FILE]
    gateway up [--model DIR_OR_HF_NAME] [--port 8000] [--vllm-port 8001]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, Settings, load_settings


def load_config_or_exit(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"gateway: config error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(settings: Settings, *, host: str, port: int, workers: int, config: str | None) -> None:
    import uvicorn

    from .app import create_app
    from .store import start_embedded

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
        return
    # Several workers share one Redis: the embedded one is started here, in the parent.
    embedded = None
    if not settings.redis_url:
        embedded = start_embedded(settings.data_dir)
        os.environ["FLYWHEEL_REDIS_URL"] = embedded.url
    if config:
        os.environ["FLYWHEEL_CONFIG"] = str(Path(config).resolve())
    try:
        uvicorn.run(
            "gateway.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()


def up(args: argparse.Namespace) -> None:
    """vLLM (tiny model unless --model) + the gateway with embedded Redis; Ctrl-C stops both."""
    from .localstack import VLLMServer

    settings = load_config_or_exit(args.config)
    model = args.model
    if model is None:
        from retrain.tiny_model import build_tiny_model

        model = str(build_tiny_model(settings.data_dir / "models" / "tiny"))
    log_path = settings.data_dir / "vllm.log"
    print(f"gateway up: starting vLLM on 127.0.0.1:{args.vllm_port} (log: {log_path}) ...")
    with VLLMServer(model, port=args.vllm_port, log_path=log_path) as vllm:
        print(
            f"gateway up: vLLM ready at {vllm.base_url}; gateway on http://{args.host}:{args.port}"
        )
        serve(settings, host=args.host, port=args.port, workers=1, config=args.config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "YAML config file (default: $FLYWHEEL_CONFIG, else the built-in local default)"

    p = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--host", default=None, help="default: listen.host from the config")
    p.add_argument("--port", type=int, default=None, help="default: listen.port from the config")
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("--config", default=None, help=config_help)

    p = sub.add_parser("up", help="start vLLM (tiny model) and the gateway on this machine")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--model", default=None, help="model dir or HF name (default: the tiny model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--vllm-port", type=int, default=8001)

    args = parser.parse_args(argv)
    if args.command == "check-config":
        s = load_config_or_exit(args.config)
        print(
            f"ok: {len(s.upstreams)} upstreams, {len(s.models)} models, "
            f"{len(s.experiments)} experiments"
        )
    elif args.command == "serve":
        s = load_config_or_exit(args.config)
        serve(
            s,
            host=args.host or s.listen.host,
            port=args.port or s.listen.port,
            workers=args.workers,
            config=args.config,
        )
    elif args.command == "up":
        up(args)
    return 0
