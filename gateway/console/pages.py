"""The console's routes under ``/ui/``: pages (GET) and forms (POST, CSRF-checked).

:data:`ROUTES` is the table: each route's method, path and :class:`Console` handler
(the console is HTML, outside the OpenAPI document).

Routes read through :mod:`.data` and change state only through the admin API's code
(:class:`gateway.control.experiments.Experiments`) or the review store (:mod:`gateway.core.review`).
A page asked for without a session redirects to the login form; a bad key, a missing
permission or bad input is raised as the gateway's usual error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from gateway.console import data, svg
from gateway.console.access import COOKIE, Access, User, same_origin
from gateway.control.experiments import promoted, weighted
from gateway.control.report import LANGUAGE_SAMPLE
from gateway.core import access as rule
from gateway.core import keys, params, review, store
from gateway.core.documents import ReviewItem
from gateway.core.errors import (
    AuthenticationFailed,
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    UnsupportedMediaType,
)
from gateway.core.records import unpack
from gateway.ops import archive_query
from gateway.ops.archive import default_url
from gateway.serving.bodies import read_bounded
from gateway.state import state as gateway_state

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class LoginNeeded(Exception):
    """No session: the page redirects to the login form."""


class ConsoleRoute(APIRoute):
    """A console route: for a browser (HTML accepted, no bearer header), an error the
    route raises is shown as a page with the same status; scripts get the JSON error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except GatewayError as exc:
                if request.headers.get("authorization") or "text/html" not in request.headers.get(
                    "accept", ""
                ):
                    raise
                html = ENV.get_template("error.html").render(error=exc, user=None, path="")
                return HTMLResponse(html, status_code=exc.status, headers=HEADERS)

        return handler


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
    env.filters["q"] = lambda v: quote(str(v), safe="")
    return env


ENV = environment()


