"""An in-context candidate from the latest distillation dataset (``retrain icl``).

No training: the candidate is a base model the gateway already routes, registered again
with ``in_context`` — the examples of the teacher's answers in the latest distillation
dataset version's ``train.jsonl`` (``retrain build --distill``), of which the gateway puts
the ``k`` most similar to each request in front of its conversation — and added as a
canary arm of the experiment beside the teacher, at ``retrain.canary_share``, as
``retrain run --distill`` canaries a trained student. The examples travel in the
registration, so the gateway need not see the dataset directory.

Before it joins the experiment the candidate passes the gate ``retrain run --distill``
applies to a trained student: on the dataset version's test split, the teacher and the
candidate answer the held-out questions and are scored against the teacher's logged
answers; the lower bound of the interval of the candidate's gain must reach
``retrain.distill.margin`` (not worse than the teacher by more than that). A rejected
candidate (exit 6) or a test split too small to decide (exit 7) is unregistered again:
nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.documents import Evaluation
from gateway.core.in_context import read_examples

from . import evaluate, tokens
from .config import RetrainSettings
from .dataset import dataset_root
from .errors import InvalidInput, NotFound
from .gateway_client import Gateway


@dataclass
class Outcome:
    name: str
    dataset: str
    examples: int
    weight: float  # its arm's weight; 0 when the gate did not pass it
    evaluation: Evaluation
    code: int  # the gate's: 0 canaried, 6 rejected, 7 collect more

    @property
    def canaried(self) -> bool:
        return self.code == evaluate.PASSED


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
) -> Outcome:
    cfg = settings.retrain
    gateway = Gateway(settings)
    spec = gateway.teacher_experiment(experiment, teacher, "candidate")["spec"]
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
    try:
        gate = cfg.teacher_gate()
        counter = tokens.for_models(settings, gateway.model, [teacher, name])
        result = evaluate.gate_dataset(
            root / version, gateway.ask, teacher, name, gate, tokens=counter
        )
        log(f"evaluation: {result['reason']}")
        if not result["passed"]:
            gateway.unregister(name)
            code = evaluate.OUTCOME_CODES[result["outcome"]]
            return Outcome(name, version, len(examples), 0.0, result, code)
        others = sum(a["weight"] for a in spec["arms"])
        weight = round(others * cfg.canary_share / (1 - cfg.canary_share), 6)
        gateway.add_arm(experiment, name, weight)
    except Exception:
        gateway.unregister(name)  # no registered model left behind without its arm
        raise
    return Outcome(name, version, len(examples), weight, result, evaluate.PASSED)
