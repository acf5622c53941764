"""Property tests (hypothesis), no server: config parsing, request and rating validation,
and routing — generalising the examples of test_config, test_feedback and test_routing.

Generation is derandomised: a run is reproducible, and a failure shows its example.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.control.routing import Assigner, Router
from gateway.core.config import ConfigError, FeedbackConfig, build_settings, load_settings
from gateway.core.errors import GatewayError, InvalidRequest
from gateway.serving.feedback import THUMBS, normalise, parse_feedback
from gateway.serving.validation import PARAMS, ROLES, parse_chat_request
from retrain.curate import normalise_text
from tests.openapi_schema import Check

PROPS = settings(
    derandomize=True, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)

# -- generators ----------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9](?:\.?[A-Za-z0-9_-]){0,15}", fullmatch=True)  # NAME_PATTERN
plain_text = st.text(
    st.characters(codec="utf-8", exclude_characters="$", exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
)
weights = st.floats(0, 1_000_000, allow_nan=False)
int64 = st.integers(-(2**63), 2**63 - 1)  # what JSON numbers orjson reads as integers
json_values = st.recursive(
    st.none()
    | st.booleans()
    | int64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    ups = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    upstreams = {
        u: {
            "kind": draw(st.sampled_from(["vllm", "openai"])),
            "base_url": f"http://upstream-{i}.example:8000/v1",
            "timeout_s": draw(st.floats(0.001, 1e4)),
            "breaker": {"failures": draw(st.integers(1, 100))},
        }
        for i, u in enumerate(ups)
    }
    models: dict[str, Any] = {}
    for name in draw(st.lists(names, min_size=1, max_size=5, unique=True)):
        up = draw(st.sampled_from(ups))
        models[name] = {"upstream": up, "model": draw(plain_text)}
        if upstreams[up]["kind"] == "vllm" and draw(st.booleans()):
            models[name]["adapter_path"] = f"/adapters/{name}"
    experiments: dict[str, Any] = {}
    exp_names = st.lists(names.filter(lambda n: n not in models), max_size=3, unique=True)
    for name in draw(exp_names):
        arms = draw(st.lists(st.sampled_from(sorted(models)), min_size=1, unique=True))
        ws = draw(st.lists(weights, min_size=len(arms), max_size=len(arms)))
        if not any(w > 0 for w in ws):
            ws[0] = 1.0
        exp: dict[str, Any] = {
            "arms": [{"model": m, "weight": w} for m, w in zip(arms, ws, strict=True)]
        }
        if draw(st.booleans()):
            exp["fallback"] = draw(st.sampled_from(sorted(models)))
        if draw(st.booleans()):
            exp["control"] = draw(st.sampled_from(arms))
        experiments[name] = exp
    return {"upstreams": upstreams, "models": models, "experiments": experiments}


# -- config parsing ------------------------------------------------------------------------


@pytest.mark.slow
@PROPS
@given(doc=valid_configs())
def test_valid_configs_load_and_keep_their_values(doc: dict[str, Any]) -> None:
    s = build_settings(doc)
    assert set(s.models) == set(doc["models"])
    for name, exp in doc["experiments"].items():
        got = s.experiments[name].arms
        assert [(a.model, a.weight) for a in got] == [
            (a["model"], a["weight"]) for a in exp["arms"]
        ]
    router = Router.from_settings(s)
    for name, exp in s.experiments.items():  # every experiment routes to a weighted arm
        route = router.resolve(name, "user-1")
        assert route.primary.name in {a.model for a in exp.arms if a.weight > 0}


@settings(PROPS, max_examples=40)
@given(doc=valid_configs())
def test_valid_configs_load_from_a_yaml_file(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flywheel.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        assert load_settings(path, env={}) == build_settings(doc)


def _first(d: dict[str, Any]) -> str:
    return sorted(d)[0]


def _mutations(doc: dict[str, Any], draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """One mistake in a valid config, and the key path the error must name."""
    model = _first(doc["models"])
    up = _first(doc["upstreams"])
    kinds = [
        "unknown_top",
        "unknown_nested",
        "bad_upstream_ref",
        "timeout",
        "port",
        "kind",
        "no_models",
        "model_id",
    ]
    if doc["experiments"]:
        kinds += ["weight", "huge_weight", "arm_model", "fallback", "all_zero", "exp_name_clash"]
    kind = draw(st.sampled_from(kinds))
    key = draw(st.from_regex(r"[a-z]{1,8}_x", fullmatch=True))  # never a real key
    if kind == "unknown_top":
        doc[key] = 1
        return doc, key
    if kind == "unknown_nested":
        doc["upstreams"][up][key] = 1
        return doc, f"upstreams.{up}.{key}"
    if kind == "bad_upstream_ref":
        doc["models"][model]["upstream"] = "no-such-upstream"
        return doc, f"models.{model}.upstream"
    if kind == "timeout":
        doc["upstreams"][up]["timeout_s"] = draw(st.floats(max_value=0) | st.just("soon"))
        return doc, f"upstreams.{up}.timeout_s"
    if kind == "port":
        doc["listen"] = {"port": draw(st.integers(65536, 10**6) | st.integers(max_value=0))}
        return doc, "listen.port"
    if kind == "kind":
        doc["upstreams"][up]["kind"] = draw(
            plain_text.filter(lambda k: k not in ("vllm", "openai"))
        )
        return doc, f"upstreams.{up}.kind"
    if kind == "no_models":
        doc["models"], doc["experiments"] = {}, {}
        return doc, "models"
    if kind == "model_id":
        doc["models"][model]["model"] = ""
        return doc, f"models.{model}.model"
    exp = _first(doc["experiments"])
    arms = doc["experiments"][exp]["arms"]
    i = draw(st.integers(0, len(arms) - 1))
    if kind == "weight":
        arms[i]["weight"] = draw(st.floats(max_value=-1e-9, allow_nan=False) | st.just("heavy"))
        return doc, f"experiments.{exp}.arms[{i}].weight"
    if kind == "huge_weight":
        arms[i]["weight"] = draw(st.floats(1_000_001, 1e308))
        return doc, f"experiments.{exp}.arms[{i}].weight"
    if kind == "arm_model":
        arms[i]["model"] = "no-such-model"
        return doc, f"experiments.{exp}.arms[{i}].model"
    if kind == "fallback":
        doc["experiments"][exp]["fallback"] = "no-such-model"
        return doc, f"experiments.{exp}.fallback"
    if kind == "all_zero":
        for arm in arms:
            arm["weight"] = 0
        return doc, f"experiments.{exp}.arms"
    doc["experiments"][model] = doc["experiments"].pop(exp)  # exp_name_clash
    return doc, f"experiments.{model}"


@pytest.mark.slow
@PROPS
@given(data=st.data())
def test_a_mistake_is_refused_with_a_message_naming_its_key_path(data: st.DataObject) -> None:
    doc, path = _mutations(data.draw(valid_configs()), data.draw)
    with pytest.raises(ConfigError) as info:
        build_settings(doc)
    assert any(p.startswith(f"{path}:") for p in info.value.problems), (path, info.value.problems)


@PROPS
@given(
    name=st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True),
    default=plain_text,
    value=plain_text,
)
def test_env_references_are_substituted(name: str, default: str, value: str) -> None:
    assume("}" not in default)
    doc = {
        "models": {"m": {"upstream": "u", "model": f"x-${{{name}:-{default}}}"}},
        "upstreams": {"u": {"kind": "vllm", "base_url": "http://u:1/v1"}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        assert load_settings(path, env={}).models["m"].model == f"x-{default}"
        assert load_settings(path, env={name: value}).models["m"].model == f"x-{value}"
        doc["models"]["m"]["model"] = f"${{{name}}}"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"^models\.m\.model: environment variable {name} "):
            load_settings(path, env={})


# -- the chat request ----------------------------------------------------------------------


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    roles = st.sampled_from(ROLES)
    messages = draw(
        st.lists(
            st.builds(lambda r, c: {"role": r, "content": c}, roles, st.text(max_size=20)),
            min_size=1,
            max_size=5,
        )
    )
    doc: dict[str, Any] = {"model": draw(plain_text), "messages": messages}
    for name in draw(st.sets(st.sampled_from(sorted(PARAMS)))):
        doc[name] = draw(valid_value(name))
    return doc


def valid_value(name: str) -> st.SearchStrategy[Any]:
    schema = PARAMS[name].schema
    kind = schema.get("type")
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if kind == ["integer", "null"]:
        return st.none() | st.integers(lo if lo is not None else -(2**63), hi or 2**63 - 1)
    if kind == ["number", "null"]:
        return st.none() | st.floats(lo, hi) | st.integers(math.ceil(lo), math.floor(hi))
    if kind == ["boolean", "null"]:
        return st.none() | st.booleans()
    if name == "metadata":  # OpenAI's Metadata: a map of strings
        return st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=2)
    if kind == ["object", "null"]:
        return st.none() | st.dictionaries(st.text(max_size=5), st.booleans(), max_size=2)
    if kind == "string":
        return st.text(max_size=10)
    assert name == "stop", name
    return st.none() | st.text() | st.lists(st.text(), min_size=1, max_size=4)


@PROPS
@given(doc=chat_requests())
def test_requests_within_openais_schema_are_accepted_unchanged(doc: dict[str, Any]) -> None:
    assert parse_chat_request(orjson.dumps(doc)) == doc


def out_of_range(name: str) -> st.SearchStrategy[Any]:
    if name == "user":
        return st.sampled_from([None, 1, True, ["u"], {"id": "u"}])
    if name == "stream_options":
        return st.sampled_from([1, "usage", [], True])
    if name == "stop":
        return st.sampled_from([1, True, {"a": 1}, [], [1], ["a"] * 5, [None]])
    if name == "metadata":  # a value that is not a string, or no map at all
        return st.sampled_from(["1", [1], True, {"a": 1}, {"a": None}, {"workload": 7}])
    schema = PARAMS[name].schema
    lo, hi = schema.get("minimum"), schema.get("maximum")
    wrong_type = st.sampled_from(["1", [1], {"a": 1}]) | (
        st.just(True) if schema.get("type") != ["boolean", "null"] else st.just(1)
    )
    out = [wrong_type]
    if lo is not None:
        out.append(st.floats(max_value=lo, exclude_max=True, min_value=-1e300))
    if hi is not None:
        out.append(st.floats(min_value=hi, exclude_min=True, max_value=1e300))
    if schema.get("type") == ["integer", "null"]:
        out.append(st.floats(-1e6, 1e6).filter(lambda f: not f.is_integer()))
    return st.one_of(out)


@PROPS
@given(data=st.data(), name=st.sampled_from(sorted(PARAMS)))
def test_a_parameter_outside_openais_schema_is_refused_naming_it(
    data: st.DataObject, name: str
) -> None:
    doc = data.draw(chat_requests())
    doc[name] = data.draw(out_of_range(name))
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps(doc))
    param = info.value.param or ""
    assert param == name or param.startswith(f"{name}."), param  # it, or its key that is wrong
    assert param in info.value.message


message_like = st.dictionaries(
    st.sampled_from(["role", "content", "name", "tool_calls"]), json_values | st.sampled_from(ROLES)
)
bodies = json_values | st.fixed_dictionaries(
    {
        "model": plain_text | json_values,
        "messages": st.lists(message_like | json_values, min_size=1, max_size=3) | json_values,
    },
    optional={name: json_values for name in PARAMS},
)


HELLO = [{"role": "user", "content": "hi"}]
# OpenAI's schema contradicts itself on these: nullable in the request's own properties, a
# plain integer in the ModelResponseProperties it is allOf'd with. The gateway follows the
# request's own definition (null is accepted, as vLLM accepts it).
NULL_CONTRADICTED = {"top_logprobs"}


@settings(PROPS, max_examples=100)
@given(data=st.data(), name=st.sampled_from(sorted(PARAMS)))
def test_the_gateway_refuses_a_parameter_only_where_openais_schema_does(
    check_schema: Check, data: st.DataObject, name: str
) -> None:
    """What the gateway accepts, OpenAI's CreateChatCompletionRequest accepts, and what it
    refuses, that schema refuses — but for ``max_tokens`` below 1, which the schema leaves
    open and OpenAI's API (and vLLM) refuse."""
    ok = {"model": "m", "messages": HELLO, name: data.draw(valid_value(name))}
    parse_chat_request(orjson.dumps(ok))
    if not (ok[name] is None and name in NULL_CONTRADICTED):
        check_schema("CreateChatCompletionRequest", ok)
    bad = {**ok, name: data.draw(out_of_range(name))}
    with pytest.raises(InvalidRequest):
        parse_chat_request(orjson.dumps(bad))
    value = bad[name]
    below_one = isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1
    if name in ("max_tokens", "max_completion_tokens") and below_one and float(value).is_integer():
        return
    with pytest.raises(AssertionError, match="violated"):
        check_schema("CreateChatCompletionRequest", bad)


