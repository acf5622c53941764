"""The ``retrain`` section of the config file: the schema the retrain package owns.

One file configures both paths. The gateway validates its own sections and reads one
key of this one (``retrain.dataset_dir``, for the console); :class:`RetrainSettings` is
the whole file as a ``retrain`` command sees it, this section included, so a mistake in
it is reported by key path like any other (``retrain check-config``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.core.config import Price, RetrainSection, Settings, load_or_exit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingPrice(_Strict):
    provider: Literal["local", "openai"] = Field(description="which provider trains")
    model: str = Field(description="the base model trained")
    per_1m_tokens: float = Field(ge=0, description="training price per 1M trained tokens")


class Split(_Strict):
    validation: float = Field(0.1, ge=0, lt=1, description="share of groups for validation")
    test: float = Field(0.1, ge=0, lt=1, description="share of groups held out for evaluation")
    seed: int = Field(0, description="seeds the split of new groups")


class LocalTraining(_Strict):
    """LoRA with PEFT through TRL (``retrain run --provider local``)."""

    base_model: str | None = Field(
        None,
        description="local dir or hub name of the model vLLM serves; unset: asked from the "
        "upstream (vLLM lists the path it serves as the model's root in /v1/models)",
    )
    upstream: str = Field("local", description="the gateway upstream (vLLM) that serves it")
    price: Price | None = Field(
        None,
        description="what a trained candidate costs to serve (for example gpu_hour and "
        "tokens_per_s), registered with it; unset: it inherits its base model's",
    )
    adapter_dir: Path = Field(
        Path("./data/adapters"), description="trained adapters (and their checkpoints)"
    )
    method: Literal["sft", "dpo"] = Field(
        "sft", description="sft: the corrections as answers; dpo: preference pairs"
    )
    r: Literal[8, 16, 32, 64] = Field(
        16, description="LoRA rank; the vLLM upstream's max_lora_rank must cover it"
    )
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling (the update is alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA layers")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="layers that get an adapter (vLLM loads all-linear ones)"
    )
    epochs: float = Field(3.0, gt=0, description="passes over the training rows")
    max_steps: int | None = Field(None, ge=1, description="overrides epochs")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="the learning rate after warm-up"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the steps warming up")
    batch_size: int = Field(4, ge=1, description="rows per optimizer step")
    max_length: int = Field(1024, ge=16, description="longer rows are truncated, in tokens")
    seed: int = Field(0, description="seeds the adapter's initial weights and the data order")
    evaluations: int = Field(
        10, ge=1, description="validation evaluations (and checkpoints) over a training run"
    )
    patience: int = Field(3, ge=1, description="evaluations without a better eval loss")
    dpo_beta: float = Field(0.1, gt=0, description="dpo: how far from the base it may move")
    processes: int = Field(
        1,
        ge=1,
        description="training processes (one per GPU; on CPU, gloo): above 1, launched with "
        "Accelerate; batch_size stays the rows per optimizer step, split between them",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="with processes above 1: ddp copies the model to every GPU; fsdp or "
        "deepspeed (ZeRO-3) shard it, for models that do not fit one GPU (GPUs only)",
    )
    quantization: Literal["none", "4bit"] = Field(
        "none",
        description="4bit: QLoRA (bitsandbytes NF4, double quantization, bf16 compute; "
        "needs CUDA and bitsandbytes)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower"
    )
    keep_failed_adapters: bool = Field(
        False,
        description="keep the adapter directories of rejected, failed and cancelled jobs "
        "(false: removed once the job ends so; registered ones are always kept)",
    )

    @model_validator(mode="after")
    def _batch_splits(self) -> LocalTraining:
        if self.batch_size % self.processes:
            raise ValueError(
                f"batch_size {self.batch_size} does not split evenly between "
                f"{self.processes} processes (rows per optimizer step, summed over them)"
            )
        return self


class OpenAITraining(_Strict):
    """OpenAI's fine-tuning API (closing: no new jobs from 2027-01-06)."""

    base_model: str = Field("gpt-4o-mini-2024-07-18", description="the model fine-tuned")
    upstream: str = Field("openai", description="the gateway upstream that serves ft: models")
    base_url: str = Field("https://api.openai.com/v1", description="OpenAI's API")
    api_key: SecretStr = Field(SecretStr(""), description="e.g. ${OPENAI_API_KEY}")
    method: Literal["supervised", "dpo"] = Field("supervised", description="the job's method")
    n_epochs: int | Literal["auto"] = Field("auto", description="1–50, or auto")
    batch_size: int | Literal["auto"] = Field("auto", description="1–256, or auto")
    learning_rate_multiplier: float | Literal["auto"] = Field(
        "auto", description="above 0, or auto"
    )
    beta: Annotated[float, Field(gt=0, le=2)] | Literal["auto"] = Field(
        "auto", description="dpo: how far from the base it may move, in (0, 2], or auto"
    )
    poll_s: float = Field(10.0, gt=0, description="how often the job's status is read")


