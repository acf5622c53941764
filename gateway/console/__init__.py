"""The console: a web UI for operators and reviewers, served under ``/ui/``.

Server-rendered Jinja2 pages, a few lines of plain JavaScript (keyboard shortcuts,
confirmations) and plots drawn on the server as SVG; every asset is served from this
package. It is its own router, off the chat path (``serving_app`` dispatches chat
before any routing). See ``docs/console.md``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from gateway.console.access import Access
from gateway.console.pages import HERE, LoginNeeded, make_router
from gateway.core.config import Settings

__all__ = ["Access", "add_console"]


def add_console(app: FastAPI, settings: Settings) -> None:
    """Mount the console (``console.enabled``): its pages, forms and static files."""
    if not settings.console.enabled:
        return
    access = Access(settings.auth.reviewer_keys, settings.console.session_hours * 3600)
    app.include_router(
        make_router(access, settings.retrain.dataset_dir, settings.console.page_size)
    )
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(LoginNeeded)
    async def login_first(request: Request, exc: Exception) -> Response:
        path = request.url.path
        nxt = f"?next={path}" if path.startswith("/ui/") and path != "/ui/" else ""
        return RedirectResponse(f"/ui/login{nxt}", status_code=303)