@pytest.mark.slow
@settings(PROPS, max_examples=500)
@given(doc=bodies)
def test_any_json_body_is_accepted_or_refused_with_a_400(doc: Any) -> None:
    try:
        parse_chat_request(orjson.dumps(doc))
    except GatewayError as exc:
        assert exc.status == 400 and exc.message


# -- ratings -------------------------------------------------------------------------------

STARS = st.integers(1, 5)
VALID_RATINGS = st.sampled_from(sorted(THUMBS)) | STARS


@PROPS
@given(rating=VALID_RATINGS)
def test_ratings_normalise_into_the_unit_interval(rating: str | int) -> None:
    score = normalise(rating)
    assert 0.0 <= score <= 1.0
    assert normalise(orjson.loads(orjson.dumps(rating))) == score


@PROPS
@given(a=STARS, b=STARS)
def test_more_stars_never_score_lower(a: int, b: int) -> None:
    assert (normalise(a) < normalise(b)) == (a < b)
    assert normalise(1) == normalise("down") and normalise(5) == normalise("up")


def _is_valid_rating(v: Any) -> bool:
    return (isinstance(v, str) and v in THUMBS) or (type(v) is int and 1 <= v <= 5)


@settings(PROPS, max_examples=300)
@given(rating=json_values.filter(lambda v: not _is_valid_rating(v)))
def test_any_other_rating_is_refused_naming_rating(rating: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        normalise(rating)
    assert info.value.param == "rating"


CFG = FeedbackConfig()


@st.composite
def feedback_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"response_id": draw(plain_text), "rating": draw(VALID_RATINGS)}
    if draw(st.booleans()):
        body["comment"] = draw(st.none() | st.text(max_size=CFG.max_comment_chars))
    if draw(st.booleans()):
        body["correction"] = draw(st.text(max_size=50).filter(str.strip))
    if draw(st.booleans()):
        body["user"] = draw(st.none() | st.text(max_size=256))
    if draw(st.booleans()):
        tag = st.text(min_size=1, max_size=CFG.max_tag_chars)
        body["tags"] = draw(st.none() | st.lists(tag, max_size=CFG.max_tags))
    return body


