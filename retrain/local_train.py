"""The ``local`` provider: LoRA with PEFT through TRL, on GPU when there is one, else CPU.

Supervised (``sft``): each ``train.jsonl`` line becomes a conversational
prompt–completion row (the conversation, then the assistant answer), so TRL's
``SFTTrainer`` computes the loss on the answer only. Preference (``dpo``): each
``preference.jsonl`` pair becomes ``prompt``/``chosen``/``rejected`` for
``DPOTrainer`` (the reference model is the base with the adapter disabled).

The adapter is written in the layout vLLM loads — ``adapter_config.json`` and
``adapter_model.safetensors``, ``bias="none"``, no ``modules_to_save``, no DoRA, a rank
vLLM accepts — to a directory named after the job, never reused. Train and validation
loss are reported through ``on_log`` as they come; ``should_stop`` is checked every
step (cancellation); training stops early once the validation loss has not improved
for ``patience`` evaluations. The learning rate warms up, then follows
``lr_scheduler``; a checkpoint is written at every evaluation, and a run of the same
dataset with the same settings resumes from the last one (TRL's
``resume_from_checkpoint``) — a training killed half-way is not started over.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import LocalTraining


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sft_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"prompt": line["messages"][:-1], "completion": line["messages"][-1:]} for line in lines
    ]


def dpo_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": line["input"]["messages"],
            "chosen": line["preferred_output"],
            "rejected": line["non_preferred_output"],
        }
        for line in lines
    ]


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The last ``checkpoint-N`` the trainer saved in ``checkpoint_dir`` (None: none)."""
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def plan(rows: int, cfg: LocalTraining) -> dict[str, int]:
    """Steps, warm-up steps and the evaluation (= checkpoint) interval for ``rows`` rows.

    Evaluation runs ``cfg.evaluations`` times over the run, so a small dataset is not
    evaluated every step and a large one not only once; a checkpoint is written at each.
    """
    per_epoch = max(1, math.ceil(rows / cfg.batch_size))
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    every = max(1, total // cfg.evaluations)
    return {"steps": total, "warmup_steps": round(total * cfg.warmup_ratio), "eval_steps": every}


def train(
    dataset_path: Path,
    out_dir: Path,
    cfg: LocalTraining,
    *,
    base_model: str,
    checkpoint_dir: Path,
    on_log: Callable[[dict[str, Any]], None] = lambda _row: None,
    on_checkpoint: Callable[[int], None] = lambda _step: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Train one adapter into ``out_dir``; returns a summary (steps, losses, device).

    Checkpoints go to ``checkpoint_dir`` at every evaluation; when it already holds one
    (a run of the same dataset and settings that died), training resumes from it.
    """
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # progress is reported through on_log
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    gpu = torch.cuda.is_available()
    if cfg.method == "dpo":
        train_rows = dpo_rows(_jsonl(dataset_path / "preference.jsonl"))
        eval_rows: list[dict[str, Any]] = []
    else:
        train_rows = sft_rows(_jsonl(dataset_path / "train.jsonl"))
        eval_rows = sft_rows(_jsonl(dataset_path / "validation.jsonl"))
    if not train_rows:
        raise ValueError(f"{dataset_path}: no training rows for method {cfg.method}")
    steps = plan(len(train_rows), cfg)
    resume = latest_checkpoint(checkpoint_dir)

    history: list[dict[str, Any]] = []
    best = {"loss": math.inf, "stale": 0}

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            row = {"step": state.global_step}
            for name in ("loss", "eval_loss", "learning_rate"):
                if isinstance(logs.get(name), int | float):
                    row[name] = float(logs[name])
            if "loss" in row or "eval_loss" in row:
                history.append(row)
                on_log(row)
            if "eval_loss" in row:
                if row["eval_loss"] < best["loss"] - 1e-6:
                    best.update(loss=row["eval_loss"], stale=0)
                else:
                    best["stale"] += 1
                    if best["stale"] >= cfg.patience:
                        control.should_training_stop = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if should_stop():
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            on_checkpoint(state.global_step)

    common: dict[str, Any] = {
        "output_dir": str(checkpoint_dir),
        "learning_rate": cfg.learning_rate,
        "max_steps": steps["steps"],
        "warmup_steps": steps["warmup_steps"],
        "lr_scheduler_type": cfg.lr_scheduler,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": steps["eval_steps"],
        "save_total_limit": 1,
        "report_to": [],
        "seed": cfg.seed,
        "use_cpu": not gpu,
        "bf16": gpu and torch.cuda.is_bf16_supported(),
        "disable_tqdm": True,
    }
    if eval_rows:
        common.update(eval_strategy="steps", eval_steps=steps["eval_steps"])
    peft_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

        trainer: Any = DPOTrainer(
            model=base_model,
            args=DPOConfig(beta=cfg.dpo_beta, max_length=cfg.max_length, **common),
            train_dataset=Dataset.from_list(train_rows),
            peft_config=peft_config,
            callbacks=[Progress()],
        )
    else:
        from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

        trainer = SFTTrainer(
            model=base_model,
            args=SFTConfig(max_length=cfg.max_length, **common),
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            peft_config=peft_config,
            callbacks=[Progress()],
        )
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    if eval_rows and resume is None:
        trainer.evaluate()  # step 0's validation loss, reported through Progress.on_log
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.model.save_pretrained(str(out_dir), save_embedding_layers=False)
    evals = [row["eval_loss"] for row in history if "eval_loss" in row]
    return {
        "steps": int(result.global_step),
        "planned_steps": steps["steps"],
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else None,
        "train_loss": float(result.training_loss),
        "eval_loss_first": evals[0] if evals else None,
        "eval_loss_last": evals[-1] if evals else None,
        "device": "cuda" if gpu else "cpu",
        "cancelled": should_stop(),
        "stopped_early": best["stale"] >= cfg.patience,
    }
