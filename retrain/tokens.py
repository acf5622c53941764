"""Token counts from the tokenizer of the model in question.

A token count decides what a user notices: whether an example is dropped as too long,
what a training run is estimated to cost, and how many tokens (``max_tokens``) the
evaluation gate lets an answer have. A count from the wrong tokenizer is wrong by a
factor of two to eight in Thai (a 177-character Thai answer is about 60 tokens in
OpenAI's o200k encoding, about 150 in cl100k and over 500 in a byte-level vocabulary
without Thai merges), so each count comes from the model's own tokenizer:

* a **local model** (a directory, or a name in the Hugging Face cache): its tokenizer
  and its chat template (``transformers``), :func:`local`;
* a model **served by vLLM**: the server's ``POST /tokenize``, :func:`served`;
* an **OpenAI model**: its encoding, bundled with ``bpe-openai`` (no download):
  ``o200k_base`` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series, ``cl100k_base``
  for gpt-4 and gpt-3.5 (:func:`openai_encoding`), :func:`openai`;
* only where none of these can be had, an **estimate** (characters / 3, at least one
  per word), :func:`estimate`.

Every counter has a ``name`` — what counted, and for an estimate why there was nothing
better — and ``exact`` (False only for the estimate). Both are written where a count is
used: the dataset manifest (``tokenizer``, ``tokens_exact``) and the gate's result.

``text`` counts a string's own tokens (no special tokens: an answer's length);
``messages`` counts a conversation as the model reads it (the chat template, or for
OpenAI models its documented per-message overhead). :class:`TokenCounter` counts a
dataset example with a counter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gateway.core.documents import ModelDetail
from gateway.core.records import text_of

from .errors import UpstreamUnavailable
from .text_metrics import estimate_tokens

if TYPE_CHECKING:
    from .config import RetrainSettings
    from .curate import Example

Messages = list[dict[str, Any]]

# Model name prefixes and their encodings, the more specific first.
OPENAI_ENCODINGS = (
    (("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4"), "o200k_base"),
    (("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada"), "cl100k_base"),
)


class Counter:
    """Counts tokens for one model (or several: :class:`Longest`)."""

    name: str
    exact: bool = True

    def text(self, text: str) -> int:
        raise NotImplementedError

    def messages(self, messages: Messages) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Estimate(Counter):
    """Characters / 3, at least one token per word: a last resort, never exact."""

    exact = False

    def __init__(self, why: str = "") -> None:
        self.name = "estimate: characters / 3" + (f" ({why})" if why else "")

    def text(self, text: str) -> int:
        return estimate_tokens(text)

    def messages(self, messages: Messages) -> int:
        return 3 + sum(4 + self.text(message_text(m)) for m in messages)


class OpenAIEncoding(Counter):
    """An OpenAI encoding (``o200k_base``, ``cl100k_base``), bundled with bpe-openai."""

    def __init__(self, encoding: str) -> None:
        from bpe_openai import get_encoding

        self._enc = get_encoding(encoding)
        self._lock = threading.Lock()  # the gate counts from several threads
        self.name = f"openai:{encoding}"

    def text(self, text: str) -> int:
        with self._lock:
            return len(self._enc.encode_ordinary(text))

    def messages(self, messages: Messages) -> int:
        # OpenAI's recipe: 3 tokens per message, 3 to prime the reply.
        return 3 + sum(3 + self.text(message_text(m)) for m in messages)


class HuggingFace(Counter):
    """A local model's tokenizer and chat template (``transformers``)."""

    def __init__(self, model: str, *, local_only: bool = False) -> None:
        from transformers import AutoTokenizer

        self._tok: Any = AutoTokenizer.from_pretrained(model, local_files_only=local_only)
        self._lock = threading.Lock()  # a fast tokenizer is not to be shared by threads
        self.name = model

    def text(self, text: str) -> int:
        with self._lock:
            return len(self._tok(text, add_special_tokens=False)["input_ids"])

    def messages(self, messages: Messages) -> int:
        with self._lock:
            ids: Any = self._tok.apply_chat_template(plain(messages), tokenize=True)
        if hasattr(ids, "keys"):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return len(ids)


