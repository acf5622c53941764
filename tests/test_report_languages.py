"""The A/B report's language share through a real gateway: per arm, how many answers are
written in the language of the question (English, Thai and Vietnamese questions), in the
admin API's report, ``gateway report`` and the console's experiment page."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from .conftest import ADMIN, ADMIN_KEY, API_KEY, ID_SECRET
from .helpers.processes import assert_all_gone, descendants
from .scripted_upstream import ScriptedUpstream
from .services import GatewayProcess, RedisProcess

LANGUAGES_DB = 5  # this module's interactions stay out of the other tests' database

# question -> (the answer in its language, the answer in English)
QUESTIONS = {
    "คำสั่งซื้อของฉันจะมาถึงเมื่อไหร่คะ": (
        "คำสั่งซื้อของคุณจะมาถึงภายในสามวันทำการค่ะ",
        "Your order will arrive within three working days.",
    ),
    "ฉันขอคืนเงินได้อย่างไรคะ": (
        "คุณสามารถขอคืนเงินได้ภายในสามสิบวันหลังจากได้รับสินค้าค่ะ",
        "You can ask for a refund within thirty days of delivery.",
    ),
    "ร้านเปิดกี่โมงคะ": (
        "ร้านของเราเปิดทุกวันตั้งแต่เก้าโมงเช้าถึงหกโมงเย็นค่ะ",
        "Our shop is open every day from nine in the morning to six in the evening.",
    ),
    "Khi nào đơn hàng của tôi được giao?": (
        "Đơn hàng của bạn sẽ được giao trong vòng ba ngày làm việc.",
        "Your order will be delivered within three working days.",
    ),
    "Which warehouse does my parcel leave from?": (
        "Your parcel leaves the Singapore warehouse within two days.",
        "Your parcel leaves the Singapore warehouse within two days.",
    ),
}


def asked(messages: list[dict[str, Any]]) -> str:
    return str(messages[-1]["content"])


SCRIPT = {
    "local-speaker": lambda messages: QUESTIONS[asked(messages)][0],
    "english-speaker": lambda messages: QUESTIONS[asked(messages)][1],
}


@pytest.fixture(scope="module")
def gateway_languages(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    redis.Redis(port=redis_server.port, db=LANGUAGES_DB).flushdb()
    upstream = ScriptedUpstream(SCRIPT).start()
    gw = GatewayProcess(
        languages_config(redis_server, upstream), tmp_path_factory.mktemp("languages")
    )
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        upstream.stop()


def languages_config(redis_server: RedisProcess, upstream: ScriptedUpstream) -> dict[str, Any]:
    return {
        "redis_url": redis_server.url.rsplit("/", 1)[0] + f"/{LANGUAGES_DB}",
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops"}],
        },
        "upstreams": {"scripted": {"kind": "vllm", "base_url": upstream.base_url}},
        "models": {m: {"upstream": "scripted", "model": m} for m in SCRIPT},
        "experiments": {"default": {"arms": [{"model": "local-speaker"}]}},
    }


def new_experiment(gw: GatewayProcess, weights: tuple[int, int] = (50, 50)) -> str:
    name = f"lang-{uuid.uuid4().hex[:6]}"
    put(gw, name, weights)
    return name


def put(gw: GatewayProcess, name: str, weights: tuple[int, int]) -> None:
    spec = {
        "arms": [
            {"model": "local-speaker", "weight": weights[0]},
            {"model": "english-speaker", "weight": weights[1]},
        ]
    }
    r = httpx.put(f"{gw.url}/admin/experiments/{name}", json=spec, headers=ADMIN)
    assert r.is_success, r.text


def chat(gw: GatewayProcess, experiment: str, rounds: int = 2) -> None:
    """Every question ``rounds`` times to each arm (forced, with the admin key)."""
    with httpx.Client(timeout=10) as c:
        for arm in SCRIPT:
            for _ in range(rounds):
                for q in QUESTIONS:
                    r = c.post(
                        gw.base_url + "/chat/completions",
                        headers={**ADMIN, "x-flywheel-arm": arm},
                        json={"model": experiment, "messages": [{"role": "user", "content": q}]},
                    )
                    assert r.status_code == 200, r.text


def report_when(gw: GatewayProcess, name: str, sample: int) -> dict[str, Any]:
    """The report once every arm's sample holds ``sample`` interactions (the log writes
    a moment after the answer)."""
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(f"{gw.url}/admin/experiments/{name}/report", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        if all(a["language"]["sample"] == sample for a in doc["arms"]):
            return doc
        assert time.monotonic() < deadline, doc["arms"]
        time.sleep(0.1)


def by_arm(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["model"]: a["language"] for a in doc["arms"]}


def resolved(schema: Any, components: dict[str, Any]) -> Any:
    """``schema`` with its ``#/components/schemas/`` references put in place."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return resolved(components[ref.rsplit("/", 1)[1]], components)
        return {k: resolved(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolved(v, components) for v in schema]
    return schema


@pytest.mark.slow
def test_thai_questions_answered_in_english_show_a_low_share_in_the_report(
    gateway_languages: GatewayProcess,
) -> None:
    gw = gateway_languages
    name = new_experiment(gw)
    chat(gw, name)
    doc = report_when(gw, name, sample=2 * len(QUESTIONS))
    shares = by_arm(doc)
    local, english = shares["local-speaker"], shares["english-speaker"]
    assert local["known"] == english["known"] == 10
    assert local["share"] == 1.0 and local["same"] == 10
    # only the English question was answered in its language: 2 of 10
    assert english["share"] == 0.2 and english["same"] == 2
    assert english["since"] is not None and english["since"] <= time.time()

    spec = httpx.get(f"{gw.url}/openapi.json").json()
    path = spec["paths"]["/admin/experiments/{name}/report"]["get"]
    schema = path["responses"]["200"]["content"]["application/json"]["schema"]
    from jsonschema import Draft202012Validator

    Draft202012Validator(resolved(schema, spec["components"]["schemas"])).validate(doc)
    with pytest.raises(Exception, match="share"):  # the schema does describe the share
        broken = {**doc, "arms": [{**a, "language": {"sample": 1}} for a in doc["arms"]]}
        Draft202012Validator(resolved(schema, spec["components"]["schemas"])).validate(broken)


def test_the_share_covers_the_current_version_only(gateway_languages: GatewayProcess) -> None:
    gw = gateway_languages
    name = new_experiment(gw)
    chat(gw, name, rounds=1)
    report_when(gw, name, sample=len(QUESTIONS))
    put(gw, name, (90, 10))  # a new version: the old answers no longer count
    fresh = report_when(gw, name, sample=0)
    assert {a["share"] for a in by_arm(fresh).values()} == {None}
    chat(gw, name, rounds=1)
    assert by_arm(report_when(gw, name, sample=len(QUESTIONS)))["english-speaker"]["share"] == 0.2


@pytest.mark.slow
def test_gateway_report_and_the_console_show_each_arms_share(
    gateway_languages: GatewayProcess,
) -> None:
    gw = gateway_languages
    name = new_experiment(gw)
    chat(gw, name)
    report_when(gw, name, sample=2 * len(QUESTIONS))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "report", name, "--config", str(gw.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "240"},
    )
    assert run.returncode == 0, run.stderr
    lines: dict[str, str] = {}  # the arms table's row of each arm (the first table)
    for line in run.stdout.splitlines():
        if "│" in line:
            lines.setdefault(line.split("│")[1].strip(), line)
    assert "100.0% of 10" in lines["local-speaker"]
    assert "20.0% of 10" in lines["english-speaker"]
    assert "same language" in run.stdout
    page = httpx.get(f"{gw.url}/ui/experiments/{name}", headers=ADMIN, timeout=30)
    assert page.status_code == 200, page.text
    rows = {
        arm: page.text.split(f"<td>{arm}", 1)[1].split("</tr>", 1)[0]
        for arm in ("local-speaker", "english-speaker")
    }
    assert '<td class="language">100.0% <small>of 10</small></td>' in rows["local-speaker"]
    assert '<td class="language">20.0% <small>of 10</small></td>' in rows["english-speaker"]
    assert "the share of answers written in the language of the question" in page.text


