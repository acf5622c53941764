"""What ``retrain run`` checks before it touches the feedback stream.

Every check that can fail without training anything runs first, and all of them run:
the run then stops with exit code 2 and one line per problem, having consumed no
rating, built no dataset and started no job. What is checked:

- the gateway answers at ``retrain.gateway_url``, the admin key is accepted and the
  experiment exists;
- ``local``: the base model is known (``retrain.local.base_model``, or asked from the
  vLLM upstream, which lists the path it serves as the model's ``root``) and readable;
  the adapter directory is writable; the upstream is a vLLM one whose ``max_lora_rank``
  (when the config states it) covers ``retrain.local.r``; this machine can train as
  configured (QLoRA needs CUDA and bitsandbytes, FSDP/DeepSpeed need GPUs, no more
  processes than GPUs);
- ``openai``: an API key is set;
- the dataset directory is writable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from .config import RetrainSettings


def _writable(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def upstream_base_model(settings: RetrainSettings) -> str:
    """The model the local provider's vLLM upstream serves, as vLLM names its root."""
    name = settings.retrain.local.upstream
    up = settings.upstreams.get(name)
    if up is None:
        raise ValueError(f"retrain.local.upstream: unknown upstream '{name}'")
    if up.kind != "vllm":
        raise ValueError(f"retrain.local.upstream: '{name}' is {up.kind}, not vllm")
    key = up.api_key.get_secret_value()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = up.urls[0].rstrip("/") + "/models"
    try:
        resp = httpx.get(url, headers=headers, timeout=10)
        resp.raise_for_status()
        models: list[dict[str, Any]] = resp.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"retrain.local.base_model is not set and the upstream '{name}' did not say "
            f"what it serves ({url}: {exc}); set it to the model vLLM serves"
        ) from None
    bases = sorted({str(m.get("root") or m["id"]) for m in models if not m.get("parent")})
    if len(bases) != 1:
        raise ValueError(
            f"retrain.local.base_model is not set and the upstream '{name}' serves "
            f"{len(bases)} base models ({', '.join(bases) or 'none'}); set it"
        )
    return bases[0]


def base_model(settings: RetrainSettings) -> str:
    """``retrain.local.base_model``, else what the vLLM upstream serves."""
    return settings.retrain.local.base_model or upstream_base_model(settings)


def _model_problem(model: str) -> str | None:
    path = Path(model).expanduser()
    if path.exists() or model.startswith(("/", ".", "~")):
        if not (path / "config.json").is_file():
            return f"retrain.local.base_model: {model} is not a model directory (no config.json)"
        if not os.access(path, os.R_OK):
            return f"retrain.local.base_model: {model} is not readable"
    return None  # a hub name: loaded from the local cache or the hub when training


def _gateway_problems(settings: RetrainSettings, experiment: str) -> list[str]:
    from .errors import GatewayUnavailable
    from .gateway_client import Gateway

    cfg = settings.retrain
    gateway = Gateway(settings)
    try:
        resp = gateway.http.get(f"/admin/experiments/{experiment}", headers=gateway.admin)
    except GatewayUnavailable as exc:
        return [f"retrain.gateway_url: the gateway at {cfg.gateway_url} does not answer: {exc}"]
    finally:
        gateway.http.close()
    if resp.status_code in (401, 403):
        return [
            f"retrain.admin_key: the gateway refused it (HTTP {resp.status_code}); "
            "registering a candidate needs an admin key"
        ]
    if resp.status_code == 404:
        return [f"experiment '{experiment}' does not exist in the gateway at {cfg.gateway_url}"]
    if resp.is_error:
        return [f"retrain.gateway_url: GET {resp.request.url.path}: HTTP {resp.status_code}"]
    return []


def check(
    settings: RetrainSettings, experiment: str, provider: str
) -> tuple[list[str], str | None]:
    """Every problem found (empty: go ahead), and the base model a local run trains."""
    cfg = settings.retrain
    problems = _gateway_problems(settings, experiment)
    model: str | None = None
    if provider == "local":
        local = cfg.local
        try:
            model = base_model(settings)
        except ValueError as exc:
            problems.append(str(exc))
        else:
            problem = _model_problem(model)
            if problem:
                problems.append(problem)
        up = settings.upstreams.get(local.upstream)
        if up is not None and up.max_lora_rank is not None and up.max_lora_rank < local.r:
            problems.append(
                f"retrain.local.r: rank {local.r} is above the upstream '{local.upstream}' "
                f"max_lora_rank {up.max_lora_rank}: vLLM would refuse the adapter "
                "(lower r, or start vLLM with a larger --max-lora-rank)"
            )
        why = _writable(local.adapter_dir)
        if why:
            problems.append(f"retrain.local.adapter_dir: {local.adapter_dir}: not writable ({why})")
        from .local_train import problems as training_problems

        problems.extend(training_problems(local))
    elif not cfg.openai.api_key.get_secret_value():
        problems.append("retrain.openai.api_key: not set (e.g. api_key: ${OPENAI_API_KEY})")
    from . import evaluate

    golden = evaluate.golden_problem(cfg.eval)
    if golden:
        problems.append(golden)
    why = _writable(cfg.dataset_dir)
    if why:
        problems.append(f"retrain.dataset_dir: {cfg.dataset_dir} is not writable: {why}")
    return problems, model