class VLLMTokenize(Counter):
    """A model vLLM serves, counted by the server (``POST /tokenize``)."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 30) -> None:
        root = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=root, headers=headers, timeout=timeout)
        self.model = model
        self._texts: dict[str, int] = {}
        self.name = f"vllm:{model} ({root}/tokenize)"
        try:
            self.text("probe")  # fails here, not at the first real count, when it cannot
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        self._http.close()

    def __del__(self) -> None:  # a counter is used until its last count: then let go
        self._http.close()

    def _count(self, body: dict[str, Any]) -> int:
        resp = self._http.post("/tokenize", json={"model": self.model, **body})
        if resp.is_error:
            raise UpstreamUnavailable(f"POST {resp.request.url}: HTTP {resp.status_code}")
        return int(resp.json()["count"])

    def text(self, text: str) -> int:
        if text not in self._texts:  # (answers repeat: one request each)
            self._texts[text] = self._count({"prompt": text, "add_special_tokens": False})
        return self._texts[text]

    def messages(self, messages: Messages) -> int:
        return self._count({"messages": plain(messages), "add_generation_prompt": False})


class Longest(Counter):
    """Several models' counts, the largest: a budget two models must both fit in."""

    def __init__(self, counters: list[Counter]) -> None:
        unique = {c.name: c for c in counters}
        self.counters = list(unique.values())
        self.name = " | ".join(unique)
        self.exact = all(c.exact for c in self.counters)

    def text(self, text: str) -> int:
        return max(c.text(text) for c in self.counters)

    def messages(self, messages: Messages) -> int:
        return max(c.messages(messages) for c in self.counters)


def longest(counters: list[Counter]) -> Counter:
    """One counter for several models (itself, for one)."""
    unique = {c.name: c for c in counters}
    return next(iter(unique.values())) if len(unique) == 1 else Longest(counters)


def estimate(why: str = "") -> Counter:
    return Estimate(why)


def openai_encoding(model: str) -> str | None:
    """The encoding of an OpenAI model (a fine-tuned ``ft:BASE:…`` one's is its base's)."""
    if model.startswith("ft:"):
        model = model.split(":")[1]
    for prefixes, encoding in OPENAI_ENCODINGS:
        if model.startswith(prefixes):
            return encoding
    return None


def openai(model: str, fallback_encoding: str | None = None) -> Counter:
    """An OpenAI model's encoding; ``fallback_encoding`` for a model not known here."""
    encoding = openai_encoding(model) or fallback_encoding
    if encoding is None:
        return Estimate(f"no known OpenAI encoding for {model}")
    try:
        return OpenAIEncoding(encoding)
    except Exception as exc:  # noqa: BLE001 - e.g. bpe-openai not installed: named, below
        return Estimate(f"{encoding}: {type(exc).__name__}: {exc}")


def local(model: str) -> Counter:
    """A local model's tokenizer: a directory, or a name already in the HF cache."""
    return HuggingFace(model, local_only=not Path(model).expanduser().is_dir())


def served(base_url: str, model: str, api_key: str = "") -> Counter:
    """A model a vLLM server serves (``base_url`` ends in /v1), counted by the server."""
    return VLLMTokenize(base_url, model, api_key)


def first(*makers: Callable[[], Counter]) -> Counter:
    """The first counter that can be made; the estimate, naming every failure, else."""
    why = []
    for make in makers:
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 - the reasons are named in the estimate
            why.append(" ".join(str(exc).split())[:160] or type(exc).__name__)
    return Estimate("; ".join(why) or "no tokenizer")


def for_base_model(settings: RetrainSettings, model: str | None) -> Counter:
    """The counter of the local provider's base model: its tokenizer (a local directory
    or cached name), else the vLLM upstream's ``/tokenize``, else the estimate."""
    up = settings.upstreams.get(settings.retrain.local.upstream)
    makers: list[Callable[[], Counter]] = []
    if model:
        makers.append(lambda: local(model))
    if up is not None and up.kind == "vllm":
        key = up.api_key.get_secret_value()
        makers.append(lambda: served(up.urls[0], served_base(up.urls[0], key), key))
    return first(*makers)


