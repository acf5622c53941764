"""Redaction of e-mail addresses and phone numbers, for stored interactions and datasets.

Thai is written without spaces between words and Vietnamese chats often drop them, so
an address or a number may touch letters on either side ("โทร081-234-5678ค่ะ",
"gọi0912345678"): letters of any script are a boundary, digits are not.

* **e-mail** (``[email]``): a local part of Latin letters (Vietnamese ones included, in
  NFC or NFD), digits and ``._%+-``, or of Thai script; a domain of such labels; a
  top-level domain of Latin letters, or ``.ไทย``. Found from each ``@``: Thai letters
  before the local part or after the domain are not part of the address; Latin letters
  written against it cannot be told apart from it and go with it.
* **phone** (``[phone]``): an optional ``+``, then at least nine digits, spaces, dots,
  dashes or parentheses, starting and ending with a digit, with no digit or ``_`` right
  before or after. Left as they are, as when letters were no boundary: a number inside
  a code of ASCII letters and digits (right after an upper-case ASCII letter,
  ``INV0912345678``, or between ASCII letters and ASCII letters or digits,
  ``ab12345678901cd``); and, where a phone number would be read before, a price with
  thousands dots (``50.000.000đ``, ``1.234.567``) or a date (``2024-01-15``,
  ``15.01.2024``).

Digits are Unicode digits (Thai ``๐``–``๙`` too). Both scans are the standard library's
C engine; only an ``@`` or a long run of digits costs more than one pass over the text.
"""

from __future__ import annotations

import re
from typing import Any

# Latin letters (ASCII, Latin-1, Extended-A/B, and Latin Extended Additional: the
# precomposed Vietnamese letters) with combining diacritics (NFD), and Thai script.
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
_MARKS = "\u0300-\u036f"
_COMBINING = "".join(map(chr, range(0x300, 0x370)))
_THAI = "\u0e00-\u0e7f"
_LABEL = rf"[{_LATIN}{_THAI}0-9][{_LATIN}{_THAI}{_MARKS}0-9-]*"
# An address is found from its "@": the local part ending there (at most 64 characters,
# as in RFC 5321) and the domain starting after it. Scanning from every letter instead
# would be quadratic in the length of a Thai run, which has no spaces to stop at.
_LOCAL_REVERSED = re.compile(rf"[{_LATIN}{_MARKS}0-9._%+-]+|[{_THAI}0-9._%+-]+")
_DOMAIN_AFTER = re.compile(rf"(?:{_LABEL}\.)+(?:[A-Za-z][{_LATIN}{_MARKS}]{{1,62}}|ไทย)")
_PHONE = re.compile(r"(?<![\d_+])\+?\d[\d ().-]{7,}\d(?![\d_])")
# A number that reads as a price or a date rather than a phone number.
_NOT_A_PHONE = re.compile(r"[1-9]\d{0,2}(?:\.\d{3})+|\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")
_ASCII_AFTER = re.compile(r"[A-Za-z0-9]")


def _phone(m: re.Match[str]) -> str:
    found, text, start = m.group(), m.string, m.start()
    before = text[start - 1] if start else ""
    if "A" <= before <= "Z":  # INV0912345678, SKU123456789X: a code
        return found
    if before.isascii() and before.isalpha() and _ASCII_AFTER.match(text, m.end()):
        word = start - 1
        while word > 0 and (text[word - 1].isalpha() or text[word - 1] in _COMBINING):
            word -= 1
        if text[word:start].isascii():  # between ASCII letters and digits: a code
            return found
    if _NOT_A_PHONE.fullmatch(found.removeprefix("+")):
        return found  # a price or a date
    return "[phone]"


def _emails(text: str) -> str:
    out: list[str] = []
    done, at = 0, text.find("@")
    while at != -1:
        # The local part: read backwards from the "@", at most 64 characters.
        local = _LOCAL_REVERSED.match(text[max(done, at - 64) : at][::-1])
        length = len(local.group().rstrip("." + _COMBINING)) if local else 0
        domain = _DOMAIN_AFTER.match(text, at + 1) if length else None
        if domain:
            out += (text[done : at - length], "[email]")
            done = domain.end()
        at = text.find("@", max(at + 1, done))
    return "".join(out) + text[done:] if out else text


def redact(text: str) -> str:
    if "@" in text:
        text = _emails(text)
    return _PHONE.sub(_phone, text)


def redact_all(value: Any) -> Any:
    """Every string inside ``value`` (messages with content parts, tool calls) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_all(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    return value
