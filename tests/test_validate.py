"""`worktask validate`: every planted defect is found in the right category; --fix repairs the fixable."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import cli_json, run_job
from tasks.validate import find_cycles
from worker import commands
from worker.connections import aws_client, pg_connect
from worker.dynamo import to_item


def found(report: dict[str, Any], category: str, table: str, key: str | None = None) -> list[dict[str, Any]]:
    return [i for i in report["issues"] if i["category"] == category and i["table"] == table
            and (key is None or i["key"] == key)]


@pytest.fixture()
def planted(migrated: Any) -> Any:
    """Test data plus one of each defect the validation must find."""
    assert run_job(migrated, lambda: commands.testdata(migrated, "generate", 20, 3, True))["ok"]
    table = migrated.dynamo_table_name
    with pg_connect(migrated, autocommit=True) as pg:
        tasks = [r[0] for r in pg.execute("select id from work_tasks where is_test order by id")]
        t_done, t_cycle, t_dup = tasks[0], tasks[1], tasks[2]
        pg.execute("alter table todo_items disable trigger all")  # the foreign key, as a bulk load might
        orphan = pg.execute("insert into todo_items (work_task_id, title, is_test) values (987654321, 'orphan', true) "
                            "returning id").fetchone()[0]
        pg.execute("alter table todo_items enable trigger all")
        a, b, c = [r[0] for r in pg.execute("select id from todo_items where work_task_id = %s order by id limit 3",
                                            (t_cycle,))]
        pg.execute("delete from todo_dependencies where todo_id in (%s, %s, %s)", (a, b, c))
        pg.execute("insert into todo_dependencies values (%s, %s), (%s, %s), (%s, %s)", (b, a, c, b, a, c))
        pg.execute("update work_tasks set status = 'completed', completed_at = created_at + interval '1 day' "
                   "where id = %s", (t_done,))
        pg.execute("update todo_items set status = 'pending' where work_task_id = %s", (t_done,))
        dup = pg.execute("""insert into todo_items (work_task_id, title, position, is_test)
                            select work_task_id, title, position, true from todo_items where work_task_id = %s
                            order by id limit 1 returning id""", (t_dup,)).fetchone()[0]
    dynamo = aws_client(migrated, "dynamodb")
    dynamo.put_item(TableName=table, Item=to_item({"PK": "RULE#bad_scope", "SK": "CONFIG", "type": "rule",
                                                   "key": "bad_scope", "name": "Bad", "description": "",
                                                   "scope": "galaxy", "condition": "true", "action": "warn",
                                                   "severity": "info", "enabled": True}))
    dynamo.put_item(TableName=table, Item=to_item({"PK": "TASK#987654321", "SK": "ANALYSIS", "type": "analysis",
                                                   "work_task_id": 987654321, "complexity": 3, "risk": "low",
                                                   "summary": "dangling", "estimated_hours": 1.0, "is_test": True}))
    yield {"orphan": orphan, "cycle": (a, b, c), "done": t_done, "dup": dup}
    dynamo.delete_item(TableName=table, Key=to_item({"PK": "RULE#bad_scope", "SK": "CONFIG"}))
    assert run_job(migrated, lambda: commands.testdata(migrated, "cleanup"))["ok"]


def test_every_planted_defect_is_found_and_fix_repairs_the_fixable(planted: dict[str, Any], migrated: Any) -> None:
    table = migrated.dynamo_table_name
    code, report = cli_json("validate", timeout=300)
    assert code == 1 and not report["ok"]
    assert found(report, "referential", "todo_items", str(planted["orphan"]))[0]["fixable"]
    cycle = found(report, "referential", "todo_dependencies")
    assert len(cycle) == 1 and "cycle" in cycle[0]["message"]
    assert found(report, "schema", table, "RULE#bad_scope|CONFIG")[0]["severity"] == "error"
    assert not found(report, "schema", table, "RULE#bad_scope|CONFIG")[0]["fixable"]
    assert found(report, "consistency", "todo_items", str(planted["dup"]))
    assert found(report, "referential", table, "TASK#987654321|ANALYSIS")[0]["fixable"]
    assert found(report, "consistency", "work_tasks", str(planted["done"]))[0]["severity"] == "error"
    assert report["by_category"]["referential"] >= 3 and report["records_checked"] > 0
    assert set(report["by_table"]) >= {"todo_items", "todo_dependencies", table, "work_tasks"}

    code, fixed = cli_json("validate", "--fix", timeout=300, env={"FIX_MIN_AGE_MINUTES": "0"})  # planted just now
    assert code == 1  # the bad enum cannot be fixed: an error remains
    assert {(i["table"], i["key"]) for i in fixed["issues"] if i["fixed"]} >= {
        ("todo_items", str(planted["orphan"])), ("work_tasks", str(planted["done"])),
        ("todo_items", str(planted["dup"])), (table, "TASK#987654321|ANALYSIS")}
    with pg_connect(migrated) as pg:
        edges = [tuple(r) for r in pg.execute("select todo_id, depends_on_todo_id from todo_dependencies")]
        assert find_cycles(edges) == []
        assert pg.execute("select status from work_tasks where id = %s",
                          (planted["done"],)).fetchone()[0] == "in_progress"
    aws_client(migrated, "dynamodb").delete_item(TableName=table, Key=to_item({"PK": "RULE#bad_scope", "SK": "CONFIG"}))
    code, clean = cli_json("validate", timeout=300)
    assert code == 0 and clean["ok"], [i for i in clean["issues"] if i["severity"] == "error"]
    code, health = cli_json("health")
    assert next(c for c in health["checks"] if c["name"] == "validation")["ok"]


def test_find_cycles_names_each_cycle() -> None:
    assert find_cycles([(1, 2), (2, 3)]) == []
    assert find_cycles([(1, 2), (2, 3), (3, 1)]) == [[(1, 2), (2, 3), (3, 1)]]
