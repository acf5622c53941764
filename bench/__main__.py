"""``python -m bench``: benchmark Flywheel against a bare proxy and peer gateways.

::

    python -m bench run [--mode all|throughput|streaming|arms|log|icount[,...]] [--quick]
                        [--duration S] [--peers auto|none|litellm,portkey] [--out FILE]
    python -m bench profile [--tool auto|py-spy|cprofile] [--system gateway|floor] [--native]
                            [--stream] [--arms N] [--duration S] [--out DIR]
    python -m bench whatif [--duration S] [--arms N] [--stream] [VARIANT ...]
    python -m bench train [--small] [--batch B] [--seq S] [--variants ...] [shape options]

Run from the repository root with the project's venv (``.venv/bin/python -m bench run``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .procs import BenchError
from .report import render
from .runner import MODES, PEERS, Options, installed_peers, run


def parse_peers(value: str) -> list[str]:
    if value == "auto":
        return installed_peers()
    if value == "none":
        return []
    peers = [p.strip() for p in value.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s): {', '.join(unknown)}")
    return peers


def parse_modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    if modes == ["all"]:
        return modes
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s): {', '.join(unknown) or value!r} (all, {', '.join(MODES)})"
        )
    return modes


def options(args: argparse.Namespace, stamp: str) -> Options:
    modes = list(MODES) if args.mode == ["all"] else args.mode
    opts = Options(modes=modes, peers=args.peers, work_dir=Path(f"/tmp/flywheel-bench-{stamp}"))
    if args.quick:
        opts.duration_s, opts.warmup_s = 3.0, 1.0
        opts.ttft_requests, opts.slow_requests = 50, 2
        opts.arms_rounds, opts.log_records = 1, 20_000
        opts.icount_requests = 300
        opts.paired_rounds, opts.paired_s = 2, 2.0
    if args.duration is not None:
        opts.duration_s = args.duration
    opts.connections = args.connections
    opts.workers = args.workers
    return opts


def warn_if_busy() -> None:
    """Everything here shares the machine's cores: other load makes the numbers noisy."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(
            f"bench: warning: load average {load:.2f} on {cpus} CPUs before starting; "
            "other processes will skew the results",
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts = options(args, stamp)
    out = Path(args.out or f"/tmp/flywheel-bench-{stamp}.json")
    peers = ", ".join(opts.peers) or "none (bench/install-peers installs them)"
    print(f"bench: modes {', '.join(opts.modes)}; peers: {peers}; logs in {opts.work_dir}/logs")
    warn_if_busy()
    results = run(opts)
    text = render(results)  # also adds the targets to the results
    out.write_text(json.dumps(results, indent=2))
    print()
    print(text)
    print(f"\nresults: {out}  (took {results['meta']['seconds']:g} s)")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import ProfileOptions, profile

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out or f"/tmp/flywheel-bench-profile-{stamp}")
    opts = ProfileOptions(
        tool=args.tool,
        duration_s=args.duration,
        connections=args.connections,
        out_dir=out_dir,
        native=args.native,
        system=args.system,
        stream=args.stream,
        arms=args.arms,
    )
    print(profile(opts))
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from .whatif import VARIANTS, render, run_whatif

    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts = Options(modes=["whatif"], work_dir=Path(f"/tmp/flywheel-bench-whatif-{stamp}"))
    opts.duration_s = args.duration
    names = list(VARIANTS) if not args.variants else [list(VARIANTS)[0], *args.variants]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise BenchError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    print(f"bench whatif: {len(names)} variants; logs in {opts.work_dir}/logs")
    warn_if_busy()
    results = run_whatif(opts, names, arms=args.arms, stream=args.stream)
    out = Path(args.out or f"/tmp/flywheel-bench-whatif-{stamp}.json")
    out.write_text(json.dumps(results, indent=2))
    print()
    print(render(results))
    print(f"\nresults: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["train"]:  # its own options: LoRA training throughput
        from .train import main as train_main

        return train_main(args_in[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="measure and print the results table")
    p.add_argument(
        "--mode",
        type=parse_modes,
        default=["all"],
        help=f"all (the default), or one or more of {', '.join(MODES)}, comma-separated",
    )
    p.add_argument("--quick", action="store_true", help="~3 s runs, fewer samples (~1.5 min)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run (10)")
    p.add_argument("--connections", type=int, default=32, help="the loaded runs' connections")
    p.add_argument("--workers", type=int, default=1, help="gateway serve --workers N (1)")
    p.add_argument(
        "--peers",
        type=parse_peers,
        default="auto",
        help="auto (those installed), none, or a list: litellm,portkey",
    )
    p.add_argument("--out", default=None, help="results JSON (default /tmp/flywheel-bench-*.json)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("profile", help="profile Flywheel under wrk load and summarize")
    p.add_argument("--tool", choices=["auto", "py-spy", "cprofile"], default="auto")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--native", action="store_true", help="py-spy: include C extension frames")
    p.add_argument("--system", choices=["gateway", "floor"], default="gateway")
    p.add_argument("--stream", action="store_true", help="streamed requests")
    p.add_argument("--arms", type=int, default=2, help="arms of the experiment (2)")
    p.add_argument("--out", default=None, help="folder for the raw profiles")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("whatif", help="the gateway with in-process patches vs as it is")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per loaded run")
    p.add_argument("--arms", type=int, default=2, help="arms of the experiment (2)")
    p.add_argument("--stream", action="store_true", help="streamed requests, and TTFT")
    p.add_argument("variants", nargs="*", help="variant names (default: all)")
    p.add_argument("--out", default=None, help="results JSON")
    p.set_defaults(func=cmd_whatif)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