class Console:
    """The console's handlers and what they share: the session keys, the datasets' folder
    and the page size. Its routes are :data:`ROUTES`."""

    def __init__(self, access: Access, dataset_dir: Path, page_size: int) -> None:
        self.access = access
        self.dataset_dir = dataset_dir
        self.page_size = page_size

    def bound(self, request: Request) -> Access:
        if not self.access.bound:  # the key ring and the id secret are opened by the lifespan
            st = gateway_state(request)
            self.access.bind(st.keyring, st.chat.ids.derive("console-session"))
        return self.access

    def current(self, request: Request) -> User:
        user = self.bound(request).user(
            request.headers.get("authorization"), request.cookies.get(COOKIE)
        )
        if user is None:
            raise LoginNeeded
        return user

    def admin_only(self, user: User) -> None:
        if not user.admin:
            raise PermissionDenied("This page needs an admin key; a reviewer key was given.")

    def owner(self, request: Request, experiment: str) -> str | None:
        """An experiment's tenant (None: shared; nobody's when it is gone)."""
        exp = gateway_state(request).control.router.experiments.get(experiment)
        return exp.tenant if exp is not None else rule.NOBODY

    def allowed(
        self,
        request: Request,
        user: User,
        action: rule.Action,
        kind: rule.Kind,
        name: str,
        exp: str,
    ) -> bool:
        """The access rule for a resource of experiment ``exp`` (its tenant's). A shared
        experiment's dataset holds every tenant's examples: it is no tenant's."""
        tenant = self.owner(request, exp)
        if kind == "dataset" and tenant is None:
            tenant = rule.NOBODY
        return rule.allows(user.principal, action, rule.Resource(kind, name, tenant))

    def check_experiment(
        self, request: Request, user: User, name: str, action: rule.Action
    ) -> None:
        res = rule.Resource("experiment", name, self.owner(request, name))
        rule.check(user.principal, action, res, param="experiment")

    def seen_experiments(self, request: Request, user: User) -> list[str]:
        exps = gateway_state(request).control.router.experiments
        return rule.visible(
            user.principal, "experiment", {n: e.tenant for n, e in sorted(exps.items())}
        )

    def render(self, request: Request, user: User | None, name: str, **ctx: Any) -> HTMLResponse:
        html = ENV.get_template(name).render(
            user=user,
            csrf=self.access.csrf_token(user) if user else "",
            path=request.url.path,
            **ctx,
        )
        return HTMLResponse(html, headers=HEADERS)

    async def form(self, request: Request, user: User | None = None) -> dict[str, str]:
        """A posted form's fields (the CSRF token checked when a user is given)."""
        origin = request.headers.get("origin")
        cross = request.headers.get("sec-fetch-site") in ("cross-site", "same-site")
        if cross or not same_origin(origin, request.url.scheme, request.headers.get("host")):
            raise PermissionDenied("A console form must be posted from the console's own pages.")
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType(
                "Console forms are sent as 'application/x-www-form-urlencoded'.",
                param="content-type",
            )
        limit = gateway_state(request).settings.limits.max_body_bytes
        raw = await read_bounded(request, limit)
        fields = {
            k: v[-1]
            for k, v in parse_qs(raw.decode(errors="replace"), keep_blank_values=True).items()
        }
        if user is not None:
            self.access.check_csrf(user, fields.get("csrf"))
        return fields

    def archive_of(self, request: Request) -> archive_query.ArchiveReader | None:
        """The archive's reader; None where it cannot be opened (the pages then show what
        Redis holds)."""
        settings = gateway_state(request).settings
        url = default_url(settings.data_dir, settings.archive.url)
        try:
            return archive_query.reader(url, settings.archive.storage_options)
        except (OSError, ValueError) as exc:
            log.warning("console: the archive at %s cannot be opened: %s", url, exc)
            return None

    def see_other(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=HEADERS)

    # login ----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        self.bound(request)
        return self.render(request, None, "login.html", error=None, next=_safe_next(request))

    async def login(self, request: Request) -> Response:
        fields = await self.form(request)
        key = fields.get("key", "")
        nxt = _safe_next(request, fields.get("next", ""))
        self.bound(request)
        try:
            if not key.strip():
                raise AuthenticationFailed("Enter a key.")
            user = self.access.by_key(key)
        except (AuthenticationFailed, PermissionDenied) as exc:  # shown on the form
            page = self.render(request, None, "login.html", error=exc.message, next=nxt)
            page.status_code = exc.status
            return page
        response = self.see_other(nxt or ("/ui/" if user.admin else "/ui/review"))
        response.set_cookie(
            COOKIE,
            self.access.new_session(user),
            max_age=int(self.access.session_s),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        user = self.current(request)
        await self.form(request, user)
        response = self.see_other("/ui/login")
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return response

    # overview and experiments ---------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        user = self.current(request)
        if not user.admin:
            return self.see_other("/ui/review")
        st = gateway_state(request)
        rows = [
            r
            for r in await data.overview(st.control, st.redis)
            if self.allowed(
                request, user, "see", "experiment", r["state"]["name"], r["state"]["name"]
            )
        ]
        changes = []
        for r in rows:
            history = await st.control.experiments.history(r["state"]["name"])
            changes += [{"experiment": r["state"]["name"], **h} for h in history[-5:]]
        changes = sorted(changes, key=lambda h: h["at"], reverse=True)[:10]
        return self.render(
            request, user, "overview.html", rows=rows, changes=changes, health=await data.health(st)
        )

    async def experiment(self, request: Request, name: str) -> Response:
        user = self.current(request)
        self.admin_only(user)
        self.check_experiment(request, user, name, "see")
        since = params.checked_day(request.query_params.get("since"), "since")
        until = params.checked_day(request.query_params.get("until"), "until")
        workload = params.checked_workload(request.query_params.get("workload"))
        st = gateway_state(request)
        state = await st.control.experiments.state(name)
        rep = await st.control.report(name)
        history = await st.control.experiments.history(name)
        points = await data.versions(st.redis, st.ks, name, history, state, st.control)
        window = None
        if since or until:  # the report over those days, from the archive
            window = await archive_query.windowed(
                st.settings, state, since, until or None, workload
            )
        return self.render(
            request,
            user,
            "experiment.html",
            state=state,
            report=rep,
            history=list(reversed(history)),
            plots=_plots(points),
            window=window,
            since=since or "",
            until=until or "",
            workload=workload or "",
            language_sample=LANGUAGE_SAMPLE,
            hot_hours=st.settings.interaction_log.hot_s / 3600,
        )

    async def confirm(self, request: Request) -> Response:
        user = self.current(request)
        self.admin_only(user)
        fields = await self.form(request, user)
        st = gateway_state(request)
        name = fields.get("experiment", "")
        self.check_experiment(request, user, name, "change")
        state = await st.control.experiments.state(name)
        action, model = fields.get("action", ""), fields.get("model", "")
        before = state["spec"]
        if action == "ramp":
            weight = _weight(fields.get("weight"))
            after = weighted({model: weight})(_spec(before)).model_dump()
            if model not in {a["model"] for a in before["arms"]}:
                raise InvalidRequest(f"'{model:.128}' is not an arm of '{name}'.", param="model")
        elif action == "promote":
            after = promoted(model)(_spec(before)).model_dump()
        elif action == "rollback":
            previous = state["previous"]
            if previous is None:
                raise Conflict(f"Experiment '{name}' has no earlier state to roll back to.")
            after = previous
        else:
            raise InvalidRequest("'action' must be ramp, promote or rollback.", param="action")
        return self.render(
            request,
            user,
            "confirm.html",
            state=state,
            action=action,
            model=model,
            weight=fields.get("weight", ""),
            before=before,
            after=after,
        )

    async def apply(self, request: Request) -> Response:
        user = self.current(request)
        self.admin_only(user)
        fields = await self.form(request, user)
        experiments = gateway_state(request).control.experiments
        name, action, model = (
            fields.get("experiment", ""),
            fields.get("action"),
            fields.get("model", ""),
        )
        self.check_experiment(request, user, name, "change")
        version = _int(fields.get("version"), "version")
        who = user.name
        if action == "ramp":
            weight = _weight(fields.get("weight"))
            await experiments.change(
                name,
                who,
                f"ramped {model:.128} to {weight:g}",
                weighted({model: weight}),
                expect_version=version,
            )
        elif action == "promote":
            await experiments.change(
                name, who, f"promoted {model:.128}", promoted(model), expect_version=version
            )
        elif action == "rollback":
            await experiments.change(name, who, "rolled back", None, expect_version=version)
        elif action == "resume":
            await experiments.resume(name, who)
        else:
            raise InvalidRequest(
                "'action' must be ramp, promote, rollback or resume.", param="action"
            )
        return self.see_other(f"/ui/experiments/{quote(name)}")

    # review queue -----------------------------------------------------------------------

    async def queue(self, request: Request, user: User, only: str = "") -> list[ReviewItem]:
        """Failures awaiting a person (of one experiment, with ``only``), in the user's view."""
        st = gateway_state(request)
        out: list[ReviewItem] = []
        for state in await st.control.experiments.states():
            if only and state["name"] != only:
                continue
            if not self.allowed(request, user, "see", "experiment", state["name"], state["name"]):
                continue
            items = await review.items(st.redis, st.ks, state["name"])
            for rid, item in items.items():
                if not review.pending(item):
                    continue
                out.append({**item, "response_id": rid, "experiment": state["name"]})
        if user.tenant:  # only failures of the user's tenant
            p = user.principal
            recs = await store.mget(st.redis, [keys.interaction(i["response_id"]) for i in out])
            out = [
                i
                for i, r in zip(out, recs, strict=True)
                if (rec := unpack(r)) is not None
                and rule.allows(p, "see", rule.Resource("review", i["response_id"], rec["tenant"]))
            ]
        return out

    async def review_list(self, request: Request) -> Response:
        user = self.current(request)
        only = request.query_params.get("experiment", "")
        experiments = self.seen_experiments(request, user)
        return self.render(
            request,
            user,
            "review_list.html",
            items=await self.queue(request, user, only),
            only=only,
            experiments=experiments,
        )

    async def review_next(self, request: Request) -> Response:
        user = self.current(request)
        only = request.query_params.get("experiment", "")
        items = await self.queue(request, user, only)
        skip = set(request.query_params.getlist("skip"))
        rest = [i for i in items if i["response_id"] not in skip]
        return self.render(
            request,
            user,
            "review_item.html",
            item=rest[0] if rest else None,
            left=len(rest),
            skip=sorted(skip),
            only=only,
        )

    async def review_save(self, request: Request) -> Response:
        user = self.current(request)
        fields = await self.form(request, user)
        st = gateway_state(request)
        exp, rid, action = fields.get("experiment", ""), fields.get("id", ""), fields.get("action")
        allowed = {
            i["response_id"] for i in await self.queue(request, user) if i["experiment"] == exp
        }
        if rid not in allowed:
            raise NotFound(f"No failure '{rid:.80}' awaits review in '{exp:.128}'.", param="id")
        skip = [s for s in fields.get("skip", "").split(",") if s]
        only = fields.get("only", "")
        if action == "save":
            try:
                await review.correct(
                    st.redis, st.ks, exp, rid, fields.get("correction", ""), user.name
                )
            except review.BadCorrection as exc:
                raise InvalidRequest(str(exc), param="correction") from None
        elif action == "dismiss":
            await review.dismiss(st.redis, st.ks, exp, rid, user.name)
        elif action == "skip":
            skip.append(rid)
        else:
            raise InvalidRequest("'action' must be save, dismiss or skip.", param="action")
        query = [("experiment", only)] if only else []
        query += [("skip", s) for s in skip]
        return self.see_other("/ui/review/next" + (f"?{urlencode(query)}" if query else ""))

    # interactions -----------------------------------------------------------------------

    async def interactions(self, request: Request) -> Response:
        user = self.current(request)
        st = gateway_state(request)
        qp = request.query_params
        f = data.Filters(
            experiment=qp.get("experiment", ""),
            arm=qp.get("arm", ""),
            workload=params.checked_workload(qp.get("workload")) or "",
            rating=qp.get("rating", "") if qp.get("rating") in ("up", "down", "none") else "",
            corrected=qp.get("corrected") == "1",
            tenant=qp.get("tenant", ""),
            q=qp.get("q", "")[:200],
            since=params.checked_day(qp.get("since"), "since") or "",
            until=params.checked_day(qp.get("until"), "until") or "",
        )
        before = params.checked_cursor(qp.get("before"))
        archive = await asyncio.to_thread(self.archive_of, request)
        with store.translated("The archive"):
            page = await data.interactions(
                st.redis,
                st.ks,
                user,
                f,
                before,
                self.page_size,
                st.settings.feedback.failure_threshold,
                archive,
            )
        more = urlencode({**f.query(), "before": page.next_cursor}) if page.next_cursor else None
        return self.render(
            request,
            user,
            "interactions.html",
            page=page,
            f=f,
            more=more,
            experiments=self.seen_experiments(request, user),
        )

    async def interaction(self, request: Request, response_id: str) -> Response:
        user = self.current(request)
        st = gateway_state(request)
        archive = await asyncio.to_thread(self.archive_of, request)
        issued = st.chat.ids.issued_at(response_id)
        rec = await data.interaction(st.redis, response_id, archive, issued)
        p = user.principal
        if rec is None or not rule.allows(
            p, "see", rule.Resource("interaction", response_id, rec.get("tenant"))
        ):
            raise NotFound(f"No interaction '{response_id:.80}'.", param="response_id")
        ratings = (await data.ratings_merged(st.redis, st.ks, archive, [rec]))[0]
        ratings = [
            r
            for r in ratings
            if rule.allows(p, "see", rule.Resource("rating", response_id, r.get("tenant")))
        ]
        queued = (
            await review.item(st.redis, st.ks, rec.get("experiment") or "", response_id)
            if rec.get("experiment")
            else None
        )
        examples = data.examples_of(self.dataset_dir, rec.get("experiment"), response_id)
        return self.render(
            request,
            user,
            "interaction.html",
            rec=rec,
            ratings=ratings,
            queued=queued,
            examples=examples,
        )

    # datasets and jobs --------------------------------------------------------------------

    async def datasets(self, request: Request) -> Response:
        user = self.current(request)
        self.admin_only(user)
        st = gateway_state(request)
        mine = [
            e
            for e in sorted(st.control.router.experiments)
            if self.allowed(request, user, "see", "dataset", e, e)
        ]
        versions = data.datasets(self.dataset_dir, mine)
        return self.render(request, user, "datasets.html", versions=versions)

    async def download(self, request: Request, experiment: str, vid: str, split: str) -> Response:
        user = self.current(request)
        self.admin_only(user)
        path = None
        if self.allowed(request, user, "see", "dataset", experiment, experiment):
            path = data.dataset_file(self.dataset_dir, experiment, vid, split)
        if path is None:
            raise NotFound(f"No file {split}.jsonl in dataset version '{vid:.80}'.")
        return FileResponse(
            path,
            media_type="application/jsonl",
            filename=f"{vid}-{split}.jsonl",
            headers={"cache-control": "no-store"},
        )

    async def jobs(self, request: Request) -> Response:
        user = self.current(request)
        self.admin_only(user)
        st = gateway_state(request)
        p = user.principal
        all_jobs = [
            j
            for j in await data.jobs(st.redis, st.ks)
            if self.allowed(
                request, user, "see", "job", str(j.get("id")), str(j.get("experiment") or "")
            )
        ]
        models = [
            m
            for m in st.control.models()
            if rule.allows(p, "see", rule.Resource("model", m["id"], m.get("tenant")))
        ]
        states = [
            s
            for s in await st.control.experiments.states()
            if self.allowed(request, user, "see", "experiment", s["name"], s["name"])
        ]
        plots = {
            j["id"]: svg.line_plot(
                "loss",
                [
                    svg.Series(
                        "train",
                        [
                            (p["step"], p["loss"], None, None)
                            for p in j.get("loss") or []
                            if p.get("loss") is not None
                        ],
                    ),
                    svg.Series(
                        "eval",
                        [
                            (p["step"], p["eval_loss"], None, None)
                            for p in j.get("loss") or []
                            if p.get("eval_loss") is not None
                        ],
                    ),
                ],
                x_label="step",
            )
            for j in all_jobs[:10]
        }
        return self.render(
            request,
            user,
            "jobs.html",
            jobs=all_jobs,
            plots=plots,
            models=models,
            lineage=data.lineage(models, all_jobs, states),
        )


ROUTES = (
    ("GET", "/login", Console.login_form),
    ("POST", "/login", Console.login),
    ("POST", "/logout", Console.logout),
    ("GET", "/", Console.overview),
    ("GET", "/experiments/{name:path}", Console.experiment),
    ("POST", "/actions/confirm", Console.confirm),
    ("POST", "/actions/apply", Console.apply),
    ("GET", "/review", Console.review_list),
    ("GET", "/review/next", Console.review_next),
    ("POST", "/review/save", Console.review_save),
    ("GET", "/interactions", Console.interactions),
    ("GET", "/interactions/{response_id}", Console.interaction),
    ("GET", "/datasets", Console.datasets),
    ("GET", "/datasets/{experiment}/{vid}/{split}.jsonl", Console.download),
    ("GET", "/jobs", Console.jobs),
)
"""The console's routes under ``/ui``, in the order they are matched."""


def make_router(access: Access, dataset_dir: Path, page_size: int) -> APIRouter:
    console = Console(access, dataset_dir, page_size)
    router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)
    for method, path, handler in ROUTES:
        router.add_api_route(path, getattr(console, handler.__name__), methods=[method])
    return router


