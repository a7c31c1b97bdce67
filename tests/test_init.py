"""`worktask init`: a pipeline of jobs (migrate, seed, testdata, validate, backup) on real workers."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conftest import cli_json, run_cli

TABLES = ("quality_standards", "artifact_types", "workgroup_skills", "work_tasks", "todo_items", "deliverables",
          "quality_checks")
STEPS = ["migrate", "seed", "testdata", "validate", "backup"]


def counts(pg: psycopg.Connection) -> dict[str, int]:
    return {t: pg.execute(psycopg.sql.SQL("select count(*) from {}").format(psycopg.sql.Identifier(t))).fetchone()[0]
            for t in TABLES}


def states(report: dict[str, Any]) -> dict[str, str]:
    assert [s["name"] for s in report["steps"]] == STEPS, report
    return {s["name"]: s["state"] for s in report["steps"]}


@pytest.mark.slow
def test_init_runs_its_steps_and_a_second_run_creates_nothing(migrated: Any, pg: psycopg.Connection) -> None:
    assert run_cli("testdata", "cleanup").returncode == 0
    env = {"GENERATE_TEST_DATA": "true", "SKIP_BACKUP": "true", "TEST_DATA_COUNT": "5"}
    code, report = cli_json("init", env=env, timeout=300)
    assert code == 0 and report["ok"] and report["kind"] == "init", report
    assert states(report) == {"migrate": "succeeded", "seed": "succeeded", "testdata": "succeeded",
                              "validate": "succeeded", "backup": "skipped"}
    step = {s["name"]: s for s in report["steps"]}
    assert step["testdata"]["report"]["tasks"] == 5
    assert "SKIP_BACKUP" in step["backup"]["report"]["reason"]
    assert step["seed"]["report"]["kind"] == "seed" and step["seed"]["job_id"]

    before = counts(pg)
    code, again = cli_json("init", env=env, timeout=300)
    assert code == 0 and again["ok"], again
    assert states(again)["testdata"] == "skipped"
    assert "exists already" in {s["name"]: s for s in again["steps"]}["testdata"]["report"]["reason"]
    assert all(s["created"] == 0 for s in {s["name"]: s for s in again["steps"]}["seed"]["report"]["sets"])
    assert counts(pg) == before


@pytest.mark.slow
def test_a_failing_step_stops_the_pipeline_and_names_it(migrated: Any, pg: psycopg.Connection) -> None:
    # a quality standard without criteria: validate finds an error, so its step fails (harmless, removed after)
    pg.execute("insert into quality_standards (key, name, description, criteria, threshold) "
               "values ('init_test_broken', 'broken', '', '[]', 50)")
    try:
        code, report = cli_json("init", env={"SKIP_BACKUP": "false"}, timeout=300)
    finally:
        pg.execute("delete from quality_standards where key = 'init_test_broken'")
    assert code == 1 and not report["ok"] and report["state"] == "failed", report
    assert states(report) == {"migrate": "succeeded", "seed": "succeeded", "testdata": "skipped",
                              "validate": "failed", "backup": "skipped"}
    assert report["error"].startswith("step validate failed"), report["error"]
    backup = {s["name"]: s for s in report["steps"]}["backup"]
    assert backup["job_id"] is None and "not run: step validate failed" in backup["report"]["reason"]


def test_dry_run_changes_nothing(migrated: Any, pg: psycopg.Connection) -> None:
    before = counts(pg)
    head = cli_json("migrate", "status")[1]["current"]
    code, backups_before = cli_json("backup", "list")
    code, report = cli_json("init", env={"DRY_RUN": "true", "GENERATE_TEST_DATA": "true"}, timeout=300)
    assert code == 0 and report["dry_run"], report
    assert states(report) == {"migrate": "succeeded", "seed": "succeeded", "testdata": "skipped",
                              "validate": "succeeded", "backup": "skipped"}
    step = {s["name"]: s for s in report["steps"]}
    assert step["migrate"]["report"]["dry_run"] and step["seed"]["report"]["dry_run"]
    assert not step["validate"]["report"]["fix"]  # validate without --fix only reads
    assert counts(pg) == before
    assert cli_json("migrate", "status")[1]["current"] == head
    assert cli_json("backup", "list")[1] == backups_before
