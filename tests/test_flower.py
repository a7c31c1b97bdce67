"""Flower in a real headless browser: after a backup, its tasks page lists the backup's chunk tasks as succeeded,
under readable names with small arguments, and no task of the job carries a secret in its args, kwargs or result.

The browser is Debian's `chromium` (`.ci/run` installs it when missing), driven by playwright's Python package
through `executable_path`: nothing is downloaded at run time (no `playwright install`). Without a browser or
without playwright the test skips and says why. WORKTASK_TEST_CHROMIUM names the browser to use; set it to an
empty string to run as if there were none (the skip path). The screenshot goes to
`test-artifacts/flower-tasks.png` under the repository root (a folder that ignores itself in git), or under
WORKTASK_TEST_ARTIFACTS when that is set; the test prints where.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import ROOT
from test_backup import backup, data  # noqa: F401 - `data` is a fixture
from worker.constants import TASK_BACKUP_DUMP_PG
from worker.stack import Stack

TIMEOUT_MS = 30_000


def find_browser() -> tuple[str | None, str]:
    """The browser's path, or None and why there is none."""
    named = os.environ.get("WORKTASK_TEST_CHROMIUM")
    if named is not None:
        path = shutil.which(named) if named else None
        return path, f"WORKTASK_TEST_CHROMIUM={named!r} names no executable browser"
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    return path, ("no chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it when apt "
                  "is there)")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Set up before the stack and the backup: a machine without a browser skips at once."""
    path, why = find_browser()
    if not path:
        pytest.skip(f"Flower browser test skipped: {why}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"Flower browser test skipped: playwright is not importable ({exc}); "
                    "pip install -e '.[dev]'")
    return path


def flower_of(settings: Any) -> tuple[str, str, str]:
    """Flower's URL from <state>/stack.json and its basic-auth user and password (FLOWER_BASIC_AUTH, else the
    generated <state>/flower-auth)."""
    stack = Stack(settings)
    url = next(s for s in stack.read()["services"] if s["name"] == "flower")["url"]
    if settings.flower_basic_auth:
        auth = settings.flower_basic_auth.get_secret_value()
    else:
        auth = (stack.dir / "flower-auth").read_text().strip()
    user, password = auth.split(":", 1)
    return url, user, password


def artefact_dir() -> Path:
    where = Path(os.environ.get("WORKTASK_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    ignore = where / ".gitignore"
    if where.resolve().is_relative_to(ROOT) and not ignore.exists():
        ignore.write_text("*\n")  # screenshots are artefacts, never committed
    return where


def search(page: Any, query: str) -> tuple[list[dict[str, Any]], str]:
    """Type a query into the tasks page's search box and wait for the AJAX answer (/tasks/datatable): the
    rows the table holds and its info line (`Showing 1 to n of N tasks`)."""
    def asked(response: Any) -> bool:
        form = parse_qs(response.request.post_data or "") or parse_qs(urlsplit(response.url).query)
        return "/tasks/datatable" in response.url and form.get("search[value]") == [query]

    with page.expect_response(asked, timeout=TIMEOUT_MS) as answer:
        page.fill("#tasks-table_wrapper input[type=search]", query)
    assert answer.value.ok, answer.value.status
    page.wait_for_function("() => !document.querySelector('#tasks-table_processing') || "
                           "getComputedStyle(document.querySelector('#tasks-table_processing')).display == 'none'",
                           timeout=TIMEOUT_MS)
    rows = page.evaluate("() => $('#tasks-table').DataTable().rows().data().toArray()")
    return rows, page.inner_text("#tasks-table_info")


@pytest.mark.slow
def test_flower_tasks_page_shows_the_backups_chunk_tasks_succeeded(chromium: str, data: Any) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    report = backup(data)
    assert report["ok"], report
    job_id = report["job_id"]
    chunks = sum(t["chunks"] for t in report["tables"] if t["name"] != data.dynamo_table_name)
    assert chunks >= 3, report["tables"]
    url, user, password = flower_of(data)
    secret_values = [v for v in (os.environ.get("BACKUP_ENCRYPTION_KEY"), password,
                                 os.environ.get("POSTGRES_PASSWORD"), os.environ.get("AWS_SECRET_ACCESS_KEY"))
                     if v and v != "testing"]  # moto's placeholder AWS key is no secret
    shot = artefact_dir() / "flower-tasks.png"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(http_credentials={"username": user, "password": password},
                                          viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url + "/tasks")
            page.wait_for_selector("#tasks-table tbody tr")
            page.select_option("#tasks-table_length select", "100")

            # Every task of the job (its id is in each task's kwargs): readable names, small arguments, no secret.
            every, _ = search(page, f"kwargs:{job_id}")
            names = {r["name"] for r in every}
            assert TASK_BACKUP_DUMP_PG in names and all(n and n.startswith("worktask.") for n in names), names
            for r in every:
                shown = " ".join(str(r.get(k) or "") for k in ("args", "kwargs", "result"))
                # a chord's callback (finalize) gets the chunks' reports as args: Celery cuts the repr at 1024
                small = 300 if r["name"] == TASK_BACKUP_DUMP_PG else 1100
                assert len(str(r.get("args"))) < small and len(str(r.get("kwargs"))) < small, r
                assert not [s for s in secret_values if s in shown], f"a secret in {r['name']} {r['uuid']}"

            # The chunk tasks, then those of them that succeeded: the same ones, one per chunk of the report.
            mine, info = search(page, f"name:{TASK_BACKUP_DUMP_PG} kwargs:{job_id}")
            done, done_info = search(page, f"name:{TASK_BACKUP_DUMP_PG} kwargs:{job_id} state:SUCCESS")
            assert len(mine) == len(done) == chunks, (info, done_info, chunks)
            assert {r["uuid"] for r in mine} == {r["uuid"] for r in done}
            assert all(r["state"] == "SUCCESS" and job_id in str(r["kwargs"]) for r in done)
            page.wait_for_selector(f"#tasks-table tbody tr:has-text('{TASK_BACKUP_DUMP_PG}')")
            text = page.inner_text("#tasks-table tbody")
            assert text.count(TASK_BACKUP_DUMP_PG) == chunks and text.count("SUCCESS") >= chunks, text[:2000]
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"\nFlower tasks page screenshot: {shot}")
    assert shot.stat().st_size > 0
