"""Configuration: a mistake stops start-up with one line naming the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.core.config import ConfigError, load_settings

GOOD = """
listen: {host: 0.0.0.0, port: 8000}
redis_url: ${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
auth:
  api_keys: [{key: "${TEST_API_KEY}", name: default}]
upstreams:
  local:  {kind: vllm,   base_url: http://127.0.0.1:8001/v1, api_key: "", timeout_s: 120}
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key: "${OPENAI_API_KEY:-}"}
models:
  base:       {upstream: local, model: base}
  support-v1: {upstream: local, model: support-v1, adapter_path: ./adapters/support-v1}
  ft-mini:    {upstream: openai, model: "ft:gpt-4o-mini-2024-07-18:acme::abc123"}
experiments:
  support-bot:
    arms: [{model: base, weight: 90}, {model: support-v1, weight: 10}]
    fallback: base
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flywheel.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={"TEST_API_KEY": "k" * 20, **(env or {})})
    return info.value.problems


def test_the_documented_example_loads_with_env_substitution(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD), env={"TEST_API_KEY": "sk-abc"})
    assert s.redis_url == "redis://127.0.0.1:6379/0"  # the ${VAR:-default}
    assert s.auth.api_keys[0].key.get_secret_value() == "sk-abc"
    assert s.upstreams["openai"].api_key.get_secret_value() == ""
    assert s.experiments["support-bot"].arms[1].weight == 10


def test_no_config_gives_the_local_default() -> None:
    s = load_settings(None, env={})
    assert s.redis_url is None  # embedded Redis
    assert s.upstreams["local"].base_url == "http://127.0.0.1:8001/v1"
    assert [a.model for a in s.experiments["default"].arms] == ["base"]
    assert not s.auth.api_keys and not s.auth.admin_keys  # open: local development


def test_a_short_id_secret_is_refused_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text('id_secret: "short"\n')
    with pytest.raises(ConfigError, match=r"^id_secret: .*at least 16 bytes"):
        load_settings(path, env={})


def test_environment_overrides_a_top_level_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "redis://elsewhere:6379/1")
    s = load_settings(write(tmp_path, GOOD), env={"TEST_API_KEY": "x"})
    assert s.redis_url == "redis://elsewhere:6379/1"