def _safe_next(request: Request, value: str | None = None) -> str:
    nxt = value if value is not None else request.query_params.get("next", "")
    return nxt if nxt.startswith("/ui/") and not nxt.startswith("//") and "\\" not in nxt else ""


def _spec(doc: dict[str, Any]) -> Any:
    from gateway.core.config import Experiment

    return Experiment.model_validate(doc)


def _int(raw: str | None, param: str) -> int:
    try:
        return int(raw or "")
    except ValueError:
        raise InvalidRequest(f"'{param}' must be an integer.", param=param) from None


def _weight(raw: str | None) -> float:
    try:
        w = float(raw or "")
    except ValueError:
        raise InvalidRequest("'weight' must be a number from 0 to 100.", param="weight") from None
    if not 0 <= w <= 100:
        raise InvalidRequest("'weight' must be a number from 0 to 100.", param="weight")
    return w


def _plots(points: list[dict[str, Any]]) -> list[str]:
    arms = sorted({a for p in points for a in p["arms"]})

    def series(get: Callable[[dict[str, Any]], Any], band: bool = False) -> list[svg.Series]:
        out = []
        for arm in arms:
            s = svg.Series(arm)
            for p in points:
                a = p["arms"].get(arm)
                if a is None or get(a) is None:
                    continue
                lo, hi = a["ratings"]["ci95"] if band else (None, None)
                s.points.append((p["version"], float(get(a)), lo, hi))
            out.append(s)
        return out

    return [
        svg.line_plot("mean rating (95% CI)", series(lambda a: a["ratings"]["mean_score"], True)),
        svg.line_plot("traffic share", series(lambda a: a["traffic_share"])),
        svg.line_plot("p95 latency (ms)", series(lambda a: a["latency_ms"]["p95"])),
        svg.line_plot("error rate", series(lambda a: a["error_rate"])),
        svg.line_plot("cost per 1k requests", series(lambda a: a["cost_per_1k_requests"])),
    ]