CHATS_THEN_MODULES = """
import sys
import time
from fastapi.testclient import TestClient
from gateway.app import create_app
from gateway.core.config import load_settings

with TestClient(create_app(load_settings(sys.argv[1]))) as c:
    for q in sys.argv[2:]:
        r = c.post(
            "/v1/chat/completions",
            headers={"Authorization": "Bearer %s"},
            json={"model": "default", "messages": [{"role": "user", "content": q}]},
        )
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while True:  # a report over the answers, once they are logged
        report = c.get(
            "/admin/experiments/default/report", headers={"Authorization": "Bearer %s"}
        ).json()
        (arm,) = report["arms"]
        if arm["language"]["known"] == len(sys.argv) - 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(arm["language"]["share"], "lingua" in " ".join(sys.modules))
"""


@pytest.mark.slow
def test_the_gateway_process_never_loads_the_language_guesser(
    gateway_languages: GatewayProcess,
) -> None:
    """Loading the language models takes about a second of Python's GIL and 100 MB: not
    in the gateway's process, neither for chat completions nor for a report (whose
    guesses run in a process of their own)."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CHATS_THEN_MODULES % (API_KEY, ADMIN_KEY),
            str(gateway_languages.config_path),
            *QUESTIONS,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["1.0", "False"]  # the default arm answers in the language


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_the_language_guesser_stops_with_the_gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory, how: str
) -> None:
    upstream = ScriptedUpstream(SCRIPT).start()
    gw = GatewayProcess(
        languages_config(redis_server, upstream), tmp_path_factory.mktemp("guesser")
    )
    try:
        gw.start()
        assert gw.proc is not None
        pid, before = gw.proc.pid, descendants(gw.proc.pid)
        name = new_experiment(gw)
        chat(gw, name, rounds=1)
        report_when(gw, name, sample=len(QUESTIONS))
        guessers = descendants(pid) - before
        assert guessers, "the report's guesses ran in no process of their own"
        if how == "sigterm":
            gw.stop()
        else:
            gw.proc.kill()  # no shutdown: the guesser has a parent-death signal
            gw.proc.wait(10)
        assert_all_gone(guessers)
    finally:
        gw.stop()
        upstream.stop()