class Eval(_Strict):
    """The evaluation gate of ``retrain run`` and ``retrain eval`` (``retrain/evaluate.py``).

    Three sources of evidence, all required to pass: the held-out test split (the
    candidate's mean score gain over the control, as a paired bootstrap confidence
    interval whose lower bound must reach ``margin``), an optional golden set (no worse
    than the control beyond ``golden_tolerance``) and an optional LLM judge (pairwise,
    both orders, a win rate with a Wilson interval).
    """

    margin: float = Field(
        0.02,
        description="the lower bound of the confidence interval of the candidate's mean "
        "score gain over the control on the test split must reach this",
    )
    metric: Literal["chrf", "rouge_l", "exact"] = Field(
        "chrf",
        description="the per-example score the rules compare: chrF (character n-grams: any "
        "script, no word boundaries needed), ROUGE-L F1 over segmented words, or exact match",
    )
    # A percentile bootstrap needs a few dozen examples to approximate the sampling
    # distribution of a mean (below that its intervals cover well under their nominal
    # level), and with per-example ROUGE-L gains spread ~0.3 thirty examples already
    # need a gain of ~0.1 to clear the interval: 30 is the least that gives a decision
    # worth trusting. A 10% test split means ~300 supervised examples.
    # And never below 2: one example's bootstrap interval has zero width (every resample
    # is that example), so it would "pass" on a single answer.
    min_examples: int = Field(
        30,
        ge=2,
        description="fewer test examples: no decision, 'collect more' (exit 7); at least 2, "
        "the fewest a confidence interval has a width with",
    )
    golden: Path | None = Field(
        None, description="JSONL golden set (OpenAI chat format, the last message the answer)"
    )
    golden_tolerance: float = Field(
        0.02, ge=0, description="the candidate's mean golden score may trail the control's by this"
    )
    json_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="where answers are JSON: the candidate's valid-JSON rate may trail by this",
    )
    # A Thai fine-tune that starts answering in English is a common regression, and
    # ROUGE-L against a reference may not see all of it. Ten points: a few answers out of
    # thirty, more than the language guess gets wrong on whole sentences.
    language_tolerance: float = Field(
        0.1,
        ge=0,
        le=1,
        description="the candidate's share of answers in the language of the question may "
        "trail the control's by this (questions or answers whose language cannot be told "
        "do not count)",
    )
    judge: str | None = Field(
        None, description="a model the gateway serves that compares the two answers (optional)"
    )
    judge_rule: Literal["not-worse", "better"] = Field(
        "not-worse",
        description="not-worse: the win rate's upper bound reaches 0.5; better: its lower "
        "bound exceeds 0.5",
    )
    judge_max_tokens: int = Field(16, ge=1, description="the judge answers one word: A, B or TIE")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of every interval (two-sided)")
    bootstrap_samples: int = Field(2000, ge=100, description="paired bootstrap resamples")
    seed: int = Field(0, description="of the bootstrap: the same answers give the same interval")
    max_tokens: int = Field(512, ge=1, description="an answer's longest allowed length, in tokens")
    answer_factor: float = Field(
        1.5, ge=1, description="answers may be this many times the expected answer's length"
    )
    answer_slack: int = Field(16, ge=0, description="... plus this many tokens")
    concurrency: int = Field(4, ge=1, le=64, description="requests to the gateway at a time")


class Distill(_Strict):
    """``retrain.distill``: which of a teacher's answers a distillation dataset keeps
    (``retrain build --distill --teacher MODEL``)."""

    unrated: bool = Field(
        True,
        description="keep the teacher's unrated answers (well-rated ones are always kept, "
        "rated-down ones never, corrected ones as the correction)",
    )
    margin: float = Field(
        -0.05,
        description="retrain run --distill: the lower bound of the confidence interval of "
        "the student's score gain over the teacher (both against the teacher's held-out "
        "answers) must reach this; negative: how much worse than the teacher may be "
        "accepted (a not-worse test)",
    )
    judge: str | None = Field(
        None,
        description="a model the gateway serves that screens the teacher's unrated answers "
        "before they become examples: it reads the conversation and the answer and replies "
        "ACCEPT or REJECT; a rejected answer is left out (counted 'judge_rejected'), any "
        "other reply keeps it (counted in the manifest). Needs gateway_url and a key",
    )


