"""``python -m bench train``: LoRA training throughput (tokens/s) and MFU for a model shape.

A random-weight Llama of the given shape (no download), LoRA r 16 on every linear layer
(PEFT, the adapter ``retrain`` trains), AdamW, random tokens, batch × seq per step. Each
variant is timed over ``--steps`` steps after ``--warmup`` steps (synchronised on GPU) in
the same process, one after the other; the model is rebuilt for each.

Variants (``--variants``, comma-separated; each is ``naive`` plus the named changes):

* ``naive`` — plain transformers + PEFT: SDPA attention, the full-vocabulary logits and
  cross-entropy, ``torch.optim.AdamW`` (foreach), bf16 weights where the GPU supports
  bf16 (checked with ``torch.cuda.is_bf16_supported``), else float32.
* ``fused`` — AdamW with ``fused=True``.
* ``compile`` — ``torch.compile`` of the model.
* ``liger`` — Liger kernels (RMSNorm, SwiGLU, RoPE, and the fused linear cross-entropy
  that never materialises the batch × seq × vocab logits); needs ``liger-kernel``
  (GPU, Triton), skipped when it is not installed.
* ``ckpt`` — gradient checkpointing (less memory, ~1/3 more compute: it should lose
  unless memory is short, and is measured to show it).
* ``packed`` / ``padded`` — with documents of random lengths (``--docs random``): the
  batch padded per document, or documents packed end to end into full rows; tokens/s then
  counts real (non-pad) tokens only.

MFU = 4 · N · tokens/s / peak (forward 2N, backward 2N for the activations' gradients:
the base weights are frozen, the LoRA's own are negligible; attention not counted), with
``--peak-tflops`` (default: 989 on an H100/H200, unknown elsewhere).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KNOWN_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 TFLOP/s


@dataclass
class Shape:
    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    kv_heads: int = 2
    vocab: int = 32000
    intermediate: int = 2816


@dataclass
class Result:
    variant: str
    tokens_per_s: float
    step_s: float
    mfu: float | None
    peak_memory_gib: float | None
    loss: float
    note: str = ""


def build(shape: Shape, dtype: Any, device: str, changes: set[str]) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if "liger" in changes:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama()
    config = LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        intermediate_size=shape.intermediate,
        max_position_embeddings=8192,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if "ckpt" in changes:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def batches(shape: Shape, batch: int, seq: int, docs: str, packed: bool, device: str) -> Any:
    """Endless (input_ids, labels, real tokens) batches of random tokens."""
    import torch

    gen = torch.Generator().manual_seed(0)
    while True:
        if docs == "full":
            ids = torch.randint(0, shape.vocab, (batch, seq), generator=gen)
            yield ids.to(device), ids.to(device), batch * seq
            continue
        lengths = torch.randint(seq // 8, seq + 1, (batch * 4,), generator=gen).tolist()
        if packed:  # documents end to end, rows cut at seq: no padding at all
            ids = torch.randint(0, shape.vocab, (batch, seq), generator=gen)
            yield ids.to(device), ids.to(device), batch * seq
            continue
        rows = lengths[:batch]  # one document per row, padded to the longest
        width = max(rows)
        ids = torch.randint(0, shape.vocab, (batch, width), generator=gen)
        labels = ids.clone()
        for i, n in enumerate(rows):
            labels[i, n:] = -100
        yield ids.to(device), labels.to(device), sum(rows)


def measure(
    variant: str,
    shape: Shape,
    *,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    docs: str,
    peak_tflops: float | None,
) -> Result:
    import torch

    changes = set(variant.split("+")) - {"naive"}
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    bf16 = gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = build(shape, dtype, device, changes)
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused="fused" in changes or None)
    step_fn = torch.compile(model) if "compile" in changes else model
    data = batches(shape, batch, seq, docs, "packed" in changes, device)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    tokens, loss_value, started = 0, math.nan, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if gpu:
                torch.cuda.synchronize()
            started, tokens = time.perf_counter(), 0
        ids, labels, real = next(data)
        loss = step_fn(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += real
        if i == warmup + steps - 1:
            loss_value = float(loss.detach())
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    per_s = tokens / seconds
    mfu = 4 * base_params * per_s / (peak_tflops * 1e12) if peak_tflops else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
    del model, optimizer, step_fn
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return Result(variant, per_s, seconds / steps, mfu, memory, loss_value)


def device_summary() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return f"CPU ({torch.get_num_threads()} threads), float32", None
    name = torch.cuda.get_device_name()
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "float32 (no bf16 support)"
    peak = next((v for k, v in KNOWN_PEAKS.items() if k in name), None)
    return f"{name}, {dtype}", peak


def render(meta: dict[str, Any], results: list[Result]) -> str:
    lines = [
        f"LoRA r16 all-linear on a random Llama: {meta['params_m']:.0f}M parameters "
        f"({meta['shape']}), batch {meta['batch']} × seq {meta['seq']}, docs {meta['docs']}; "
        f"{meta['device']}",
        "",
        "| variant | tokens/s | step | MFU | peak memory | loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        mem = f"{r.peak_memory_gib:.1f} GiB" if r.peak_memory_gib is not None else "n/a"
        lines.append(
            f"| {r.variant}{' (' + r.note + ')' if r.note else ''} | {r.tokens_per_s:,.0f} | "
            f"{r.step_s:.3f} s | {mfu} | {mem} | {r.loss:.3f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.split("\n")[0])
    d = Shape()
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--kv-heads", type=int, default=d.kv_heads)
    p.add_argument("--vocab", type=int, default=d.vocab)
    p.add_argument("--intermediate", type=int, default=d.intermediate)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, caches)")
    p.add_argument(
        "--docs",
        choices=["full", "random"],
        default="full",
        help="full: every row is one full-length document; random: lengths seq/8..seq",
    )
    p.add_argument(
        "--variants",
        default="naive,fused,compile,liger,fused+compile+liger,ckpt",
        help="comma-separated; + joins changes (naive, fused, compile, liger, ckpt, packed)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak")
    p.add_argument("--small", action="store_true", help="a CPU-sized shape: 128 hidden, 2 layers")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    shape = Shape(
        args.hidden, args.layers, args.heads, args.kv_heads, args.vocab, args.intermediate
    )
    if args.small:
        shape = Shape(hidden=128, layers=2, heads=2, kv_heads=1, vocab=4096, intermediate=344)
    device, peak = device_summary()
    peak = args.peak_tflops or peak
    n = shape.vocab * shape.hidden * 2 + shape.layers * (
        2 * shape.hidden * shape.hidden
        + 2 * shape.hidden * shape.hidden * shape.kv_heads // shape.heads
        + 3 * shape.hidden * shape.intermediate
    )
    meta = {
        "shape": ", ".join(f"{k} {v}" for k, v in asdict(shape).items()),
        "params_m": n / 1e6,
        "batch": args.batch,
        "seq": args.seq,
        "docs": args.docs,
        "device": device + (f", peak {peak:g} TFLOP/s" if peak else ", peak unknown: no MFU"),
    }
    results = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        changes = set(variant.split("+"))
        if "liger" in changes and importlib.util.find_spec("liger_kernel") is None:
            print(f"bench train: {variant}: skipped (pip install liger-kernel)", file=sys.stderr)
            continue
        if "liger" in changes and device.startswith("CPU"):
            print(f"bench train: {variant}: skipped (Liger kernels need a GPU)", file=sys.stderr)
            continue
        if "compile" in changes and device.startswith("CPU"):
            why = "skipped on CPU (compiling takes minutes)"
            print(f"bench train: {variant}: {why}", file=sys.stderr)
            continue
        print(f"bench train: {variant} ...", file=sys.stderr, flush=True)
        results.append(
            measure(
                variant,
                shape,
                batch=args.batch,
                seq=args.seq,
                steps=args.steps,
                warmup=args.warmup,
                docs=args.docs,
                peak_tflops=peak,
            )
        )
    print(render(meta, results))
    if args.out:
        doc = {"meta": meta, "results": [asdict(r) for r in results]}
        args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
