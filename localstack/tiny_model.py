"""A tiny random-weight Llama with a ChatML tokenizer, built offline and deterministically.

The model is noise until a LoRA is trained on it, but it is small (about 1.4 MB), builds
in seconds without network access and is served by vLLM on CPU: enough to exercise the
whole serve → rate → retrain → serve loop for real in tests.

Same seed → byte-identical files. The build happens in a temporary directory beside
``out_dir`` and is renamed into place; a finished build is marked by ``flywheel-tiny.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = "flywheel-tiny.json"
RECIPE_VERSION = 1

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "Hello! How can I help you today?",
    "My order has not arrived yet. Where is my package?",
    "I am sorry for the delay. Could you share your order number, please?",
    "You can reset your password from the account settings page.",
    "We have issued a full refund; it should appear within five business days.",
    "Thank you for contacting customer support. Is there anything else I can do?",
    "The invoice for your subscription was sent to your email address.",
    "To cancel your plan, open Billing and choose Cancel subscription.",
    "Please restart the app and try again. If the problem persists, contact us.",
    "Our support team is available Monday to Friday, 9am to 5pm.",
    "The quick brown fox jumps over the lazy dog.",
    'user assistant system tool: {"name": "lookup_order", "arguments": {}}',
    "0123456789 .,;:!?'\"()[]{}<>/\\-_+=*&%$#@ \n\t",
]


def build_tiny_model(out_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Build the tiny model into ``out_dir`` (skipped if already built with ``seed``)."""
    out_dir = Path(out_dir).resolve()
    if not force and is_built(out_dir, seed=seed):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _build_into(tmp, seed=seed)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def is_built(model_dir: Path, *, seed: int) -> bool:
    """True when ``model_dir`` holds a complete build of this recipe with ``seed``."""
    try:
        marker = json.loads((Path(model_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker == _marker(seed)


def _marker(seed: int) -> dict[str, Any]:
    return {"recipe": "flywheel-tiny-llama", "version": RECIPE_VERSION, "seed": seed}


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing an existing ``target`` as atomically as we can."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _build_into(out: Path, *, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_train_tokenizer(),
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=1024,
        chat_template=CHAT_TEMPLATE,
    )
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # head_dim 64: CPU attention rejects smaller heads
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=eos_id, pad_token_id=pad_id
    )
    with _quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_json(out / "tokenizer_config.json", _portable_tokenizer_config(out))
    _write_json(out / MARKER, _marker(seed))
    for path in out.iterdir():
        path.chmod(0o644)
    out.chmod(0o755)  # mkdtemp made it 0700


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _portable_tokenizer_config(out: Path) -> dict[str, Any]:
    """Name the class both transformers 4 and 5 know, and inline the chat template."""
    config: dict[str, Any] = json.loads((out / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    config["clean_up_tokenization_spaces"] = False
    config.pop("backend", None)
    return config


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