@PROPS
@given(body=feedback_bodies())
def test_valid_feedback_parses_to_its_score(body: dict[str, Any]) -> None:
    fb = parse_feedback(orjson.dumps(body), CFG)
    assert fb["score"] == normalise(body["rating"])
    assert fb["rating"] == body["rating"] and fb["tags"] == (body.get("tags") or [])


@PROPS
@given(body=feedback_bodies(), data=st.data())
def test_invalid_feedback_is_refused_naming_the_field(
    body: dict[str, Any], data: st.DataObject
) -> None:
    field = data.draw(
        st.sampled_from(
            ["rating", "comment", "correction", "user", "tags", "response_id", "unknown"]
        )
    )
    bad: dict[str, st.SearchStrategy[Any]] = {
        "rating": json_values.filter(lambda v: not _is_valid_rating(v)),
        "comment": st.text(min_size=CFG.max_comment_chars + 1, max_size=CFG.max_comment_chars + 9)
        | int64
        | st.lists(st.text(), max_size=1),
        "correction": st.text(" \t\n", max_size=3) | st.booleans(),
        "user": st.text(min_size=257, max_size=260) | int64,
        "tags": int64
        | st.text()
        | st.booleans()
        | st.just([""])
        | st.lists(st.text(min_size=1), min_size=CFG.max_tags + 1, max_size=CFG.max_tags + 2),
        "response_id": st.just("") | int64 | st.none(),
        "unknown": json_values,
    }
    name = (
        data.draw(st.from_regex(r"[a-z]{1,8}_x", fullmatch=True)) if field == "unknown" else field
    )
    body[name] = data.draw(bad[field])
    assume(
        not (field == "tags" and body[name] == "")
        and not (field == "comment" and body[name] is None)
    )
    with pytest.raises(InvalidRequest) as info:
        parse_feedback(orjson.dumps(body), CFG)
    assert info.value.param == name


