"""Assignment: weighted, sticky per user, and a growing canary moves only new users."""

from __future__ import annotations

from collections import Counter

from gateway.control.routing import Assigner


def test_1000_users_split_close_to_the_weights() -> None:
    a = Assigner("support-bot", [("base", 90), ("support-v1", 10)])
    counts = Counter(a.arm_for(f"user-{i}") for i in range(1000))
    # Binomial(1000, 0.1): sd ≈ 9.5, so ±40 is over 4 sd.
    assert 60 <= counts["support-v1"] <= 140
    assert counts["base"] + counts["support-v1"] == 1000


def test_the_same_user_always_gets_the_same_arm() -> None:
    a = Assigner("exp", [("a", 1), ("b", 1), ("c", 1)])
    b = Assigner("exp", [("a", 1), ("b", 1), ("c", 1)])  # another replica
    for i in range(500):
        assert a.arm_for(f"u{i}") == a.arm_for(f"u{i}") == b.arm_for(f"u{i}")


def test_zero_weight_arm_gets_nobody() -> None:
    a = Assigner("exp", [("a", 0), ("b", 3)])
    assert {a.arm_for(f"u{i}") for i in range(300)} == {"b"}


def test_ramping_a_canary_moves_only_users_into_it() -> None:
    small = Assigner("exp", [("control", 95), ("canary", 5)])
    large = Assigner("exp", [("control", 80), ("canary", 20)])
    users = [f"u{i}" for i in range(2000)]
    moved = [u for u in users if small.arm_for(u) != large.arm_for(u)]
    assert moved and all(small.arm_for(u) == "control" for u in moved)
    assert all(large.arm_for(u) == "canary" for u in users if small.arm_for(u) == "canary")


def test_experiments_assign_independently() -> None:
    one = Assigner("one", [("a", 1), ("b", 1)])
    two = Assigner("two", [("a", 1), ("b", 1)])
    same = sum(one.arm_for(f"u{i}") == two.arm_for(f"u{i}") for i in range(1000))
    assert 400 < same < 600