def test_unknown_arm_model_names_the_key_path(tmp_path: Path) -> None:
    bad = GOOD.replace("{model: support-v1, weight: 10}", "{model: v2, weight: 10}")
    assert problems(tmp_path, bad) == ["experiments.support-bot.arms[1].model: unknown model 'v2'"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("weight: 10}", "weight: -1}"), "experiments.support-bot.arms[1].weight: Input should be"),
        (("kind: vllm,", "kind: tgi,"), "upstreams.local.kind: Input should be 'vllm' or 'openai'"),
        (
            ("fallback: base", "fallback: nope"),
            "experiments.support-bot.fallback: unknown model 'nope'",
        ),
        (
            ("upstream: local, model: base}", "upstream: gpu, model: base}"),
            "models.base.upstream: unknown upstream 'gpu'",
        ),
        (("listen: {host", "listen: {hots"), "listen.hots: unknown key"),
        (("port: 8000", "port: eighty"), "listen.port: Input should be a valid integer"),
        (
            ("timeout_s: 120", "timeout_s: 0"),
            "upstreams.local.timeout_s: Input should be greater than 0",
        ),
        (
            ("${TEST_API_KEY}", "${NOT_SET_ANYWHERE}"),
            "auth.api_keys[0].key: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            (
                "base_url: http://127.0.0.1:8001/v1,",
                "base_urls: [http://10.0.0.1:8001/v1], base_url: http://127.0.0.1:8001/v1,",
            ),
            "upstreams.local: Value error, give exactly one of base_url and base_urls",
        ),
        (
            ("fallback: base", "fallback: base\n    shadow: {model: nope, share: 0.1}"),
            "experiments.support-bot.shadow.model: unknown model 'nope'",
        ),
        (
            ("fallback: base", "fallback: base\n    control: ft-mini"),
            "experiments.support-bot.control: 'ft-mini' is not one of the arms",
        ),
        (
            ("fallback: base", "fallback: base\n    decision: {alpha: 2}"),
            "experiments.support-bot.decision.alpha: Input should be less than 1",
        ),
        (
            ("{model: base, weight: 90}", "{model: base, weight: 90}, {model: base, weight: 1}"),
            "experiments.support-bot.arms[1].model: 'base' is already an arm",
        ),
        (
            ("redis_url: ${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}", "redis_cluster: true"),
            "redis_cluster: needs redis_url, a redis:// or rediss:// URL of one cluster node",
        ),
        (
            (
                "redis_url: ${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}",
                "redis_url: unix:///r.sock\nredis_cluster: true",
            ),
            "redis_cluster: needs redis_url",
        ),
        (
            ("listen: {host", "interaction_log: {hot_s: 900}\nlisten: {host"),
            "archive.max_wait_s: 600 s must be below half of interaction_log.hot_s (900 s)",
        ),
        (
            ("listen: {host", "feedback: {hot_s: 60}\narchive: {max_wait_s: 30}\nlisten: {host"),
            "archive.max_wait_s: 30 s must be below half of feedback.hot_s (60 s)",
        ),
    ],
)
def test_each_mistake_is_one_line_with_its_path(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    found = problems(tmp_path, GOOD.replace(*change))
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_replicas_prices_and_experiment_rules_load(tmp_path: Path) -> None:
    text = (
        GOOD.replace(
            "base_url: http://127.0.0.1:8001/v1,",
            "base_urls: [http://10.0.0.1:8001/v1, http://10.0.0.2:8001/v1], breaker: {failures: 3},",
        )
        .replace(
            "fallback: base",
            "fallback: base\n    control: base\n    auto_promote: true\n"
            "    decision: {min_ratings: 200}\n    shadow: {model: ft-mini, share: 0.05}",
        )
        .replace(
            "model: base}", "model: base, price: {prompt_per_1m: 0.1, completion_per_1m: 0.4}}"
        )
    )
    s = load_settings(write(tmp_path, text), env={"TEST_API_KEY": "x"})
    assert s.upstreams["local"].urls == ["http://10.0.0.1:8001/v1", "http://10.0.0.2:8001/v1"]
    assert s.upstreams["local"].breaker.failures == 3
    exp = s.experiments["support-bot"]
    assert exp.auto_promote and exp.decision.min_ratings == 200 and exp.decision.alpha == 0.05
    assert exp.shadow is not None and exp.shadow.model == "ft-mini"
    assert exp.models() == {"base", "support-v1", "ft-mini"}
    price = s.models["base"].price
    assert price is not None and price.completion_per_1m == 0.4


def test_all_arms_at_zero_weight_is_refused(tmp_path: Path) -> None:
    bad = GOOD.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0")
    assert problems(tmp_path, bad) == [
        "experiments.support-bot.arms: at least one arm needs a weight > 0"
    ]


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    found = problems(tmp_path, "models:\n  base: {upstream: local\n  x: [")
    assert found[0].startswith(f"{tmp_path / 'flywheel.yaml'}:")
    assert "invalid YAML" in found[0]


def test_a_broken_file_stops_serve_with_the_key_path(tmp_path: Path) -> None:
    bad = GOOD.replace("{model: support-v1, weight: 10}", "{model: v2, weight: 10}")
    path = write(tmp_path, bad)
    for command in ("serve", "check-config"):
        run = subprocess.run(
            [sys.executable, "-m", "gateway", command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"TEST_API_KEY": "sk-x", "PATH": "/usr/bin:/bin"},
        )
        assert run.returncode == 2
        assert run.stderr.strip() == (
            "gateway: config error: experiments.support-bot.arms[1].model: unknown model 'v2'"
        )


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(write(tmp_path, GOOD))],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TEST_API_KEY": "sk-x", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok: 2 upstreams, 3 models, 1 experiments")


