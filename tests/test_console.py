"""The console in a real browser: Debian's chromium driven by Playwright (sync API).

A gateway on the fixed upstream with real Redis; traffic and ratings go through the
gateway, the review queue is filled by ``retrain build`` and read back by the next one.
Effects are checked through the admin API, the review store and the dataset files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from .conftest import ADMIN_KEY, API_KEY, OTHER_TENANT_KEY
from .console_stack import (
    ADMIN,
    CHROMIUM,
    REVIEWER_KEY,
    TENANT_REVIEWER_KEY,
    chat_and_rate,
    chromium_available,
    console_gateway,
    new_experiment,
    retrain_build,
)
from .services import GatewayProcess
from .stores import STORES, Store, store_for

CONSOLE_DB = 11  # the console's experiments, ratings and jobs stay out of the others' way
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect  # retries until the page shows it (a click returns at the commit)


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, CONSOLE_DB)


@pytest.fixture(scope="module")
def stack(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Path]]:
    """The console on one Redis or on the cluster: its data pages read either."""
    with console_gateway(store, tmp_path_factory.mktemp("console")) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not chromium_available():
        reason = f"no chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    # no script error, no asset refused by the CSP (a refused action's page: fine)
    errors = [e for e in errors if not re.search(r"status of 40[139]", e)]
    assert not errors, errors


def log_in(page: Any, gw: GatewayProcess, key: str) -> None:
    page.goto(gw.url + "/ui/login")
    page.get_by_label("Admin or reviewer key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def assert_labelled(page: Any) -> None:
    """Every control a person fills in has a label (accessibility basics)."""
    unlabelled = page.eval_on_selector_all(
        "input:not([type=hidden]), select, textarea",
        "els => els.filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)",
    )
    assert unlabelled == []


def test_a_login_sets_an_httponly_strict_session_and_a_client_key_is_refused(
    stack: tuple[GatewayProcess, Path], page: Any
) -> None:
    gw, _ = stack
    page.goto(gw.url + "/ui/interactions")
    assert page.url.endswith("/ui/login?next=/ui/interactions")
    log_in(page, gw, API_KEY)
    assert "client key" in page.get_by_role("alert").inner_text()
    assert page.context.cookies() == []
    page.get_by_label("Admin or reviewer key").fill("sk-not-a-key-at-all")
    page.get_by_role("button", name="Log in").click()
    assert "Incorrect API key" in page.get_by_role("alert").inner_text()

    log_in(page, gw, ADMIN_KEY)
    assert page.url == gw.url + "/ui/"
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert ADMIN_KEY not in cookie["value"]
    page.get_by_role("button", name="Log out").click()
    assert page.url.endswith("/ui/login") and page.context.cookies() == []


def test_every_page_renders_for_an_admin(stack: tuple[GatewayProcess, Path], page: Any) -> None:
    gw, config = stack
    exp = new_experiment(gw)
    ids = chat_and_rate(gw, exp, 4, prefix="walk")
    assert retrain_build(config, exp).returncode == 4  # below the minimum: queued for review
    log_in(page, gw, ADMIN_KEY)

    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()
    page.get_by_role("link", name=exp).click()
    assert_labelled(page)
    expect(page.get_by_role("heading", name=f"Experiment {exp}")).to_be_visible()
    expect(page.locator("svg.plot")).to_have_count(5)
    expect(page.get_by_role("img", name="mean rating (95% CI)")).to_be_visible()
    report = httpx.get(f"{gw.url}/admin/experiments/{exp}/report", headers=ADMIN).json()
    table = page.locator("section", has_text="Report (version 1)").locator("tbody tr")
    served = {
        table.nth(i).locator("td").nth(0).inner_text().split()[0]: int(
            table.nth(i).locator("td").nth(2).inner_text()
        )
        for i in range(table.count())
    }
    assert served == {a["model"]: a["requests"] for a in report["arms"]}  # the report's table
    assert sum(served.values()) == 4

    page.get_by_role("link", name="Interactions").click()
    page.get_by_label("Experiment").select_option(exp)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(4)
    expect(page.get_by_role("link", name="Older →")).to_have_count(0)
    assert_labelled(page)
    page.locator("tbody tr a").first.click()
    expect(page.get_by_role("heading", name=re.compile("^Interaction"))).to_be_visible()
    assert "walk 3: where is my parcel?" in page.locator(".conversation").inner_text()
    assert ids[-1] in page.url

    page.get_by_role("link", name="Review").click()
    expect(page.get_by_role("heading", name=re.compile("^Review queue"))).to_be_visible()
    expect(page.locator("tbody tr", has_text=exp)).to_have_count(4)
    assert_labelled(page)
    page.get_by_role("link", name="Review one at a time").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Review \d+ left"))).to_be_visible()
    assert_labelled(page)
    page.get_by_role("link", name="Datasets").click()
    expect(page.get_by_role("heading", name="Datasets", exact=True)).to_be_visible()
    page.get_by_role("link", name="Jobs & models").click()
    expect(page.get_by_role("heading", name="Model versions")).to_be_visible()
    assert page.locator("tr", has_text="fixed-a").count() >= 1


def test_a_ramp_and_a_rollback_through_the_console_are_what_the_admin_api_shows(
    stack: tuple[GatewayProcess, Path], page: Any
) -> None:
    gw, _ = stack
    exp = new_experiment(gw)
    log_in(page, gw, ADMIN_KEY)
    page.goto(f"{gw.url}/ui/experiments/{exp}")
    page.get_by_label("Arm").first.select_option("fixed-b")
    page.get_by_label("Weight").fill("50")
    page.get_by_role("button", name="Ramp…").click()

    changed = page.locator("tr.changed")  # the confirmation shows what will change
    expect(changed).to_have_count(1)
    assert changed.inner_text().split() == ["fixed-b", "10", "50"]
    before = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert before["version"] == 1  # nothing changed before the confirmation
    page.get_by_role("button", name="Apply ramp").click()

    state = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert {a["model"]: a["weight"] for a in state["spec"]["arms"]} == {
        "fixed-a": 90,
        "fixed-b": 50,
    }
    assert state["pin"]["by"] == "ops" and state["version"] == 2
    history = httpx.get(f"{gw.url}/admin/experiments/{exp}/history", headers=ADMIN).json()
    assert history["data"][-1]["action"] == "ramped fixed-b to 50"
    assert history["data"][-1]["by"] == "ops"
    assert "ramped fixed-b to 50" in page.locator("section", has_text="History").inner_text()

    page.get_by_role("button", name="Roll back…").click()
    page.get_by_role("button", name="Apply rollback").click()
    state = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert {a["model"]: a["weight"] for a in state["spec"]["arms"]} == {
        "fixed-a": 90,
        "fixed-b": 10,
    }
    assert state["version"] == 3
    history = httpx.get(f"{gw.url}/admin/experiments/{exp}/history", headers=ADMIN).json()
    assert [h["action"] for h in history["data"]][-1] == "rolled back"


def test_a_confirmation_applies_only_to_the_version_it_showed(
    stack: tuple[GatewayProcess, Path], page: Any
) -> None:
    gw, _ = stack
    exp = new_experiment(gw)
    log_in(page, gw, ADMIN_KEY)
    page.goto(f"{gw.url}/ui/experiments/{exp}")
    page.get_by_label("Arm").nth(1).select_option("fixed-b")
    page.get_by_role("button", name="Promote…").click()
    r = httpx.post(
        f"{gw.url}/admin/experiments/{exp}/promote", json={"model": "fixed-a"}, headers=ADMIN
    )
    assert r.is_success
    with page.expect_response(lambda resp: "/ui/actions/apply" in resp.url) as info:
        page.get_by_role("button", name="Apply promote").click()
    assert info.value.status == 409
    assert "changed since version 1" in page.get_by_role("alert").inner_text()
    state = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert state["spec"]["control"] == "fixed-a"


def session_of(gw: GatewayProcess, key: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=gw.url)
    r = c.post("/ui/login", data={"key": key})
    assert r.status_code == 303, r.text
    page = c.get("/ui/review")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    return c, token.group(1)


def test_a_form_without_its_csrf_token_changes_nothing(stack: tuple[GatewayProcess, Path]) -> None:
    gw, _ = stack
    exp = new_experiment(gw)
    c, token = session_of(gw, ADMIN_KEY)
    form = {"experiment": exp, "action": "ramp", "model": "fixed-b", "weight": "60", "version": "1"}
    for bad in ({}, {"csrf": "forged"}):
        r = c.post("/ui/actions/apply", data={**form, **bad})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = c.post(
        "/ui/actions/apply",
        data={**form, "csrf": token},
        headers={"origin": "https://elsewhere.example"},
    )
    assert r.status_code == 403  # another site's page, even with the token
    assert httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()["version"] == 1
    r = c.post("/ui/actions/apply", data={**form, "csrf": token})
    assert r.status_code == 303
    assert httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()["version"] == 2
    c.close()


def paused_experiment(gw: GatewayProcess) -> tuple[str, dict[str, Any]]:
    """An experiment a person's ramp paused: (its name, its state)."""
    exp = new_experiment(gw)
    spec = {
        "arms": [{"model": "fixed-a", "weight": 60}, {"model": "fixed-b", "weight": 40}],
        "fallback": "fixed-c",
        "auto_promote": True,
    }
    r = httpx.put(f"{gw.url}/admin/experiments/{exp}", json=spec, headers=ADMIN)
    assert r.is_success and r.json()["pin"]["by"] == "ops", r.text
    return exp, r.json()