# -- routing -------------------------------------------------------------------------------

USERS = [f"user-{i}" for i in range(4000)]
arm_weights = st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=6).filter(
    lambda ws: any(w > 0 for w in ws)
)


def arms_of(ws: list[float]) -> list[tuple[str, float]]:
    return [(f"arm-{i}", w) for i, w in enumerate(ws)]


@settings(PROPS, max_examples=60)
@given(ws=arm_weights, experiment=names)
def test_each_arm_gets_its_weights_share_of_users(ws: list[float], experiment: str) -> None:
    counts = Counter(Assigner(experiment, arms_of(ws)).arm_for(u) for u in USERS)
    total, n = sum(ws), len(USERS)
    for i, w in enumerate(ws):
        p = w / total
        # binomial spread (5 sd) plus the bucket rounding (one bucket of 10,000 per bound)
        slack = 5 * math.sqrt(n * p * (1 - p)) + 2 * n / 10_000 + 1
        assert abs(counts[f"arm-{i}"] - n * p) <= slack, (ws, counts)


@settings(PROPS, max_examples=60)
@given(ws=arm_weights, experiment=names, user=st.text(max_size=40))
def test_a_user_keeps_their_arm_on_every_replica(
    ws: list[float], experiment: str, user: str
) -> None:
    arms = arms_of(ws)
    first = Assigner(experiment, arms).arm_for(user)
    assert all(Assigner(experiment, list(arms)).arm_for(user) == first for _ in range(3))


