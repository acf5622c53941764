"""The ``local`` provider: LoRA with PEFT through TRL, on GPU when there is one, else CPU.

Supervised (``sft``): each ``train.jsonl`` line becomes a conversational
prompt–completion row (the conversation, then the assistant answer), so TRL's
``SFTTrainer`` computes the loss on the answer only. Preference (``dpo``): each
``preference.jsonl`` pair becomes ``prompt``/``chosen``/``rejected`` for
``DPOTrainer`` (the reference model is the base with the adapter disabled), with the
held-out pairs of ``preference_validation.jsonl`` as its validation set.

The adapter is written in the layout vLLM loads — ``adapter_config.json`` and
``adapter_model.safetensors``, ``bias="none"``, no ``modules_to_save``, no DoRA, a rank
vLLM accepts — to a directory named after the job, never reused. Train and validation
loss are reported through ``on_log`` as they come; ``should_stop`` is checked every
step (cancellation); training stops early once the validation loss has not improved
for ``patience`` evaluations. The learning rate warms up, then follows
``lr_scheduler``; a checkpoint is written at every evaluation, and a run of the same
dataset with the same settings resumes from the last one (TRL's
``resume_from_checkpoint``) — a training killed half-way is not started over.

**More than one process** (``processes`` above 1): the same training is launched with
Hugging Face Accelerate (``accelerate launch``, one process per GPU, gloo on CPU) running
:mod:`retrain.train_worker`; ``batch_size`` stays the rows per optimizer step, split
between the processes, so the loss curve is the one process's. Only rank 0 reports
progress and writes the adapter; this process relays its reports to ``on_log`` /
``on_checkpoint`` and asks every rank to stop (together) when ``should_stop`` says so.
``distributed`` picks DDP (default), FSDP or DeepSpeed ZeRO-3 — the latter two shard the
model and need GPUs.

**QLoRA** (``quantization: 4bit``): the base is loaded in 4 bits (bitsandbytes NF4,
double quantization, bf16 compute) and prepared with PEFT's k-bit preparation; it needs
CUDA and bitsandbytes, and :func:`problems` says so before anything is consumed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import LocalTraining
from .errors import InvalidInput, UsageError


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


def problems(cfg: LocalTraining) -> list[str]:
    """What keeps this machine from training with ``cfg`` (empty: nothing), one line each."""
    import torch

    found = []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.quantization == "4bit":
        if not gpus:
            found.append(
                "retrain.local.quantization: 4bit (QLoRA) needs a CUDA GPU and there is none "
                "here; train unquantized (quantization: none) or on a GPU machine"
            )
        elif importlib.util.find_spec("bitsandbytes") is None:
            found.append(
                "retrain.local.quantization: 4bit (QLoRA) needs bitsandbytes: "
                "pip install bitsandbytes"
            )
        if cfg.distributed != "ddp" and cfg.processes > 1:
            found.append(
                f"retrain.local.quantization: 4bit is trained with distributed: ddp, "
                f"not {cfg.distributed}"
            )
    if cfg.processes > 1 and cfg.distributed != "ddp":
        if not gpus:
            found.append(
                f"retrain.local.distributed: {cfg.distributed} shards the model between GPUs "
                "and there is none here (on CPU it would quietly run as DDP); "
                "use distributed: ddp"
            )
        if cfg.distributed == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
            found.append("retrain.local.distributed: deepspeed needs: pip install deepspeed")
    if gpus and cfg.processes > gpus:
        found.append(
            f"retrain.local.processes: {cfg.processes} processes, one per GPU, "
            f"but this machine has {gpus}"
        )
    return found


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
    With ``cfg.processes`` above 1 the training runs in that many launched processes.
    """
    refused = problems(cfg)
    if refused:
        raise ValueError("; ".join(refused))
    if cfg.processes > 1 or Nodes.from_env() is not None:
        return launch(
            dataset_path,
            out_dir,
            cfg,
            base_model=base_model,
            checkpoint_dir=checkpoint_dir,
            on_log=on_log,
            on_checkpoint=on_checkpoint,
            should_stop=should_stop,
        )
    return train_here(
        dataset_path,
        out_dir,
        cfg,
        base_model=base_model,
        checkpoint_dir=checkpoint_dir,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
    )


