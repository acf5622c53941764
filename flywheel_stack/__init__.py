"""The local stack, shared by both command lines and the tests: a real vLLM OpenAI server
as a child process (:mod:`flywheel_stack.vllm`) and the tiny offline model it serves
(:mod:`flywheel_stack.tiny_model`).

Neither the online path (``gateway/``) nor the offline one (``retrain/``) depends on the
other through this package; nothing here imports vLLM, torch or peft at import time.
"""

from __future__ import annotations

from .vllm import (
    VLLMServer,
    free_port,
    is_cpu_build,
    make_test_adapter,
    stop_with_parent,
    tail,
    vllm_command,
)

__all__ = [
    "VLLMServer",
    "free_port",
    "is_cpu_build",
    "make_test_adapter",
    "stop_with_parent",
    "tail",
    "vllm_command",
]
