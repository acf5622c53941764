"""Ratings leave Redis after ``feedback.hot_s``: still read, still replaced, counted once.

A gateway whose rating window is two seconds and whose archiver writes at once, on one
Redis and on the 3-master cluster, in front of the instant ``fixed-*`` upstream.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator

import httpx
import pytest

from .conftest import CLIENT
from .fixed_gateway import fixed_gateway
from .multilingual import pairs
from .polling import eventually
from .services import GatewayProcess
from .stores import STORES, Store, store_for

HOT_DB = 1  # this module's ratings stay out of the other tests' database
HOT_S = 2.0  # (the archive is asked once a response is 1.8 s old)


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, HOT_DB)


@pytest.fixture(scope="module")
def gateway(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("hot-ratings")
    with fixed_gateway(
        store,
        workdir,
        feedback={"hot_s": HOT_S},
        archive={"url": str(workdir / "archive"), "every_s": 0.2, "max_wait_s": 0},
    ) as (gw, _):
        yield gw


def answer(gw: GatewayProcess, prompt: str, user: str) -> str:
    body = {"model": "default", "user": user, "messages": [{"role": "user", "content": prompt}]}
    resp = httpx.post(gw.base_url + "/chat/completions", json=body, headers=CLIENT, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def aggregate(store: Store, arm: str) -> dict[str, float]:
    with store.client() as r:
        raw = r.hgetall(store.ks.aggregate("default", arm))
    got = {k.decode(): float(v) for k, v in raw.items()}
    return {f: got.get(f, 0.0) for f in ("count", "score_sum", "failures", "corrections")}


def ratings(gw: GatewayProcess, rid: str) -> list[dict[str, object]]:
    resp = httpx.get(gw.base_url + f"/feedback/{rid}", headers=CLIENT, timeout=30)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


CASES = [(language, form) for language in ("en", "th", "vi") for form in ("NFC", "NFD")]


@pytest.mark.slow
@pytest.mark.parametrize(("language", "form"), CASES)
def test_a_rating_past_the_hot_window_is_read_and_replaced_from_the_archive(
    gateway: GatewayProcess, store: Store, language: str, form: str
) -> None:
    question, fix = pairs(language, 1)[0]
    question, fix = (unicodedata.normalize(form, t) for t in (question, fix))
    user = f"hot-{language}-{form}-{time.time_ns()}"
    rid = answer(gateway, question, user)
    first = httpx.post(
        gateway.base_url + "/feedback",
        json={"response_id": rid, "rating": "down", "correction": fix},
        headers=CLIENT,
    )
    assert first.status_code == 201, first.text
    arm = next(str(r["arm"]) for r in ratings(gateway, rid))
    before = aggregate(store, arm)

    with store.client() as r:  # the record leaves Redis once its window has passed
        eventually(lambda: not r.exists(store.ks.feedback(rid)), "the rating left Redis", 30)
    (old,) = eventually(lambda: ratings(gateway, rid), "the rating read from the archive", 30)
    assert old["correction"] == fix and old["rating"] == "down" and old["rater"] == user

    second = httpx.post(
        gateway.base_url + "/feedback", json={"response_id": rid, "rating": "up"}, headers=CLIENT
    )
    assert second.status_code == 201, second.text
    assert second.json()["replaced"] is True  # the earlier rating was found in the archive
    after = aggregate(store, arm)
    # replaced, not counted twice: one rating less failing, one correction less
    assert {k: round(after[k] - before[k], 6) for k in after} == {
        "count": 0,
        "score_sum": 1.0,
        "failures": -1,
        "corrections": -1,
    }
    (now,) = ratings(gateway, rid)  # the archive keeps both: the latest is the one read
    assert now["rating"] == "up" and now["correction"] is None


def test_a_group_nobody_reads_shows_its_lag_in_the_metrics(
    gateway: GatewayProcess, store: Store
) -> None:
    rid = answer(gateway, "Where is my parcel?", "hot-lag")
    with store.client() as r:
        r.xgroup_create(store.ks.feedback_stream, "retrain.gone", id="$", mkstream=True)
        rated = httpx.post(
            gateway.base_url + "/feedback", json={"response_id": rid, "rating": 4}, headers=CLIENT
        )
        assert rated.status_code == 201, rated.text
        time.sleep(1.5)  # the rating waits a while, unread by the group

        def lag() -> float:
            text = httpx.get(gateway.url + "/metrics", timeout=30).text
            for line in text.splitlines():
                if line.startswith("flywheel_stream_group_lag_seconds{") and (
                    'group="retrain.gone"' in line
                ):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        assert lag() >= 1.0
        assert (
            f"flywheel_feedback_hot_window_seconds {HOT_S}"
            in httpx.get(gateway.url + "/metrics", timeout=30).text
        )
