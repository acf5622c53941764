"""Every console page photographed into ``docs/console/``.

Run ``python -m tests.console_screenshots`` from the repository root.

Starts its own Redis and a fixed-upstream gateway, makes traffic, ratings, a dataset
version, a job and changes of an experiment through the gateway, then photographs
each page in Debian's chromium (Playwright). Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx
import redis

from gateway.core import keys

from .conftest import ADMIN_KEY
from .console_stack import (
    ADMIN,
    CHROMIUM,
    REVIEWER_KEY,
    chat_and_rate,
    console_gateway,
    new_experiment,
    retrain_build,
)
from .services import RedisProcess

PAGES = {  # file name → path (``{exp}``, ``{rid}``: filled in)
    "login": "/ui/login",
    "overview": "/ui/",
    "experiment": "/ui/experiments/{exp}",
    "interactions": "/ui/interactions",
    "interaction": "/ui/interactions/{rid}",
    "review-queue": "/ui/review",
    "review-item": "/ui/review/next",
    "datasets": "/ui/datasets",
    "jobs": "/ui/jobs",
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshots of the console's pages.")
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from retrain.jobs import JobStore

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis")
        server.start()
        try:
            with console_gateway(server, Path(tmp) / "gw", db=0) as (gw, config):
                exp = new_experiment(gw, "support")
                for step, weight in enumerate((10, 30, 50)):
                    if step:
                        r = httpx.put(
                            f"{gw.url}/admin/experiments/{exp}",
                            headers=ADMIN,
                            json={
                                "arms": [
                                    {"model": "fixed-a", "weight": 100 - weight},
                                    {"model": "fixed-b", "weight": weight},
                                ],
                                "fallback": "fixed-c",
                            },
                        )
                        r.raise_for_status()
                    chat_and_rate(gw, exp, 12, rating="up", prefix=f"v{step} good")
                    chat_and_rate(gw, exp, 4, rating="down", prefix=f"v{step} bad")
                ids = chat_and_rate(gw, exp, 6, rating=None, prefix="unrated")
                rid = chat_and_rate(gw, exp, 1, rating="down", prefix="refund")[0]
                retrain_build(config, exp)
                jobs = JobStore(redis.Redis(port=server.port, db=0), keys.PLAIN_KEYSPACE)
                job = jobs.create(
                    experiment=exp,
                    provider="local",
                    dataset_id="ds-5f1c0a2b9e7d",
                    dataset_path="datasets/ds-5f1c0a2b9e7d",
                    params={},
                )
                jobs.update(
                    job["id"],
                    status="registered",
                    model_name="fixed-b",
                    loss=[
                        {
                            "step": s,
                            "loss": 2.2 / (1 + 0.3 * s),
                            "eval_loss": 2.4 / (1 + 0.25 * s) if s % 5 == 0 else None,
                        }
                        for s in range(1, 31)
                    ],
                    evaluation={
                        "outcome": "passed",
                        "passed": True,
                        "reason": "test split: mean gain 0.31 [0.12, 0.5]",
                        "rows": [],
                    },
                )
                shoot(sync_playwright, gw.url, exp, rid or ids[0], args.out)
        finally:
            server.stop()


def shoot(sync_playwright: object, url: str, exp: str, rid: str, out: Path) -> None:
    with sync_playwright() as p:  # type: ignore[operator]
        browser = p.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.goto(url + "/ui/login")
        page.screenshot(path=str(out / "login.png"))
        for role, key in (("admin", ADMIN_KEY), ("reviewer", REVIEWER_KEY)):
            page.goto(url + "/ui/login")
            page.get_by_label("Admin or reviewer key").fill(key)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
            for name, path in PAGES.items():
                if name == "login" or (role == "admin") == name.startswith("review"):
                    continue
                page.goto(url + path.format(exp=exp, rid=rid))
                page.screenshot(path=str(out / f"{name}.png"))
            context.clear_cookies()
        browser.close()
    print(f"screenshots: {', '.join(sorted(str(f) for f in out.glob('*.png')))}")


if __name__ == "__main__":
    main()