def served_base(base_url: str, api_key: str = "") -> str:
    """The name a vLLM server serves its base model by (its only model without a parent)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=10)
    resp.raise_for_status()
    bases = [str(m["id"]) for m in resp.json()["data"] if not m.get("parent")]
    if len(bases) != 1:
        raise ValueError(f"{base_url}/models: {len(bases)} base models, not one")
    return bases[0]


def for_served_model(settings: RetrainSettings, info: ModelDetail) -> Counter:
    """The counter of a model the gateway serves, as ``GET /admin/models/{name}``
    describes it (``upstream``, ``model``): an OpenAI upstream's model by its encoding,
    a vLLM upstream's by the server's ``/tokenize``."""
    name, model = str(info.get("upstream")), str(info.get("model"))
    up = settings.upstreams.get(name)
    if up is None:
        return Estimate(f"{info.get('id', model)}: upstream '{name}' is not in the config")
    if up.kind == "openai":
        return openai(model)
    return first(lambda: served(up.urls[0], model, up.api_key.get_secret_value()))


def for_models(
    settings: RetrainSettings,
    describe: Callable[[str], ModelDetail],
    models: list[str],
    known: dict[str, Counter] | None = None,
) -> Counter:
    """The counter of models the gate compares: each one's own (``known``, else as the
    gateway describes it: ``describe(name)``, its ``GET /admin/models/{name}``), the
    largest count of them, so that an answer budget fits every model."""
    counters = []
    for model in models:
        if known and model in known:
            counters.append(known[model])
            continue
        try:
            info = describe(model)
        except Exception as exc:  # noqa: BLE001 - named in the estimate
            counters.append(Estimate(f"{model}: the gateway did not describe it: {exc}"))
            continue
        counters.append(for_served_model(settings, info))
    return longest(counters)


def for_training(settings: RetrainSettings, provider: str | None = None) -> Counter:
    """The counter of the model a dataset's examples are trained into: ``retrain.
    tokenizer`` when set; else the provider's base model (``local``: its tokenizer or its
    vLLM server; ``openai``: its encoding, ``retrain.tiktoken_encoding`` for a model not
    known here)."""
    cfg = settings.retrain
    if cfg.tokenizer:
        return HuggingFace(cfg.tokenizer)  # as configured: fetched from the hub if need be
    if (provider or cfg.provider) == "openai":
        return openai(cfg.openai.base_model, cfg.tiktoken_encoding)
    return for_base_model(settings, cfg.local.base_model)


class TokenCounter:
    """Tokens of one dataset example, as the model reads it (a preference pair: the
    longer of its two conversations)."""

    def __init__(self, counter: Counter | str | None = None, encoding: str = "o200k_base"):
        """``counter``; or a local tokenizer's name (a str); or None: ``encoding``."""
        if isinstance(counter, str):
            counter = HuggingFace(counter)
        self.counter = counter or openai("", encoding)
        self.name = self.counter.name
        self.exact = self.counter.exact

    def __call__(self, example: Example) -> int:
        line = example.line
        if example.kind == "dpo":  # curate.DPO, a preference pair (curate imports this module)
            base = line["input"]["messages"]
            return max(
                self.counter.messages(base + line["preferred_output"]),
                self.counter.messages(base + line["non_preferred_output"]),
            )
        return self.counter.messages(line["messages"])


def plain(messages: Messages) -> Messages:
    return [{"role": m["role"], "content": message_text(m)} for m in messages]


def message_text(m: dict[str, Any]) -> str:
    """What a message's tokens are counted on: its text and its tool calls' arguments."""
    calls = m.get("tool_calls") or []
    extra = [str((c.get("function") or {}).get("arguments") or "") for c in calls]
    return " ".join([text_of(m.get("content")), *extra]).strip()
