"""`worktask maintenance`: backup_cleanup, validate, optimize (VACUUM (ANALYZE) that never waits on a lock), and
backup_validate (the newest complete backup, when it was never validated)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from conftest import cli_json
from test_backup import data  # noqa: F401 - a fixture
from worker.connections import pg_connect


def make_dead(pg: psycopg.Connection, table: str) -> None:
    t = psycopg.sql.Identifier(table)
    pg.execute(psycopg.sql.SQL("create table {} (id int primary key, v text) with (autovacuum_enabled = false)")
               .format(t))
    pg.execute(psycopg.sql.SQL("insert into {} select g, 'x' from generate_series(1, 5000) g").format(t))
    pg.execute(psycopg.sql.SQL("update {} set v = 'y'").format(t))
    pg.execute(psycopg.sql.SQL("delete from {} where id <= 2000").format(t))


def dead(pg: psycopg.Connection, table: str) -> int:
    pg.execute("select pg_stat_clear_snapshot()")
    row = pg.execute("select n_dead_tup from pg_stat_user_tables where relname = %s", (table,)).fetchone()
    return row[0] if row else 0


@pytest.mark.slow
def test_maintenance_vacuums_dead_tuples_and_skips_a_locked_table(migrated: Any, pg: psycopg.Connection) -> None:
    for t in ("maint_dead", "maint_locked"):
        pg.execute(psycopg.sql.SQL("drop table if exists {}").format(psycopg.sql.Identifier(t)))
        make_dead(pg, t)
    deadline = time.monotonic() + 30
    while min(dead(pg, "maint_dead"), dead(pg, "maint_locked")) < 1000 and time.monotonic() < deadline:
        time.sleep(0.5)  # the statistics reach pg_stat a moment after the writing session is idle
    locker = pg_connect(migrated)
    try:
        locker.execute("lock table maint_locked in access exclusive mode")  # held in an open transaction
        began = time.monotonic()
        code, report = cli_json("maintenance", timeout=300)
        assert time.monotonic() - began < 120
    finally:
        locker.rollback()
        locker.close()
    try:
        assert report["kind"] == "maintenance", report
        assert [s["name"] for s in report["steps"]] == ["backup_cleanup", "validate", "optimize", "backup_validate"]
        assert all(s["state"] in ("succeeded", "failed") for s in report["steps"][:3])
        step = {s["name"]: s for s in report["steps"]}
        assert step["optimize"]["state"] == "succeeded" and step["backup_cleanup"]["state"] == "succeeded", report
        assert code == (0 if report["ok"] else 1)
        tables = {t["name"]: t for t in step["optimize"]["report"]["tables"]}
        vac = tables["public.maint_dead"]
        assert vac["action"] == "vacuumed" and "dead" in vac["why"], vac
        assert vac["before"]["n_dead_tup"] >= 1000 and vac["after"]["n_dead_tup"] == 0, vac
        assert vac["before"]["last_vacuum"] is None and vac["after"]["last_vacuum"] and vac["after"]["last_analyze"]
        skipped = tables["public.maint_locked"]
        assert skipped["action"] == "skipped" and "lock" in skipped["reason"] and not skipped["after"].get(
            "last_vacuum"), skipped
    finally:
        for t in ("maint_dead", "maint_locked"):
            pg.execute(psycopg.sql.SQL("drop table if exists {}").format(psycopg.sql.Identifier(t)))


def test_maintenance_dry_run_reports_without_vacuuming(migrated: Any) -> None:
    code, report = cli_json("maintenance", "--dry-run", timeout=300)
    assert report["dry_run"] and [s["name"] for s in report["steps"]] == ["backup_cleanup", "validate", "optimize",
                                                                          "backup_validate"]
    assert {s["name"]: s for s in report["steps"]}["backup_validate"]["state"] == "skipped", report
    opt = {s["name"]: s for s in report["steps"]}["optimize"]["report"]
    assert all(t["action"] == "would vacuum" and not t["after"] for t in opt["tables"])


@pytest.mark.slow
def test_maintenance_validates_the_newest_backup_once_and_health_then_calls_it_validated(data: Any) -> None:  # noqa: F811
    from test_backup import backup
    from worker import backups, markers

    made = backup(data)
    assert made["ok"], made
    code, report = cli_json("maintenance", timeout=300)
    step = {s["name"]: s for s in report["steps"]}["backup_validate"]
    assert step["state"] == "succeeded" and step["report"]["backup_id"] == made["backup_id"], step
    opts = backups.store_options(data)
    marker = markers.read(backups.store_for(data, opts), opts, made["backup_id"], markers.VALIDATED)
    assert marker and marker["ok"], marker
    code, health = cli_json("health", timeout=120)
    detail = {c["name"]: c for c in health["checks"]}["backups"]["detail"]
    assert made["backup_id"] in detail and "never validated" not in detail.lower(), detail
    code, again = cli_json("maintenance", "--dry-run", timeout=300)
    step = {s["name"]: s for s in again["steps"]}["backup_validate"]
    assert step["state"] == "skipped" and "validated already" in step["report"]["reason"], step