class RetrainConfig(RetrainSection):
    """The ``retrain`` section: the dataset builder (``retrain build``, which ratings become
    which examples), training, the evaluation gate and the canary. ``dataset_dir`` comes
    from the part the gateway reads too (:class:`gateway.core.config.RetrainSection`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    good_threshold: float = Field(
        0.75, ge=0, le=1, description="a rating at or above this keeps the answer as served"
    )
    keep_good_share: float = Field(
        0.5, ge=0, le=1, description="share of well-rated answers kept as examples"
    )
    min_examples: int = Field(50, ge=1, description="fewer supervised examples: no dataset")
    max_tokens: int = Field(4096, ge=16, description="longer examples are dropped")
    tokenizer: str | None = Field(
        None,
        description="local model dir or HF name whose tokenizer counts the examples; none: "
        "the trained model's own (local: the base model's tokenizer, else its vLLM server's "
        "/tokenize; openai: the base model's encoding)",
    )
    tiktoken_encoding: Literal["o200k_base", "cl100k_base"] = Field(
        "o200k_base",
        description="openai: the encoding of a base model whose encoding is not known here",
    )
    near_duplicate: float = Field(
        0.85, gt=0, le=1, description="MinHash Jaccard similarity above which one is dropped"
    )
    split_together: float = Field(
        0.7,
        gt=0,
        le=1,
        description="MinHash Jaccard similarity at or above which examples of different users "
        "go to one split",
    )
    redact: bool = Field(False, description="replace e-mail addresses and phone numbers")
    max_tag_share: float = Field(
        0.5, gt=0, le=1, description="at most this share of the examples per tag"
    )
    split: Split = Split()
    epochs: int = Field(3, ge=1, description="for the cost estimate")
    prices: list[TrainingPrice] = Field(
        default_factory=list, description="training prices, for the dataset's cost estimates"
    )
    cost_cap: float | None = Field(None, ge=0, description="estimated cost above this: stop")
    teacher: str | None = Field(
        None, description="model or experiment that answers failures without a correction"
    )
    gateway_url: str = Field("http://127.0.0.1:8000", description="the gateway (no /v1)")
    gateway_key: SecretStr = Field(
        SecretStr(""), description="a client key for the evaluation's chat requests"
    )
    admin_key: SecretStr = Field(SecretStr(""), description="registers candidates")
    provider: Literal["local", "openai"] = Field(
        "local", description="who trains: local LoRA, or OpenAI's fine-tuning API"
    )
    local: LocalTraining = LocalTraining()
    openai: OpenAITraining = OpenAITraining()
    eval: Eval = Field(Eval(), description="the evaluation gate")
    canary_share: float = Field(0.05, gt=0, lt=1, description="a new candidate's first share")
    distill: Distill = Field(Distill(), description="distillation datasets")

    def teacher_gate(self) -> Eval:
        """The gate of a model meant to replace a teacher (a distilled student, an
        in-context candidate): ``eval`` with ``distill.margin``, a not-worse test."""
        return self.eval.model_copy(update={"margin": self.distill.margin})

    @model_validator(mode="before")
    @classmethod
    def _moved_eval_keys(cls, data: Any) -> Any:
        """``eval_margin`` and ``eval_max_tokens`` still work: they are ``eval.margin``
        and ``eval.max_tokens`` now (giving both spellings is a mistake)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in (("eval_margin", "margin"), ("eval_max_tokens", "max_tokens")):
            if old in data:
                section = data.get("eval")
                section = dict(section) if isinstance(section, dict) else {}
                if new in section:
                    raise ValueError(f"retrain.{old} is retrain.eval.{new} now: give only that one")
                section[new] = data.pop(old)
                data["eval"] = section
        return data


class RetrainSettings(Settings):
    """The whole config file, with the ``retrain`` section validated by its schema."""

    retrain: RetrainConfig = RetrainConfig()


def load(path: str | None) -> RetrainSettings:
    """The config file for a ``retrain`` command; exit 2 with one line per mistake.

    Where ``gateway up`` runs in the same data directory (``data_dir/stack.json``), a
    config that names no gateway (``retrain.gateway_url`` unset) gets that gateway's URL,
    and the built-in config (no file at all) its vLLM server too, as ``gateway up``
    itself points the built-in upstream at it: the stack is found on any ports."""
    explicit = path or os.environ.get("FLYWHEEL_CONFIG")
    return on_local_stack(load_or_exit(path, RetrainSettings, "retrain"), built_in=not explicit)


def on_local_stack(settings: RetrainSettings, *, built_in: bool) -> RetrainSettings:
    """``settings`` pointed at the stack ``gateway up`` announced in its data directory
    (unchanged where none runs, or where the config names its own gateway)."""
    from flywheel_stack.discovery import running

    stack = running(settings.data_dir)
    if stack is None or "gateway_url" in settings.retrain.model_fields_set:
        return settings
    retrain = settings.retrain.model_copy(update={"gateway_url": stack["gateway_url"]})
    update: dict[str, Any] = {"retrain": retrain}
    local = settings.upstreams.get(settings.retrain.local.upstream)
    if built_in and local is not None and local.kind == "vllm":
        upstreams = dict(settings.upstreams)
        upstreams[settings.retrain.local.upstream] = local.model_copy(
            update={"base_url": stack["vllm_base_url"]}
        )
        update["upstreams"] = upstreams
    return settings.model_copy(update=update)
