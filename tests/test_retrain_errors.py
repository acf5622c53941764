"""Why a ``retrain`` command stopped, and the exit code a cron job acts on: each problem
is raised as its class of ``retrain.errors`` where it is found, and the command line
prints it once (``retrain <command>: <message>``) with the class's code.

The commands run in process (``retrain.cli.main``) against a real Redis; the gateway
they call is a port where nothing listens.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flywheel_stack import free_port
from gateway.core.config import DEFAULT_CONFIG
from retrain import cli
from retrain.exit_codes import ExitCode

from .multilingual import ANSWERS
from .services import RedisProcess

Run = Callable[..., tuple[int, str]]


@pytest.fixture
def retrain(
    redis_server: RedisProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    """``retrain(*argv)`` → (exit code, stderr), with a config on the session's Redis
    (database 5: nothing here is written) and a gateway that does not answer."""
    doc = {
        **DEFAULT_CONFIG,
        "redis_url": f"{redis_server.url}/5",
        "data_dir": str(tmp_path / "data"),
        "retrain": {
            **DEFAULT_CONFIG["retrain"],
            "dataset_dir": str(tmp_path / "datasets"),
            "gateway_url": f"http://127.0.0.1:{free_port()}",
        },
    }
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True))
    monkeypatch.delenv("FLYWHEEL_LAUNCH_DIR", raising=False)

    def run(*argv: str, config_file: bool = True) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main([*argv, *(["--config", str(config)] if config_file else [])])
        return code, capsys.readouterr().err

    return run


def test_each_problem_exits_with_its_class_code_and_one_line_naming_the_command(
    retrain: Run, tmp_path: Path
) -> None:
    not_an_adapter = tmp_path / "not-an-adapter"
    not_an_adapter.mkdir()
    missing = tmp_path / "missing.jsonl"
    cases: list[tuple[list[str], bool, int, str]] = [
        (
            ["build", "--experiment", "default", "--since", "last tuesday"],
            True,
            ExitCode.USAGE,
            "retrain build: --since: not an ISO date: 'last tuesday'",
        ),
        (
            ["export-feedback", "--since", "soon", "--out", str(tmp_path / "out.jsonl")],
            True,
            ExitCode.USAGE,
            "retrain export-feedback: --since: not an ISO date: 'soon'",
        ),
        (["status", "job-nobody-made"], True, ExitCode.ERROR, "no job 'job-nobody-made'"),
        (["cancel", "job-nobody-made"], True, ExitCode.ERROR, "no job 'job-nobody-made'"),
        (
            ["export", "support-v9", "--out", str(tmp_path / "v9")],
            True,
            ExitCode.ERROR,
            "retrain export: gateway: GET /admin/models/support-v9: no answer from",
        ),
        (
            ["export", str(not_an_adapter), "--out", str(tmp_path / "copy")],
            False,
            ExitCode.USAGE,
            "is not an adapter directory (no adapter_config.json)",
        ),
        (
            ["eval", "--candidate", "b", "--control", "a", "--golden", str(missing)],
            True,
            ExitCode.USAGE,
            f"retrain eval: {missing}: cannot read it: No such file or directory",
        ),
        (
            ["embed", "--base", "x", "--out", str(tmp_path / "c"), "--register", "n"],
            True,
            ExitCode.USAGE,
            "retrain embed: --register needs --upstream",
        ),
        (
            ["embed", "--base", "x", "--out", str(tmp_path / "c"), "--no-feedback"]
            + ["--triples", str(missing)],
            True,
            ExitCode.USAGE,
            f"retrain embed: {missing}: cannot read it",
        ),
        (
            ["review", "import", "--experiment", "default", str(missing)],
            True,
            ExitCode.ERROR,
            f"retrain review import: {missing}: cannot read it",
        ),
        (
            ["join-training"],
            False,
            ExitCode.USAGE,
            "retrain join-training: --launch-dir or $FLYWHEEL_LAUNCH_DIR",
        ),
        (
            ["forget", "--user", " "],
            True,
            ExitCode.USAGE,
            "retrain forget: The user id to forget must not be empty.",
        ),
    ]
    for argv, config_file, code, message in cases:
        got, err = retrain(*argv, config_file=config_file)
        assert (got, message in err) == (code, True), (argv, err)
        assert len(err.splitlines()) == 1, err  # one line: no traceback
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "copy").exists()


@pytest.mark.parametrize("form", ["NFC", "NFD"])
@pytest.mark.parametrize("language", sorted(ANSWERS))
def test_a_golden_set_that_is_not_chat_is_refused_naming_its_file_and_line(
    retrain: Run, tmp_path: Path, language: str, form: str
) -> None:
    """The file's name and its words reach the message as they were written (a Thai or
    Vietnamese file name in either normal form), and nothing is asked of the gateway."""
    text = unicodedata.normalize(form, ANSWERS[language])
    golden = tmp_path / f"{text.split()[0]}.jsonl"
    rows = [
        f'{{"messages": [{{"role": "user", "content": "{text}"}}, '
        f'{{"role": "assistant", "content": "{text}"}}]}}',
        f'{{"messages": [{{"role": "user", "content": "{text}"}}]}}',  # no answer
    ]
    golden.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, err = retrain("eval", "--candidate", "b", "--control", "a", "--golden", str(golden))
    assert code == ExitCode.USAGE
    assert err.startswith(f"retrain eval: {golden}:2: not a chat example"), err
