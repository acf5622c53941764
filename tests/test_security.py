"""Per-key rate limits shared by replicas, keys never logged, redaction of stored text."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from flywheel_stack import free_port
from retrain import feedback_log
from tests.conftest import API_KEY, gateway_config
from tests.faulty_upstream import FaultyUpstream
from tests.polling import eventually
from tests.services import GatewayProcess, RedisProcess

RPM_KEY = "sk-rpm-limited-0123456789"
TPM_KEY = "sk-tpm-limited-0123456789"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def replicas(
    faulty: FaultyUpstream, redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateway replicas on one Redis, with two rate-limited keys and redaction on."""
    cfg = gateway_config(f"http://127.0.0.1:{free_port()}/v1", faulty.base_url, redis_server.url)
    cfg["auth"]["api_keys"] += [
        {"key": RPM_KEY, "name": "rpm-limited", "rpm": 20},
        {"key": TPM_KEY, "name": "tpm-limited", "tpm": 20},  # fixed-* answers cost 10 tokens
    ]
    cfg["interaction_log"] = {"redact": True}
    base = tmp_path_factory.mktemp("security")
    a = GatewayProcess(cfg, base / "a").start()
    b = GatewayProcess(cfg, base / "b").start()
    yield a, b
    a.stop()
    b.stop()


def ask(gw: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "fixed-a", "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    )


@pytest.mark.slow
def test_requests_per_minute_hold_across_replicas_and_refill(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = replicas
    t0 = time.monotonic()
    replies = [ask(a if i % 2 else b, RPM_KEY) for i in range(20)]  # the whole budget
    assert [r.status_code for r in replies] == [200] * 20
    assert int(replies[0].headers["x-ratelimit-limit-requests"]) == 20
    assert int(replies[-1].headers["x-ratelimit-remaining-requests"]) <= 1
    refused = ask(a, RPM_KEY)
    assert time.monotonic() - t0 < 3, "too slow to test: a request refills every 3 s"
    assert refused.status_code == 429
    err = refused.json()["error"]
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
    assert "rpm-limited" in err["message"] and "requests per minute" in err["message"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 3
    # The openai client sees OpenAI's own exception.
    with (
        openai.OpenAI(base_url=b.base_url, api_key=RPM_KEY, max_retries=0) as client,
        pytest.raises(openai.RateLimitError),
    ):
        client.chat.completions.create(model="fixed-a", messages=HELLO)
    # Other keys are not affected, and the key is admitted again once its bucket refills.
    assert ask(b, API_KEY).status_code == 200
    time.sleep(retry_after)  # the behaviour: the bucket refills in the time it announced
    assert ask(b, RPM_KEY).status_code == 200


def test_tokens_per_minute_are_charged_from_usage(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = replicas
    assert ask(a, TPM_KEY).status_code == 200  # 10 tokens
    assert ask(b, TPM_KEY).status_code == 200  # 20: the budget is spent, not overdrawn yet
    # Tokens are charged just after the answer: a request may still slip in meanwhile.
    refused = eventually(lambda: (r := ask(a, TPM_KEY)).status_code == 429 and r, "no 429")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) == 0
    assert int(refused.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("secret", "stored"),
    [
        (
            "Mail jane.doe@example.com or call +44 20 7946 0958 about order 12.",
            "Mail [email] or call [phone] about order 12.",
        ),
        ("โทร081-234-5678ค่ะ อีเมลsomchai@example.comนะคะ", "โทร[phone]ค่ะ อีเมล[email]นะคะ"),
        ("Anh gọi0912345678 hoặc gửi nguyễn.văn@công-ty.vn", "Anh gọi[phone] hoặc gửi [email]"),
    ],
    ids=["en", "th", "vi"],
)
def test_stored_interactions_are_redacted(
    replicas: tuple[GatewayProcess, GatewayProcess],
    redis_server: RedisProcess,
    secret: str,
    stored: str,
) -> None:
    a, _ = replicas
    reply = httpx.post(
        a.base_url + "/chat/completions",
        json={"model": "fixed-a", "messages": [{"role": "user", "content": secret}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    r = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 5
    while (record := feedback_log.interaction(r, reply["id"])) is None:
        assert time.monotonic() < deadline, "the interaction was not logged"
        time.sleep(0.05)
    assert record["messages"][0]["content"] == stored


def test_api_keys_never_reach_the_logs_or_error_messages(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = replicas
    wrong = "sk-wrong-but-secret-9876543210"
    refused = ask(a, wrong)
    assert refused.status_code == 401
    assert wrong not in refused.text
    assert ask(a, RPM_KEY).status_code in (200, 429)
    a.stop()  # flush its log file
    a.start()
    logged = Path(a.log_path).read_text()
    for key in (wrong, API_KEY, RPM_KEY, TPM_KEY):
        assert key not in logged


@pytest.mark.parametrize(
    "headers",
    [{"x-big": "a" * 40_000}, {f"x-h{i}": "v" for i in range(150)}],
    ids=["40 KB header", "150 headers"],
)
def test_oversized_headers_are_a_431_and_the_gateway_serves_on(
    replicas: tuple[GatewayProcess, GatewayProcess], headers: dict[str, str]
) -> None:
    a, _ = replicas
    refused = httpx.post(
        a.base_url + "/chat/completions",
        json={"model": "fixed-a", "messages": HELLO},
        headers={"Authorization": f"Bearer {API_KEY}", **headers},
    )
    assert refused.status_code == 431
    err = refused.json()["error"]
    assert err["code"] == "request_header_fields_too_large"
    assert "limits.max_header_bytes" in err["message"]
    assert ask(a, API_KEY).status_code == 200