def test_a_paused_experiment_says_so_and_its_resume_button_lets_the_decider_act(
    stack: tuple[GatewayProcess, Path], page: Any
) -> None:
    gw, _ = stack
    exp, state = paused_experiment(gw)
    log_in(page, gw, ADMIN_KEY)
    paused = f"paused by ops at version {state['version']} (replaced)"
    page.goto(f"{gw.url}/ui/")
    assert paused in page.locator("tr", has_text=exp).first.inner_text()
    page.goto(f"{gw.url}/ui/experiments/{exp}")
    assert (
        f"paused by ops at version {state['version']}"
        in page.get_by_role("status").first.inner_text()
    )
    page.get_by_role("button", name="Resume automatic decisions").click()
    page.wait_for_load_state()
    after = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert after["pin"] is None and after["version"] == state["version"]
    expect(page.get_by_role("button", name="Resume automatic decisions")).to_have_count(0)
    assert "resumed automatic decisions" in page.locator("section", has_text="History").inner_text()


def test_resume_in_the_console_is_for_admins_only(stack: tuple[GatewayProcess, Path]) -> None:
    gw, _ = stack
    exp, state = paused_experiment(gw)
    form = {"experiment": exp, "action": "resume", "version": str(state["version"])}
    # a client key cannot log in; a reviewer's session and bearer key are refused
    r = httpx.post(f"{gw.url}/ui/login", data={"key": API_KEY})
    assert r.status_code == 403 and "client key" in r.text
    for key in (API_KEY, REVIEWER_KEY, TENANT_REVIEWER_KEY):
        r = httpx.post(
            f"{gw.url}/ui/actions/apply", data=form, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 403, (key, r.text)
    c, token = session_of(gw, REVIEWER_KEY)
    assert c.post("/ui/actions/apply", data={**form, "csrf": token}).status_code == 403
    c.close()
    still = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert still["pin"] == state["pin"]

    c, token = session_of(gw, ADMIN_KEY)
    page = c.get(f"/ui/experiments/{exp}").text
    assert f"paused by ops at version {state['version']}</strong> (replaced)" in page
    assert c.post("/ui/actions/apply", data=form).status_code == 403  # no CSRF token
    r = c.post("/ui/actions/apply", data={**form, "csrf": token})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/experiments/{exp}"
    after = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()
    assert after["pin"] is None
    history = httpx.get(f"{gw.url}/admin/experiments/{exp}/history", headers=ADMIN).json()
    assert history["data"][-1]["by"] == "ops"
    assert history["data"][-1]["action"].startswith("resumed automatic decisions")
    r = c.post("/ui/actions/apply", data={**form, "csrf": token})  # once more: not paused
    assert r.status_code == 409 and "is not paused" in r.text
    c.close()


def test_a_reviewer_reads_and_reviews_but_cannot_change_experiments(
    stack: tuple[GatewayProcess, Path],
) -> None:
    gw, _ = stack
    exp = new_experiment(gw)
    bearer = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    assert httpx.get(f"{gw.url}/ui/interactions", headers=bearer).status_code == 200
    assert httpx.get(f"{gw.url}/ui/", headers=bearer).headers["location"] == "/ui/review"
    for path in (f"/ui/experiments/{exp}", "/ui/datasets", "/ui/jobs"):
        assert httpx.get(gw.url + path, headers=bearer).status_code == 403
    form = {"experiment": exp, "action": "promote", "model": "fixed-b", "version": "1"}
    r = httpx.post(f"{gw.url}/ui/actions/apply", data=form, headers=bearer)
    assert r.status_code == 403
    assert httpx.get(f"{gw.url}/admin/experiments", headers=bearer).status_code == 401
    client = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{gw.url}/ui/interactions", headers=client).status_code == 403
    chat = {"model": exp, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{gw.base_url}/chat/completions", json=chat, headers=bearer)
    assert r.status_code == 401  # a reviewer key is no client key


def test_a_tenant_reviewer_sees_only_its_tenants_interactions_and_failures(
    stack: tuple[GatewayProcess, Path],
) -> None:
    gw, config = stack
    exp = new_experiment(gw)
    ours = chat_and_rate(gw, exp, 2, key=OTHER_TENANT_KEY, prefix="other-tenant")
    theirs = chat_and_rate(gw, exp, 2, key=API_KEY, prefix="tests-tenant")
    assert retrain_build(config, exp).returncode == 4
    bearer = {"Authorization": f"Bearer {TENANT_REVIEWER_KEY}"}
    listing = httpx.get(
        f"{gw.url}/ui/interactions", params={"experiment": exp}, headers=bearer
    ).text
    assert all(rid in listing for rid in ours) and not any(rid in listing for rid in theirs)
    queue = httpx.get(f"{gw.url}/ui/review", headers=bearer).text
    assert all(rid in queue for rid in ours) and not any(rid in queue for rid in theirs)
    assert httpx.get(f"{gw.url}/ui/interactions/{theirs[0]}", headers=bearer).status_code == 404
    assert httpx.get(f"{gw.url}/ui/interactions/{ours[0]}", headers=bearer).status_code == 200


def test_a_reviewer_clears_a_queue_of_fifty_failures_with_the_keyboard_and_the_next_build_uses_them(
    stack: tuple[GatewayProcess, Path], page: Any
) -> None:
    gw, config = stack
    exp = new_experiment(gw, "queue")
    chat_and_rate(gw, exp, 50, prefix="failure")
    first = retrain_build(config, exp)
    assert first.returncode == 4, first.stdout + first.stderr  # nothing to train: all queued
    log_in(page, gw, REVIEWER_KEY)
    assert page.url.endswith("/ui/review")
    page.get_by_label("Experiment").select_option(exp)
    page.get_by_role("button", name="Show").click()
    expect(page.locator("tbody tr")).to_have_count(50)
    page.get_by_role("link", name="Review one at a time").click()

    fixes: dict[str, str] = {}
    dismissed = skipped = None
    for n in range(50):
        prompt = page.locator(".msg.user pre").inner_text()
        assert page.get_by_label("Correction: the answer the model should have given").evaluate(
            "el => el === document.activeElement"
        )  # the text box has the focus
        with page.expect_navigation():
            if n == 0:  # "not a failure": Esc leaves the text box, n dismisses
                page.keyboard.press("Escape")
                page.keyboard.press("n")
                dismissed = prompt
            elif n == 1:
                page.keyboard.press("Escape")
                page.keyboard.press("s")
                skipped = prompt
            else:
                fixes[prompt] = f"Corrected answer {n}: it arrives on Monday."
                page.keyboard.type(fixes[prompt])
                page.keyboard.press("Control+Enter")
    expect(page.locator("#done")).to_be_visible()
    assert "skipped: 1" in page.locator("#done").inner_text()
    assert len(fixes) == 48 and dismissed and skipped

    second = retrain_build(config, exp)
    assert second.returncode == 0, second.stdout + second.stderr
    root = Path(gw.workdir) / "datasets" / exp
    version = root / (root / "latest").read_text().strip()
    train = [json.loads(line) for line in (version / "train.jsonl").read_text().splitlines()]
    got = {ex["messages"][0]["content"]: ex["messages"][-1]["content"] for ex in train}
    assert got == fixes  # exactly the corrections: not the dismissed, not the skipped one
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["by_source"]["train"] == {"review": 48}
    queue = httpx.get(f"{gw.url}/ui/review", headers={"Authorization": f"Bearer {REVIEWER_KEY}"})
    assert skipped.split(":")[0] in queue.text and dismissed.split(":")[0] + ":" not in queue.text
    admin = httpx.Client(base_url=gw.url, headers=ADMIN)
    listing = admin.get("/ui/datasets").text
    assert version.name in listing and "review 48" in listing
    download = admin.get(f"/ui/datasets/{exp}/{version.name}/train.jsonl")
    assert download.status_code == 200
    assert download.content == (version / "train.jsonl").read_bytes()
    assert admin.get(f"/ui/datasets/{exp}/../{exp}/train.jsonl").status_code == 404
    corrected = next(
        r["response_id"]
        for r in map(json.loads, (version / "examples.jsonl").read_text().splitlines())
    )
    detail = admin.get(f"/ui/interactions/{corrected}").text
    assert f"{version.name}: sft (review, train)" in detail
    admin.close()


def test_a_job_shows_its_loss_curve_and_its_lineage_to_the_experiment_arm(
    stack: tuple[GatewayProcess, Path], store: Store, page: Any
) -> None:
    from retrain.jobs import JobStore

    gw, _ = stack
    exp = new_experiment(gw, "lineage")
    jobs = JobStore(store.client(), store.ks)
    job = jobs.create(
        experiment=exp,
        provider="local",
        dataset_id="ds-0123456789ab",
        dataset_path="/data/ds",
        params={},
    )
    gate_row = {
        "source": "test",
        "prompt": "Where is my parcel?",
        "expected": "On its way.",
        "control": {"answer": "No idea."},
        "candidate": {"answer": "On its way."},
        "gain": 0.8,
    }
    jobs.update(
        job["id"],
        status="registered",
        model_name="fixed-b",
        loss=[{"step": s, "loss": 2.0 / s, "eval_loss": None} for s in range(1, 6)],
        evaluation={"outcome": "passed", "reason": "test split: gain 0.8", "rows": [gate_row]},
    )
    jobs.client.close()
    log_in(page, gw, ADMIN_KEY)
    page.get_by_role("link", name="Jobs & models").click()
    chain = page.get_by_role("list", name=f"lineage of {job['id']}")
    assert chain.locator("li").all_inner_texts() == [
        "dataset ds-0123456789ab",
        f"job {job['id']} (registered)",
        "model fixed-b",
        f"arm {exp} @ 10",
        "serving",
    ]
    curve = page.locator("tr", has_text=job["id"]).locator("xpath=following-sibling::tr[1]")
    expect(curve.locator("svg.plot circle")).to_have_count(5)
    curve.get_by_text("Gate: passed").click()
    cells = curve.locator("table.gate tbody td").all_inner_texts()
    assert cells == ["test", "Where is my parcel?", "On its way.", "No idea.", "On its way.", "0.8"]


def listed(gw: GatewayProcess, query: dict[str, str]) -> tuple[list[str], str | None]:
    """The response ids on one page of the list, and the query of the next page."""
    r = httpx.get(f"{gw.url}/ui/interactions", params=query, headers=ADMIN)
    assert r.status_code == 200, r.text
    ids = re.findall(r'href="/ui/interactions/([^"?]+)"', r.text)
    more = re.search(r'href="/ui/interactions\?([^"]+)" rel="next"', r.text)
    return ids, more.group(1).replace("&amp;", "&") if more else None


def test_the_interaction_list_pages_newest_first_and_filters_by_rating_and_text(
    stack: tuple[GatewayProcess, Path],
) -> None:
    gw, _ = stack
    exp = new_experiment(gw, "paging")
    down = chat_and_rate(gw, exp, 3, rating="down", prefix="broken")
    up = chat_and_rate(gw, exp, 4, rating="up", prefix="fine")
    unrated = chat_and_rate(gw, exp, 5, rating=None, prefix="quiet")
    newest_first = list(reversed(down + up + unrated))

    seen, query = [], {"experiment": exp}
    for _ in range(5):
        ids, more = listed(gw, query)
        seen += ids
        if more is None:
            break
        query = dict(parse_qsl(more))
    assert seen == newest_first  # 5 + 5 + 2, in order, none twice, then no "Older"
    assert listed(gw, {"experiment": exp, "rating": "down"})[0] == list(reversed(down))
    assert listed(gw, {"experiment": exp, "rating": "none"})[0] == list(reversed(unrated))
    assert listed(gw, {"experiment": exp, "q": "FINE 2"})[0] == [up[2]]
    assert listed(gw, {"experiment": exp, "q": "nothing like this"})[0] == []


@pytest.mark.slow
def test_the_console_and_retrain_review_export_and_import_share_one_queue(
    stack: tuple[GatewayProcess, Path], tmp_path: Path
) -> None:
    gw, config = stack
    exp = new_experiment(gw, "shared")
    ids = chat_and_rate(gw, exp, 3, prefix="shared")
    assert retrain_build(config, exp).returncode == 4
    bearer = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    r = httpx.post(
        f"{gw.url}/ui/review/save",
        headers=bearer,
        data={"experiment": exp, "id": ids[0], "action": "dismiss"},
    )
    assert r.status_code == 303

    out = tmp_path / "queue.jsonl"
    review = [sys.executable, "-m", "retrain", "review"]
    run = subprocess.run(
        [*review, "export", "--experiment", exp, "--out", str(out), "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["response_id"] for r in rows) == sorted(ids[1:])  # not the dismissed one
    for row in rows:
        row["correction"] = "Fixed by file." if row["response_id"] == ids[1] else None
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = subprocess.run(
        [*review, "import", "--experiment", exp, str(out), "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr

    queue = httpx.get(f"{gw.url}/ui/review", params={"experiment": exp}, headers=bearer).text
    assert ids[2] in queue and ids[1] not in queue and ids[0] not in queue
    bad = httpx.post(
        f"{gw.url}/ui/review/save",
        headers=bearer,
        data={"experiment": exp, "id": ids[2], "action": "save", "correction": "   "},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "correction"

    assert retrain_build(config, exp).returncode == 0  # the imported correction: version 1
    r = httpx.post(
        f"{gw.url}/ui/review/save",
        headers=bearer,
        data={
            "experiment": exp,
            "id": ids[2],
            "action": "save",
            "correction": "Fixed in the console.",
        },
    )
    assert r.status_code == 303
    assert retrain_build(config, exp).returncode == 0  # and the console's: version 2
    listing = httpx.get(f"{gw.url}/ui/datasets", headers=ADMIN).text
    assert "against the parent: preference +1, train +1" in listing
