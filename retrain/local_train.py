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
for ``patience`` evaluations.
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
    return [{"prompt": line["messages"][:-1], "completion": line["messages"][-1:]}
            for line in lines]  # fmt: skip


def dpo_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"prompt": line["input"]["messages"], "chosen": line["preferred_output"],
             "rejected": line["non_preferred_output"]} for line in lines]  # fmt: skip


def train(
    dataset_path: Path,
    out_dir: Path,
    cfg: LocalTraining,
    *,
    base_model: str,
    on_log: Callable[[dict[str, Any]], None] = lambda _row: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Train one adapter into ``out_dir``; returns a summary (steps, losses, device)."""
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback

    datasets.disable_progress_bars()  # progress is reported through on_log

    gpu = torch.cuda.is_available()
    if cfg.method == "dpo":
        train_rows = dpo_rows(_jsonl(dataset_path / "preference.jsonl"))
        eval_rows: list[dict[str, Any]] = []
    else:
        train_rows = sft_rows(_jsonl(dataset_path / "train.jsonl"))
        eval_rows = sft_rows(_jsonl(dataset_path / "validation.jsonl"))
    if not train_rows:
        raise ValueError(f"{dataset_path}: no training rows for method {cfg.method}")

    history: list[dict[str, Any]] = []
    best = {"loss": math.inf, "stale": 0}

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            row = {"step": state.global_step}
            for name in ("loss", "eval_loss"):
                if isinstance(logs.get(name), int | float):
                    row[name] = float(logs[name])
            if len(row) > 1:
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

    common: dict[str, Any] = {
        "output_dir": str(out_dir.parent / (out_dir.name + ".work")),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": cfg.seed,
        "use_cpu": not gpu,
        "bf16": gpu,
        "disable_tqdm": True,
    }
    if eval_rows:
        steps = max(1, (cfg.max_steps or 10) // 10)
        common.update(eval_strategy="steps", eval_steps=steps)
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
    first_eval = trainer.evaluate()["eval_loss"] if eval_rows else None
    if first_eval is not None:
        on_log({"step": 0, "eval_loss": float(first_eval)})
        history.insert(0, {"step": 0, "eval_loss": float(first_eval)})
    result = trainer.train()
    trainer.model.save_pretrained(str(out_dir), save_embedding_layers=False)
    evals = [row["eval_loss"] for row in history if "eval_loss" in row]
    return {
        "steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "eval_loss_first": evals[0] if evals else None,
        "eval_loss_last": evals[-1] if evals else None,
        "device": "cuda" if gpu else "cpu",
        "cancelled": should_stop(),
        "stopped_early": best["stale"] >= cfg.patience,
    }
