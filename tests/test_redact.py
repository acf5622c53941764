"""Redaction in English, Thai and Vietnamese: addresses and numbers written against
letters of any script are redacted; order numbers, codes, prices and dates are not.
(Through a real gateway: ``test_security.py``.)"""

from __future__ import annotations

import unicodedata
from typing import Literal

import pytest

from gateway.core.redact import redact, redact_all


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


REDACTED = [
    # English, as before
    (
        "Mail jane.doe@example.com or call +44 20 7946 0958 about order 12.",
        "Mail [email] or call [phone] about order 12.",
    ),
    ("call 555-123-4567 or 555.123.4567", "call [phone] or [phone]"),
    ("write to ops@flywheel.example.org.", "write to [email]."),
    # Thai: no spaces between words
    ("โทร081-234-5678ค่ะ", "โทร[phone]ค่ะ"),
    ("เบอร์0812345678นะคะ", "เบอร์[phone]นะคะ"),
    ("โทร๐๘๑-๒๓๔-๕๖๗๘ค่ะ", "โทร[phone]ค่ะ"),  # Thai digits
    ("ติดต่อsomchai@example.comค่ะ", "ติดต่อ[email]ค่ะ"),
    ("อีเมลsomchai.k+shop@mail.co.thหรือโทร02-123-4567", "อีเมล[email]หรือโทร[phone]"),
    ("ส่งที่ สมชาย@บริษัท.ไทยได้เลย", "ส่งที่ [email]ได้เลย"),  # a Thai address
    # Vietnamese: letters and addresses with diacritics, text written against them
    ("gọi0912345678", "gọi[phone]"),
    ("Anh gọi0912345678nhé", "Anh gọi[phone]nhé"),
    ("số điện thoại: +84 912 345 678, cảm ơn", "số điện thoại: [phone], cảm ơn"),
    ("gửi thư tới nguyễn.văn@công-ty.vn nhé", "gửi thư tới [email] nhé"),
    (
        "Email của tôi là lan.tran@gmail.com, gọi 0912.345.678",
        "Email của tôi là [email], gọi [phone]",
    ),
]
KEPT = [
    "order 12 ships on day 3",
    "order #ORD-12 costs 1,234,567 baht",
    "invoice INV0912345678 and SKU123456789X",  # codes
    "token ab12345678901cd",
    "ราคา50.000.000đ",  # a price in đồng against a letter
    "giá 1.500.000 VND",
    "วันที่2024-01-15ค่ะ",  # a date against Thai letters
    "ngày 15.01.2024 nhé",
    "ติดต่อ @somchai ทางไลน์",  # a handle, not an address
    "user@localhost",
]


@pytest.mark.parametrize("form", ["NFC", "NFD"])
@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_addresses_and_numbers_are_redacted_against_letters_of_any_script(
    text: str, expected: str, form: Literal["NFC", "NFD"]
) -> None:
    written = unicodedata.normalize(form, text)
    assert redact(written) == unicodedata.normalize(form, expected)


@pytest.mark.parametrize("form", ["NFC", "NFD"])
@pytest.mark.parametrize("text", KEPT)
def test_codes_prices_dates_and_handles_are_left_alone(
    text: str, form: Literal["NFC", "NFD"]
) -> None:
    written = unicodedata.normalize(form, text)
    assert redact(written) == written


def test_the_text_around_what_is_redacted_keeps_its_form_and_its_diacritics() -> None:
    text = nfd("Chị Hương ơi, gọi 0912345678 hoặc viết cho hương.lê@trường-học.edu.vn")
    assert redact(text) == nfd("Chị Hương ơi, gọi [phone] hoặc viết cho [email]")
    assert unicodedata.is_normalized("NFD", redact(text))


def test_every_string_of_a_request_is_redacted() -> None:
    messages = [
        {"role": "system", "content": "You help customers."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "โทร081-234-5678ค่ะ"},
                {"type": "text", "text": "gọi0912345678"},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [{"function": {"arguments": '{"email": "a.b@example.com"}'}}],
        },
    ]
    out = redact_all(messages)
    assert [p["text"] for p in out[1]["content"]] == ["โทร[phone]ค่ะ", "gọi[phone]"]
    assert out[2]["tool_calls"][0]["function"]["arguments"] == '{"email": "[email]"}'
    assert out[0] == messages[0]


def test_a_long_thai_text_with_addresses_takes_linear_time() -> None:
    """Thai runs have no spaces: a scan from every letter would be quadratic."""
    import time

    run = "ก" * 20_000
    start = time.perf_counter()
    assert redact(run + "@" + run) == run + "@" + run
    assert redact(run + "a@b.co" + run) == run + "[email]" + run
    assert time.perf_counter() - start < 0.5