@settings(PROPS, max_examples=60)
@given(ws=arm_weights, experiment=names)
def test_a_zero_weight_arm_is_never_chosen(ws: list[float], experiment: str) -> None:
    chosen = {Assigner(experiment, arms_of(ws)).arm_for(u) for u in USERS[:1000]}
    assert all(ws[int(a.split("-")[1])] > 0 for a in chosen)


@settings(PROPS, max_examples=60)
@given(
    control=st.floats(1, 1000),
    before=st.floats(0, 1000),
    growth=st.floats(0, 1000),
    experiment=names,
)
def test_ramping_a_canary_only_moves_users_into_it(
    control: float, before: float, growth: float, experiment: str
) -> None:
    small = Assigner(experiment, [("control", control), ("canary", before)])
    large = Assigner(experiment, [("control", control), ("canary", before + growth)])
    for u in USERS[:2000]:
        if small.arm_for(u) == "canary":
            assert large.arm_for(u) == "canary"  # nobody leaves the growing arm


@pytest.mark.xfail(
    strict=True,
    reason="with three or more arms the bucket ranges are contiguous and proportional, so "
    "growing one arm shifts the boundaries between the others: some users move between arms "
    "that did not change (weighted rendezvous hashing would not; it changes every assignment)",
)
@settings(PROPS, max_examples=60)
@given(ws=st.lists(st.floats(1, 100), min_size=3, max_size=5), growth=st.floats(1, 100))
def test_ramping_one_of_three_or_more_arms_only_moves_users_into_it(
    ws: list[float], growth: float
) -> None:
    grown = [*ws[:-1], ws[-1] + growth]
    small, large = Assigner("exp", arms_of(ws)), Assigner("exp", arms_of(grown))
    canary = f"arm-{len(ws) - 1}"
    for u in USERS[:2000]:
        assert small.arm_for(u) == large.arm_for(u) or large.arm_for(u) == canary


# -- curation ------------------------------------------------------------------------------

# Every character Python counts as whitespace, and a few that are not.
SPACES = [c for c in map(chr, range(0x3001)) if c.isspace()]
spaced_text = st.text(st.sampled_from([*SPACES, "a", "b", "é"]), max_size=16)


@settings(PROPS, max_examples=1000)
@given(text=spaced_text)
def test_normalised_text_keeps_its_words_and_only_single_spaces_and_newlines(text: str) -> None:
    out = normalise_text(text)
    assert out.split() == text.split()
    assert out == out.strip() and "  " not in out and "\n\n\n" not in out
    assert not any(c in out for c in "\r\t\f\v")
    assert all(line == line.strip() for line in out.split("\n"))
    assert normalise_text(out) == out
