"""An in-context candidate from the latest distillation dataset (``retrain icl``).

No training: the candidate is a base model the gateway already routes, registered again
with ``in_context`` — the examples of the teacher's answers in the latest distillation
dataset version's ``train.jsonl`` (``retrain build --distill``), of which the gateway puts
the ``k`` most similar to each request in front of its conversation — and added as a
canary arm of the experiment beside the teacher, at ``retrain.canary_share``, as
``retrain run --distill`` canaries a trained student. The examples travel in the
registration, so the gateway need not see the dataset directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.in_context import read_examples

from .config import RetrainSettings
from .dataset import dataset_root
from .errors import InvalidInput, NotFound, UsageError
from .gateway_client import Gateway


@dataclass
class Registered:
    name: str
    dataset: str
    examples: int
    weight: float


def register_icl(
    settings: RetrainSettings,
    *,
    experiment: str,
    teacher: str,
    base: str,
    name: str,
    k: int,
    workload: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Registered:
    cfg = settings.retrain
    root = dataset_root(cfg.dataset_dir, experiment, workload=workload, teacher=teacher)
    pointer = root / "latest"
    if not pointer.exists():
        raise NotFound(
            f"no distillation dataset of '{teacher}' for '{experiment}'"
            + (f" (workload '{workload}')" if workload else "")
            + f" in {root}: run `retrain build --experiment {experiment} --distill "
            f"--teacher {teacher}` first"
        )
    version = pointer.read_text().strip()
    train = root / version / "train.jsonl"
    try:
        examples = read_examples(str(train))
    except ValueError as exc:
        raise InvalidInput(f"{version}: {exc}") from None
    gateway = Gateway(settings)
    spec = gateway.experiment(experiment)["spec"]
    arms = [a["model"] for a in spec["arms"]]
    if teacher not in arms:
        raise UsageError(
            f"the teacher '{teacher}' is no arm of '{experiment}' (its arms: "
            f"{', '.join(arms)}): the candidate is canaried beside its teacher"
        )
    served = gateway.model(base)
    body: dict[str, Any] = {
        "name": name,
        "upstream": served["upstream"],
        "model": served["model"],
        "in_context": {"examples": examples, "k": k},
        "lineage": {
            "kind": "in-context",
            "base": base,
            "teacher": teacher,
            "dataset": version,
            "experiment": experiment,
            **({"workload": workload} if workload else {}),
        },
    }
    if served.get("adapter_path"):
        body["adapter_path"] = served["adapter_path"]
    gateway.register(body)
    log(f"registered {name}: {base} with {k} of {len(examples)} examples of {version}")
    others = sum(a["weight"] for a in spec["arms"])
    weight = round(others * cfg.canary_share / (1 - cfg.canary_share), 6)
    try:
        gateway.add_arm(experiment, name, weight)
    except Exception:
        gateway.unregister(name)  # no registered model left behind without its arm
        raise
    return Registered(name, version, len(examples), weight)
