"""A tiny random-weight embedding model (mean-pooled Llama), built offline and deterministically.

The counterpart of :mod:`flywheel_stack.tiny_model` for retrieval: the same English, Thai
and Vietnamese tokenizer, a two-layer Llama body (``LlamaModel``, no language-model head)
and a sentence-transformers layout around it (``modules.json``: the transformer, mean
pooling, L2 normalisation), so that one directory is

* served by vLLM as an embedding model (``--runner pooling``: vLLM reads the pooling and
  the normalisation from the same files), and
* loaded and fine-tuned by sentence-transformers (``retrain embed``).

Its retrieval is near random until it is fine-tuned, which is what the tests need: a
fine-tune on a few hundred triples must beat it clearly. Same seed → byte-identical
files; a finished build is marked by ``flywheel-tiny-embed.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flywheel_stack.tiny_model import (
    PAD,
    _portable_tokenizer_config,
    _quiet_progress,
    _train_tokenizer,
    _write_json,
    build_once,
    read_marker,
)

MARKER = "flywheel-tiny-embed.json"
RECIPE_VERSION = 1
DIMENSIONS = 128
MAX_SEQ_LENGTH = 256


def build_tiny_embedder(out_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Build the tiny embedding model into ``out_dir`` (skipped if built with ``seed``)."""
    return build_once(
        out_dir, MARKER, _marker(seed), lambda tmp: _build_into(tmp, seed=seed), force
    )


def is_built(model_dir: Path, *, seed: int) -> bool:
    """True when ``model_dir`` holds a complete build of this recipe with ``seed``."""
    return bool(read_marker(model_dir, MARKER) == _marker(seed))


def _marker(seed: int) -> dict[str, Any]:
    return {"recipe": "flywheel-tiny-embed", "version": RECIPE_VERSION, "seed": seed}


def write_sentence_transformers_files(out: Path) -> None:
    """The sentence-transformers layout: transformer → mean pooling → L2 normalisation."""
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": DIMENSIONS,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


def _build_into(out: Path, *, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_train_tokenizer(), pad_token=PAD, model_max_length=MAX_SEQ_LENGTH
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=DIMENSIONS,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # head_dim 64: CPU attention rejects smaller heads
        max_position_embeddings=MAX_SEQ_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["LlamaModel"]
    torch.manual_seed(seed)
    model = LlamaModel(config)
    with _quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tok_config = _portable_tokenizer_config(out)
    tok_config.pop("chat_template", None)
    _write_json(out / "tokenizer_config.json", tok_config)
    write_sentence_transformers_files(out)
    _write_json(out / MARKER, _marker(seed))
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    out.chmod(0o755)  # mkdtemp made it 0700
