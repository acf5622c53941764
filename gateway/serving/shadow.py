"""Shadow traffic: a share of an experiment's answered requests copied to its ``shadow``
model in the background, and the judge that scores the shadow's answer.

The shadow answer is logged (``shadow_of``: the served response's id) and never returned.
With ``control.judge`` set, a judge model compares it with the served answer, asked with
the two answers in both orders (position bias cancels). At most ``limit`` copies run at
once; past that a copy is skipped (and counted), never queued.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time

import orjson

from gateway.control.control import Control
from gateway.control.routing import Route, Target
from gateway.core.errors import GatewayError
from gateway.core.ids import IdIssuer
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.metrics import Metrics
from gateway.serving.turn import Turn, payload
from gateway.serving.upstream import UpstreamClient

log = logging.getLogger(__name__)


class Shadows:
    """The shadow copies of one gateway process (see the module docstring)."""

    def __init__(
        self,
        *,
        control: Control,
        upstream: UpstreamClient,
        ids: IdIssuer,
        log: InteractionLog,
        metrics: Metrics,
        judge: str | None = None,
        limit: int = 64,
    ) -> None:
        self.control = control
        self.upstream = upstream
        self.ids = ids
        self.log = log
        self.metrics = metrics
        self.judge = judge
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Cancel shadow requests still running (they are best effort)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def copy(self, route: Route, turn: Turn) -> None:
        """Maybe copy an answered request to the experiment's shadow model, in the background."""
        shadow = route.shadow
        if shadow is None or turn.forced or turn.status != "ok":
            return
        if random.random() >= route.shadow_share:
            return
        exp = turn.experiment or ""
        if len(self._tasks) >= self.limit:
            self.metrics.shadow_requests.labels(exp, shadow.name, "skipped").inc()
            return
        task = asyncio.create_task(self._run(shadow, turn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, shadow: Target, served: Turn) -> None:
        doc = {k: v for k, v in served.doc.items() if k not in ("stream", "stream_options")}
        turn = Turn(
            id=self.ids.new(),
            request_id=served.request_id,
            t0=time.perf_counter(),
            doc=doc,
            principal=served.principal,
            experiment=served.experiment,
            assigned=shadow,
            target=shadow,
            stream=False,
            version=served.version,
            user=served.user,
            workload=served.workload,
        )
        exp = served.experiment or ""
        try:
            call = await self.upstream.post(shadow, payload(turn))
            body = orjson.loads(await self.upstream.read(call))
            choice = body["choices"][0]
            turn.take_message(choice.get("message") or {})
            turn.finish_reason, turn.usage = choice.get("finish_reason"), body.get("usage")
        except (GatewayError, orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            turn.status, turn.error = "error", getattr(exc, "message", repr(exc))
        self.metrics.shadow_requests.labels(exp, shadow.name, turn.status).inc()
        record = turn.record()
        record["shadow_of"] = served.id
        if turn.status == "ok" and self.judge:
            record["judge_score"] = score = await self._judge(served, turn)
            if score is not None:
                self.metrics.shadow_score.labels(exp, shadow.name).observe(score)
        self.log.submit(record)

    async def _judge(self, served: Turn, shadow: Turn) -> float | None:
        """The judge's verdict on the shadow answer against the served one, in [0, 1].

        Asked twice, with the answers in both orders, and averaged: a judge that favours
        whichever answer comes second (or first) then scores a tie, 0.5, not a win.
        None unless both verdicts came back.
        """
        try:
            route = self.control.router.resolve(self.judge or "", "judge")
        except GatewayError:
            return None
        question = "\n".join(
            f"{m.get('role')}: {m.get('content')}"
            for m in served.doc["messages"]
            if isinstance(m.get("content"), str)
        )
        served_text, shadow_text = "".join(served.answer), "".join(shadow.answer)
        second, first = await asyncio.gather(
            self._verdict(route.primary, question, served_text, shadow_text),  # shadow is B
            self._verdict(route.primary, question, shadow_text, served_text),  # shadow is A
        )
        if second is None or first is None:
            return None
        return (second + (1 - first)) / 2

    async def _verdict(self, judge: Target, question: str, a: str, b: str) -> float | None:
        """How good answer B is against answer A, in [0, 1] (None: no verdict)."""
        prompt = JUDGE_PROMPT.format(conversation=question, a=a, b=b)
        payload = {
            "model": judge.upstream_model,
            "temperature": 0,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": prompt}],
        }
        try:
            call = await self.upstream.post(judge, orjson.dumps(payload))
            body = orjson.loads(await self.upstream.read(call))
            return judge_score(str(body["choices"][0]["message"]["content"]))
        except (GatewayError, orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            log.warning("judge failed: %s", getattr(exc, "message", repr(exc)))
            return None


JUDGE_PROMPT = """You compare two answers to the same conversation.

{conversation}

Answer A:
{a}

Answer B:
{b}

How good is answer B compared with answer A? Reply with one digit from 1 to 5:
1 much worse, 2 worse, 3 as good, 4 better, 5 much better."""


def judge_score(reply: str) -> float | None:
    """The first digit 1–5 of a judge's reply, as a score in [0, 1] (None: no verdict)."""
    m = re.search(r"[1-5]", reply)
    return None if m is None else (int(m.group()) - 1) / 4
