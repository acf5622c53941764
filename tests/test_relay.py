"""The stream relay's rewrite of text deltas: spliced once the stream's shape is known,
with the same result as decoding and encoding each chunk.

The chunks are the bytes vLLM sends (captured from the tiny model's server: its
``token_ids`` field included) and OpenAI's shape (``usage: null`` in every chunk, an
``obfuscation`` that changes per chunk). Each stream is rewritten as the relay does it
(one turn, line after line: the shape is learnt from the first text-only delta) and,
as the reference, each line with a turn of its own, which never has a shape. The
end-to-end tests (``test_chat.py``) stream real vLLM answers through the gateway.
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any

import orjson
import pytest

from gateway.control.routing import Target
from gateway.core.auth import Principal
from gateway.core.config import Upstream
from gateway.serving import relay
from gateway.serving.turn import Turn

TARGET = Target(
    "support-v2", "vllm", Upstream(kind="vllm", base_url="http://127.0.0.1:1/v1"), "base"
)
TEXTS = {
    "en": ["Your", " parcel", " left", ' the "depot"', " at 9\\am.\n", "🚚"],
    "th": ["พัสดุ", "ของคุณ", "ออกจาก", "คลัง", "แล้ว", "ค่ะ"],
    "vi-nfc": [unicodedata.normalize("NFC", t) for t in ["Bưu ", "kiện ", "đã ", "rời ", "kho."]],
    "vi-nfd": [unicodedata.normalize("NFD", t) for t in ["Bưu ", "kiện ", "đã ", "rời ", "kho."]],
}


def turn(want_usage: bool = False) -> Turn:
    return Turn(
        id="chatcmpl-flywheel-0001",
        request_id="req-1",
        t0=time.perf_counter(),
        doc={"model": "support", "messages": []},
        principal=Principal("app", "acme"),
        experiment="support",
        assigned=TARGET,
        target=TARGET,
        stream=True,
        want_usage=want_usage,
    )


VLLM_HEAD = (
    '{"id":"chatcmpl-a85a25d2d4d8a6e1","object":"chat.completion.chunk",'
    '"created":1796623206,"model":"base",'
)
VLLM_OPEN = '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
VLLM_USAGE = (
    '"choices":[],"usage":{"prompt_tokens":15,"total_tokens":20,"completion_tokens":5},'
    '"system_fingerprint":"vllm-0.32.0"}'
)


def vllm_lines(texts: list[str]) -> list[bytes]:
    """A stream as vLLM writes it: the role, the texts, the finish, the usage, [DONE]."""
    lines = [VLLM_HEAD + VLLM_OPEN + '"finish_reason":null}],"prompt_token_ids":null}']
    for t in texts:
        text = orjson.dumps(t).decode()
        delta = '"choices":[{"index":0,"delta":{"content":' + text + '},"logprobs":null,'
        lines.append(VLLM_HEAD + delta + '"finish_reason":null,"token_ids":null}]}')
    lines.append(
        VLLM_HEAD + '"choices":[{"index":0,"delta":{"content":""},"logprobs":null,'
        '"finish_reason":"stop","stop_reason":null,"token_ids":null}]}'
    )
    lines.append(VLLM_HEAD + VLLM_USAGE)
    lines.append("[DONE]")
    return [b"data: " + line.encode() for line in lines]


def openai_lines(texts: list[str]) -> list[bytes]:
    out = []
    for i, t in enumerate(texts):
        chunk = {
            "id": "chatcmpl-B1",
            "object": "chat.completion.chunk",
            "created": 1796623206,
            "model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default",
            "system_fingerprint": "fp_1",
            "choices": [
                {"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}
            ],
            "usage": None,
            "obfuscation": "x" * (i % 5),
        }
        out.append(b"data: " + orjson.dumps(chunk))
    return out


def relayed(lines: list[bytes], want_usage: bool = False) -> tuple[list[Any], Turn]:
    t = turn(want_usage)
    events = [relay.rewrite(t, line) for line in lines]
    return [_events(e) for e in events], t


def reference(lines: list[bytes], want_usage: bool = False) -> list[Any]:
    out = []
    for line in lines:
        t = turn(want_usage)
        out.append(_events(relay.rewrite(t, line)))
    return out


def _events(data: bytes | None) -> Any:
    if data is None:
        return None
    events = [e for e in data.split(b"\n\n") if e]
    return [orjson.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in events]


@pytest.mark.parametrize("lang", TEXTS)
@pytest.mark.parametrize("want_usage", [False, True])
def test_vllm_text_deltas_are_spliced_with_the_decoded_result(lang: str, want_usage: bool) -> None:
    texts = TEXTS[lang]
    lines = vllm_lines(texts)
    got, t = relayed(lines, want_usage)
    assert t.text_shape is not None  # (learnt from the first text delta)
    ref = reference(lines, want_usage)
    # Each line's rewrite alone equals it, except where the finishing chunk is held back
    # for the usage chunk's fingerprint (the relay's turn does that across lines).
    assert got[1 : len(texts) + 1] == ref[1 : len(texts) + 1]
    assert "".join(t.answer) == "".join(texts)
    assert t.ttft is not None
    for events in got[1 : len(texts) + 1]:
        (chunk,) = events
        assert chunk["id"] == "chatcmpl-flywheel-0001" and chunk["model"] == "support-v2"


def test_the_spliced_bytes_are_the_encoded_bytes_for_vllm_output() -> None:
    """vLLM escapes as orjson does: the splice sends exactly what encoding would."""
    for texts in TEXTS.values():
        lines = vllm_lines(texts)
        t = turn()
        spliced = [relay.rewrite(t, line) for line in lines[: len(texts) + 1]]
        for line, out in zip(lines[1 : len(texts) + 1], spliced[1:], strict=True):
            assert out == relay.rewrite(turn(), line)


def test_openai_chunks_that_differ_outside_the_text_take_the_whole_rewrite() -> None:
    texts = TEXTS["th"] + TEXTS["vi-nfd"]
    lines = openai_lines(texts)
    got, t = relayed(lines)
    assert got == reference(lines)
    assert "".join(t.answer) == "".join(texts)


def test_an_upstream_escaping_differently_keeps_the_meaning() -> None:
    """An upstream that writes ``\\u0e1e`` for พ: the splice relays its escape, which
    decodes to the same text."""
    texts = TEXTS["th"]
    lines = vllm_lines(texts)
    escaped = [lines[0], lines[1]] + [
        line.replace(t.encode(), t.encode("ascii", "backslashreplace"))
        for line, t in zip(lines[2 : len(texts) + 1], texts[1:], strict=True)
    ]
    got, t = relayed(escaped)
    assert got == reference(escaped)
    assert "".join(t.answer) == "".join(texts)


@pytest.mark.parametrize(
    "bad",
    [b'"broken \\x escape"', b'"two" "strings"', b'"unterminated\\"', b'"ok","content":"x"'],
)
def test_a_malformed_text_in_the_shape_is_refused_as_a_whole_decode_refuses_it(
    bad: bytes,
) -> None:
    lines = vllm_lines(["first", "second"])
    template = lines[2]
    broken = template.replace(b'"second"', bad)
    t = turn()
    for line in lines[:2]:
        relay.rewrite(t, line)
    assert t.text_shape is not None
    ref = turn()
    assert relay.rewrite(t, broken) == relay.rewrite(ref, broken)
    assert (t.status, t.error) == (ref.status, ref.error)