def _load_quantized(base_model: str, cfg: LocalTraining) -> Any:
    """The base in 4 bits (NF4, double quantization, bf16 compute), ready for a LoRA."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model,
        quantization_config=quant,
        dtype=torch.bfloat16,
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},
    )
    return prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model, use_gradient_checkpointing=cfg.gradient_checkpointing
    )


def train_here(
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
    """The training itself, in this process: alone, or as one rank of a launched group
    (``on_log`` and ``on_checkpoint`` are then called on rank 0 only)."""
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # progress is reported through on_log
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    gpu = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main = int(os.environ.get("RANK", "0")) == 0
    if cfg.method == "dpo":
        train_rows = dpo_rows(_jsonl(dataset_path / "preference.jsonl"))
        eval_rows = dpo_rows(_jsonl(dataset_path / "preference_validation.jsonl"))
    else:
        train_rows = sft_rows(_jsonl(dataset_path / "train.jsonl"))
        eval_rows = sft_rows(_jsonl(dataset_path / "validation.jsonl"))
    if not train_rows:
        raise ValueError(f"{dataset_path}: no training rows for method {cfg.method}")
    steps = plan(len(train_rows), cfg)
    resume = latest_checkpoint(checkpoint_dir)

    history: list[dict[str, Any]] = []
    best = {"loss": math.inf, "stale": 0}
    stopped = {"asked": False}

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            row = {"step": state.global_step}
            for name in ("loss", "eval_loss", "learning_rate"):
                if isinstance(logs.get(name), int | float):
                    row[name] = float(logs[name])
            if "loss" in row or "eval_loss" in row:
                history.append(row)
                if main:
                    on_log(row)
            if "eval_loss" in row:
                if row["eval_loss"] < best["loss"] - 1e-6:
                    best.update(loss=row["eval_loss"], stale=0)
                else:
                    best["stale"] += 1
                    if best["stale"] >= cfg.patience:
                        control.should_training_stop = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stop = should_stop()
            if world > 1:  # every rank stops at the same step, or the others wait forever
                import torch.distributed as dist

                flag = torch.tensor([1.0 if stop else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                stopped["asked"] = True
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if main:
                on_checkpoint(state.global_step)

    common: dict[str, Any] = {
        "output_dir": str(checkpoint_dir),
        "learning_rate": cfg.learning_rate,
        "max_steps": steps["steps"],
        "warmup_steps": steps["warmup_steps"],
        "lr_scheduler_type": cfg.lr_scheduler,
        "per_device_train_batch_size": cfg.batch_size // world,
        "per_device_eval_batch_size": cfg.batch_size // world,
        "gradient_checkpointing": cfg.gradient_checkpointing,
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
    if world > 1:
        common["ddp_find_unused_parameters"] = False
    model: Any = base_model
    if cfg.quantization == "4bit":
        model = _load_quantized(base_model, cfg)
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
            model=model,
            args=DPOConfig(beta=cfg.dpo_beta, max_length=cfg.max_length, **common),
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            peft_config=peft_config,
            callbacks=[Progress()],
        )
    else:
        from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(max_length=cfg.max_length, **common),
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            peft_config=peft_config,
            callbacks=[Progress()],
        )
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    if eval_rows and resume is None:
        trainer.evaluate()  # step 0's validation loss, reported through Progress.on_log
        if world > 1:
            # evaluate() marks the model as prepared (for inference only): left so,
            # train() would not wrap it in DDP, and the ranks would train apart.
            trainer.model._is_accelerate_prepared = False
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if cfg.distributed != "ddp" and world > 1:  # sharded: gathered by the trainer
        trainer.save_model(str(out_dir))
    elif main:
        trainer.model.save_pretrained(str(out_dir), save_embedding_layers=False)
    trainer.accelerator.wait_for_everyone()
    evals = [row["eval_loss"] for row in history if "eval_loss" in row]
    return {
        "steps": int(result.global_step),
        "planned_steps": steps["steps"],
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else None,
        "train_loss": float(result.training_loss),
        "eval_loss_first": evals[0] if evals else None,
        "eval_loss_last": evals[-1] if evals else None,
        "device": "cuda" if gpu else "cpu",
        "processes": int(trainer.accelerator.num_processes),
        "cancelled": stopped["asked"],
        "stopped_early": best["stale"] >= cfg.patience,
    }


LAUNCH_DIR_ENV = "FLYWHEEL_LAUNCH_DIR"


@dataclass
class Nodes:
    """Several machines, as a multi-node operator describes them to each pod (torchrun's
    ``PET_*`` variables, which Kubeflow's PyTorchJob sets)."""

    count: int
    rank: int
    master_addr: str
    master_port: str

    @classmethod
    def from_env(cls) -> Nodes | None:
        count = int((os.environ.get("PET_NNODES") or "1").split(":")[-1])
        if count <= 1:
            return None
        return cls(
            count=count,
            rank=int(os.environ.get("PET_NODE_RANK", "0")),
            master_addr=os.environ.get("PET_MASTER_ADDR") or os.environ["MASTER_ADDR"],
            master_port=os.environ.get("PET_MASTER_PORT") or os.environ.get("MASTER_PORT", "23456"),
        )


def launch_command(
    cfg: LocalTraining, spec: Path, *, gpu: bool, nodes: Nodes | None = None
) -> list[str]:
    """``accelerate launch`` of :mod:`retrain.train_worker` in ``cfg.processes`` processes
    (per machine, with ``nodes``).

    One machine: the rendezvous port is picked free (``--main_process_port 0``). On CPU it
    is DDP over gloo: ``--multi_gpu`` is what starts several processes there
    (``--cpu --num_processes N`` quietly starts one).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if nodes is None:
        cmd += ["--num_processes", str(cfg.processes), "--num_machines", "1"]
        cmd += ["--main_process_port", "0"]
    else:
        cmd += ["--num_processes", str(cfg.processes * nodes.count)]
        cmd += ["--num_machines", str(nodes.count), "--machine_rank", str(nodes.rank)]
        cmd += ["--main_process_ip", nodes.master_addr, "--main_process_port", nodes.master_port]
    cmd += ["--dynamo_backend", "no"]
    if cfg.distributed == "fsdp":
        cmd += [
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_cpu_ram_efficient_loading",
            "true",
        ]
    elif cfg.distributed == "deepspeed":
        cmd += ["--use_deepspeed", "--zero_stage", "3", "--zero3_save_16bit_model", "true"]
    else:
        cmd += ["--multi_gpu"]
    bf16 = gpu and cfg.quantization == "none"
    cmd += ["--mixed_precision", "bf16" if bf16 and _bf16_supported() else "no"]
    return [*cmd, "-m", "retrain.train_worker", str(spec)]


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def launch(
    dataset_path: Path,
    out_dir: Path,
    cfg: LocalTraining,
    *,
    base_model: str,
    checkpoint_dir: Path,
    on_log: Callable[[dict[str, Any]], None] = lambda _row: None,
    on_checkpoint: Callable[[int], None] = lambda _step: None,
    should_stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
) -> dict[str, Any]:
    """Train in ``cfg.processes`` launched processes; the same summary as one process.

    Rank 0 appends its reports to ``events.jsonl`` in a run directory; they are relayed
    here as they come. ``should_stop`` creates a ``stop`` file there, which every rank
    sees at its next step (they agree on the step). The process group is stopped on any
    way out (error, Ctrl-C, SIGTERM); if this process is killed outright, the ranks see
    that it is gone at their next step and stop.
    """
    import shutil

    import torch

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    nodes = Nodes.from_env()
    if nodes is None:
        run_dir = Path(tempfile.mkdtemp(prefix="launch-", dir=checkpoint_dir.parent))
    else:  # the other machines wait for the spec there (retrain join-training)
        if not os.environ.get(LAUNCH_DIR_ENV):
            raise ValueError(f"training on {nodes.count} machines needs {LAUNCH_DIR_ENV}")
        run_dir = Path(os.environ[LAUNCH_DIR_ENV])
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
    world = cfg.processes * (nodes.count if nodes else 1)
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size {cfg.batch_size} does not split evenly between {world} processes"
        )
    spec = run_dir / "spec.json"
    doc = {
        "dataset": str(dataset_path),
        "out": str(out_dir),
        "cfg": cfg.model_dump(mode="json"),
        "base_model": base_model,
        "checkpoint_dir": str(checkpoint_dir),
        "run_dir": str(run_dir),
        "parent_pid": os.getpid(),
        "parent_host": socket.gethostname(),
    }
    (run_dir / "spec.tmp").write_text(json.dumps(doc))
    (run_dir / "spec.tmp").rename(spec)  # whole, for a machine that waits for it
    gpu = torch.cuda.is_available()
    env = dict(os.environ)
    if not gpu:  # the ranks share the cores instead of each taking them all
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.processes)))
    events, stop_file, log_path = run_dir / "events.jsonl", run_dir / "stop", run_dir / "log"
    summary: dict[str, Any] | None = None
    read = 0

    def relay() -> None:
        nonlocal read, summary
        if not events.exists():
            return
        with open(events, "rb") as f:
            f.seek(read)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
        read += len(complete)
        for line in complete.splitlines():
            event = json.loads(line)
            if event["kind"] == "log":
                on_log(event["row"])
            elif event["kind"] == "checkpoint":
                on_checkpoint(int(event["step"]))
            elif event["kind"] == "summary":
                summary = event["summary"]

    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                launch_command(cfg, spec, gpu=gpu, nodes=nodes),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own group: stopped with every rank below
            )
        try:
            while proc.poll() is None:
                relay()
                if not stop_file.exists() and should_stop():
                    stop_file.touch()
                time.sleep(poll_s)
            relay()
        finally:
            _stop_group(proc)
        if proc.returncode != 0 or summary is None:
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(
                f"training in {cfg.processes} processes failed (exit code {proc.returncode}):\n"
                + "\n".join(tail)
            )
        return summary
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def join(launch_dir: Path, *, poll_s: float = 1.0) -> int:
    """One more machine of a multi-node training: wait for the spec the first machine
    writes to ``launch_dir`` (a shared volume), then launch this machine's processes."""
    import torch

    nodes = Nodes.from_env()
    if nodes is None:
        raise UsageError("joining a training needs PET_NNODES above 1 (a multi-node operator)")
    spec = launch_dir / "spec.json"
    while not spec.exists():
        time.sleep(poll_s)
    try:
        cfg = LocalTraining.model_validate(json.loads(spec.read_text())["cfg"])
    except ValueError as exc:  # pydantic's ValidationError and JSON's errors are ValueErrors
        raise InvalidInput(f"{spec}: {exc}") from exc
    proc = subprocess.Popen(
        launch_command(cfg, spec, gpu=torch.cuda.is_available(), nodes=nodes),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return proc.wait()
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the launcher's group, SIGKILL what is left after ``timeout``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher may be gone but not a rank
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