REPO = Path(__file__).resolve().parents[1]
PRODUCTION_ENV = {
    "FLYWHEEL_REDIS_URL": "redis://redis:6379/0",
    "FLYWHEEL_ID_SECRET": "an-id-secret-of-32-chars-or-more",
    "FLYWHEEL_API_KEY": "sk-client-0123456789",
    "FLYWHEEL_ADMIN_KEY": "sk-admin-0123456789",
    "OPENAI_API_KEY": "sk-openai-0123456789",
    "PATH": "/usr/bin:/bin",
}


def gateway_cli(
    *args: str, env: dict[str, str] | None = None, command: str = "gateway"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("command", ["gateway", "retrain"])
@pytest.mark.parametrize(("example", "env"), [("local", None), ("production", PRODUCTION_ENV)])
def test_the_example_configs_pass_check_config(
    example: str, env: dict[str, str] | None, command: str
) -> None:
    path = str(REPO / "examples" / f"{example}.yaml")
    run = gateway_cli("check-config", "--config", path, env=env, command=command)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok: ")


def test_each_package_checks_its_own_sections_of_the_one_file(tmp_path: Path) -> None:
    """The retrain section's schema is the retrain package's: a mistake there is reported
    by ``retrain check-config`` (and every retrain command) by key path; the gateway,
    which reads only ``retrain.dataset_dir``, starts with it."""
    doc = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    doc["retrain"]["local"]["r"] = 12
    doc["retrain"]["min_exampels"] = 3
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(doc))
    for command in ("check-config", "build"):
        args = ["--experiment", "default"] if command == "build" else []
        run = gateway_cli(command, "--config", str(path), *args, command="retrain")
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.stderr.splitlines() == [
            "retrain: config error: retrain.local.r: Input should be 8, 16, 32 or 64",
            "retrain: config error: retrain.min_exampels: unknown key",
        ]
    gateway = gateway_cli("check-config", "--config", str(path))
    assert gateway.returncode == 0, gateway.stderr
    assert "the retrain section: `retrain check-config`" in gateway.stdout
    doc["retrain"] = {"dataset_dir": ["not", "a", "path"]}
    path.write_text(yaml.safe_dump(doc))
    gateway = gateway_cli("check-config", "--config", str(path))
    assert gateway.returncode == 2
    assert "retrain.dataset_dir: Input is not a valid path" in gateway.stderr


def test_the_production_example_needs_its_secrets_from_the_environment() -> None:
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "FLYWHEEL_ADMIN_KEY"}
    run = gateway_cli(
        "check-config", "--config", str(REPO / "examples" / "production.yaml"), env=env
    )
    assert run.returncode == 2
    assert "environment variable FLYWHEEL_ADMIN_KEY is not set" in run.stderr


@pytest.mark.parametrize("source", [None, "production"])
def test_config_show_prints_the_effective_config_that_check_config_accepts(
    tmp_path: Path, source: str | None
) -> None:
    args = ["--config", str(REPO / "examples" / f"{source}.yaml")] if source else []
    env = PRODUCTION_ENV if source else None
    shown = gateway_cli("config", "show", *args, env=env, command="retrain")
    assert shown.returncode == 0, shown.stderr
    doc = yaml.safe_load(shown.stdout)
    assert doc["interaction_log"]["batch_size"] == 2048  # a default, filled in
    if source:
        assert doc["auth"]["admin_keys"][0]["key"] == doc["id_secret"] == "**masked-secret**"
        assert "sk-admin" not in shown.stdout and "sk-openai" not in shown.stdout
    else:
        assert doc["retrain"]["min_examples"] == 10  # the quick-start stack's profile
        assert doc["upstreams"]["local"]["max_lora_rank"] >= doc["retrain"]["local"]["r"]
    assert doc["retrain"]["local"]["lora_alpha"] == 32  # the retrain section's defaults too
    path = tmp_path / "shown.yaml"
    path.write_text(shown.stdout)
    for command in ("gateway", "retrain"):
        assert gateway_cli("check-config", "--config", str(path), command=command).returncode == 0
    gateway_only = gateway_cli("config", "show", *args, env=env)
    assert gateway_only.returncode == 0, gateway_only.stderr
    assert yaml.safe_load(gateway_only.stdout)["interaction_log"] == doc["interaction_log"]
