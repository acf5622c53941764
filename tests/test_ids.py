"""Response ids: unique, signed, time-stamped; forgeries and foreign ids are refused."""

from __future__ import annotations

import time

from gateway.core.ids import IdIssuer


def test_ids_are_unique_and_verify_with_their_issue_time() -> None:
    issuer = IdIssuer(b"s" * 32)
    ids = {issuer.new() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in list(ids)[:10]:
        assert rid.startswith("chatcmpl-")
        issued = issuer.issued_at(rid)
        assert issued is not None and abs(issued - time.time()) < 5


def test_tampered_foreign_and_malformed_ids_are_not_ours() -> None:
    issuer = IdIssuer(b"s" * 32)
    rid = issuer.new()
    flipped = rid[:-3] + ("A" if rid[-3] != "A" else "B") + rid[-2:]
    assert issuer.issued_at(flipped) is None
    assert IdIssuer(b"t" * 32).issued_at(rid) is None  # another deployment's secret
    for junk in ("", "chatcmpl-", "chatcmpl-abc", "fb-" + rid, rid + "x" * 60, "chatcmpl-!!!"):
        assert issuer.issued_at(junk) is None
