"""Seeding on real PostgreSQL, moto's DynamoDB and real workers: idempotent, conflicts, modes, dry run."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conftest import cli_json
from tasks.seed import DYNAMO_SETS, DYNAMO_SK, PG_SETS, load
from worker.connections import aws_client
from worker.dynamo import from_item, to_item

COUNTS = {"quality_standards": 5, "artifact_types": 8, "workgroup_skills": 10}


def sets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["sets"]}


def dynamo_item(settings: Any, prefix: str, key: str) -> dict[str, Any] | None:
    got = aws_client(settings, "dynamodb").get_item(
        TableName=settings.dynamo_table_name, Key=to_item({"PK": f"{prefix}#{key}", "SK": DYNAMO_SK})).get("Item")
    return from_item(got) if got else None


def test_seed_files_are_complete_and_consistent() -> None:
    standards = {s["key"]: s for s in load("quality_standards")}
    assert set(standards) == {"code", "documentation", "design", "infrastructure", "testing"}
    for s in standards.values():
        assert abs(sum(c["weight"] for c in s["criteria"]) - 1.0) < 1e-9 and 0 <= s["threshold"] <= 100
    types = {t["key"]: t for t in load("artifact_types")}
    assert len(types) == 8 and all(t["standard"] in standards and t["extensions"] for t in types.values())
    groups = load("workgroup_skills")
    assert len(groups) == 10 and all(set(g["artifact_types"]) <= set(types) and g["skills"] for g in groups)
    personas, rules, templates = ({x["key"] for x in load(n)} for n in ("personas", "rules", "templates"))
    for team in load("teams"):
        assert set(team["personas"]) <= personas and set(team["rules"]) <= rules
        assert set(team["templates"]) <= templates


def test_seed_twice_creates_nothing_the_second_time(migrated: Any, pg: psycopg.Connection) -> None:
    code, report = cli_json("seed")
    assert code == 0 and report["ok"]
    by = sets(report)
    assert list(by) == list(PG_SETS) + list(DYNAMO_SETS)
    assert all(s["created"] == 0 and s["conflicts"] == 0 for s in by.values())
    for table, n in COUNTS.items():
        assert by[table]["unchanged"] == n
        assert pg.execute(psycopg.sql.SQL("select count(*) from {}").format(
            psycopg.sql.Identifier(table))).fetchone()[0] == n
    art = pg.execute("""select q.key from artifact_types a join quality_standards q on q.id = a.standard_id
                        where a.key = 'test_files'""").fetchone()
    assert art == ("testing",)
    assert dynamo_item(migrated, "RULE", load("rules")[0]["key"])["type"] == "rule"


def test_a_hand_edited_row_is_a_conflict_never_overwritten_unless_asked(migrated: Any, pg: psycopg.Connection) -> None:
    pg.execute("update quality_standards set threshold = 11 where key = 'code'")
    code, report = cli_json("seed", "--config-only")
    qs = sets(report)["quality_standards"]
    assert code == 1 and qs["conflicts"] == 1 and qs["conflict_keys"] == ["code"] and "code" in report["error"]
    assert pg.execute("select threshold from quality_standards where key = 'code'").fetchone()[0] == 11

    code, report = cli_json("seed", "--config-only", env={"SKIP_EXISTING": "true"})
    assert code == 0 and sets(report)["quality_standards"]["skipped"] == 5
    assert pg.execute("select threshold from quality_standards where key = 'code'").fetchone()[0] == 11

    code, report = cli_json("seed", "--config-only", "--overwrite")
    assert code == 0 and sets(report)["quality_standards"]["updated"] == 1
    assert pg.execute("select threshold from quality_standards where key = 'code'").fetchone()[0] == \
        next(s["threshold"] for s in load("quality_standards") if s["key"] == "code")


def test_an_edited_dynamodb_item_is_a_conflict(migrated: Any) -> None:
    key = load("personas")[0]["key"]
    item = dynamo_item(migrated, "PERSONA", key)
    aws_client(migrated, "dynamodb").put_item(TableName=migrated.dynamo_table_name,
                                              Item=to_item({**item, "role": "edited by hand"}))
    code, report = cli_json("seed")
    assert code == 1 and sets(report)["personas"]["conflict_keys"] == [key]
    assert dynamo_item(migrated, "PERSONA", key)["role"] == "edited by hand"
    code, report = cli_json("seed", "--overwrite")
    assert code == 0 and dynamo_item(migrated, "PERSONA", key) == item


def test_config_only_seeds_only_the_three_configuration_sets(migrated: Any) -> None:
    code, report = cli_json("seed", "--config-only")
    assert code == 0 and report["config_only"] and list(sets(report)) == list(PG_SETS)


def test_dry_run_reports_what_would_be_created_and_changes_nothing(migrated: Any, pg: psycopg.Connection) -> None:
    client = aws_client(migrated, "dynamodb")
    team = load("teams")[0]["key"]
    pg.execute("delete from artifact_types where key = 'database_schema'")
    client.delete_item(TableName=migrated.dynamo_table_name, Key=to_item({"PK": f"TEAM#{team}", "SK": DYNAMO_SK}))
    code, report = cli_json("seed", "--dry-run")
    assert code == 0 and report["dry_run"]
    assert sets(report)["artifact_types"]["created"] == 1 and sets(report)["teams"]["created"] == 1
    assert pg.execute("select count(*) from artifact_types where key = 'database_schema'").fetchone()[0] == 0
    assert dynamo_item(migrated, "TEAM", team) is None
    code, report = cli_json("seed")
    assert code == 0 and sets(report)["artifact_types"]["created"] == 1
    assert dynamo_item(migrated, "TEAM", team) is not None


def test_overwrite_with_skip_existing_is_refused(migrated: Any) -> None:
    from conftest import run_cli

    proc = run_cli("seed", "--overwrite", "--skip-existing")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


def test_seed_before_migrate_says_to_migrate(settings: Any) -> None:
    from tasks.seed import seed_dynamo
    from worker.errors import JobFailed

    other = settings.model_copy(update={"dynamo_table_name": "no-such-table-seed"})
    with pytest.raises(JobFailed, match="run worktask migrate first"):
        seed_dynamo(other, "rules", "conflict", False)
