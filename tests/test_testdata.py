"""Test data on real services and workers: realistic, reproducible, valid, and removed exactly."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from conftest import cli_json, run_job
from tasks.validate import find_cycles
from worker import backups, commands
from worker.connections import aws_client, pg_connect
from worker.dynamo import from_item, to_item


def content(settings: Any) -> list[Any]:
    """The generated data without its ids: what the same seed must give again."""
    with pg_connect(settings) as pg:
        return pg.execute("""
            select t.title, t.description, t.priority, t.status, t.created_at, t.completed_at,
                   (select json_agg(json_build_array(i.title, i.status, i.position,
                           (select json_agg(d.position order by d.position) from todo_dependencies x
                            join todo_items d on d.id = x.depends_on_todo_id where x.todo_id = i.id))
                           order by i.position) from todo_items i where i.work_task_id = t.id),
                   (select json_agg(json_build_array(d.name, d.status, q.score, q.passed) order by d.id)
                    from deliverables d join quality_checks q on q.deliverable_id = d.id where d.work_task_id = t.id)
            from work_tasks t where t.is_test order by t.id""").fetchall()


def everything_else(settings: Any) -> str:
    """A hash of all rows that are not test data, of the DynamoDB items and of the files."""
    h = hashlib.sha256()
    with pg_connect(settings) as pg:
        for table in ("quality_standards", "artifact_types", "workgroup_skills", "services", "dependencies"):
            h.update(repr(pg.execute(f"select t::text from {table} t order by 1").fetchall()).encode())
        for table in ("work_tasks", "todo_items", "deliverables"):
            h.update(repr(
                pg.execute(f"select t::text from {table} t where not is_test order by 1").fetchall()).encode())
        h.update(repr(pg.execute("""select q::text from quality_checks q join deliverables d on d.id = q.deliverable_id
                                    where not d.is_test order by 1""").fetchall()).encode())
    items = aws_client(settings, "dynamodb").scan(TableName=settings.dynamo_table_name, ConsistentRead=True)["Items"]
    h.update("\n".join(sorted(json.dumps(i, sort_keys=True) for i in items)).encode())
    store = backups.store_for(settings, backups.store_options(settings))
    h.update(repr(sorted((o.key, o.size) for o in store.list(""))).encode())
    return h.hexdigest()


def generate(settings: Any, count: int, seed: int | None = None, no_files: bool = False) -> dict[str, Any]:
    return run_job(settings, lambda: commands.testdata(settings, "generate", count, seed, no_files), 300)


@pytest.fixture()
def clean(migrated: Any) -> Any:
    assert run_job(migrated, lambda: commands.testdata(migrated, "cleanup"))["ok"]
    return migrated


def test_generate_makes_consistent_tasks_that_validate_with_zero_errors(clean: Any) -> None:
    code, report = cli_json("testdata", "generate", "40", "--seed", "5", timeout=300)
    assert code == 0 and report["tasks"] == 40 and report["analysis_items"] == 40
    assert report["files"] == report["deliverables"] and 40 <= report["deliverables"] <= 120
    with pg_connect(clean) as pg:
        per_task = pg.execute("""select count(*) from todo_items where is_test group by work_task_id""").fetchall()
        assert len(per_task) == 40 and all(3 <= n <= 7 for (n,) in per_task)
        edges = pg.execute("""select x.todo_id, x.depends_on_todo_id from todo_dependencies x
                              join todo_items i on i.id = x.todo_id where i.is_test""").fetchall()
        assert edges and find_cycles([tuple(e) for e in edges]) == []
        assert pg.execute("""select count(*) from work_tasks t where t.is_test and t.status = 'completed'
                             and exists (select 1 from todo_items i where i.work_task_id = t.id and i.status <> 'done')
                          """).fetchone()[0] == 0
        wrong_standard = pg.execute("""select count(*) from quality_checks q
                                       join deliverables d on d.id = q.deliverable_id
                                       join artifact_types a on a.id = d.artifact_type_id
                                       where d.is_test and q.standard_id <> a.standard_id""").fetchone()[0]
        assert wrong_standard == 0
        task_id = pg.execute("select min(id) from work_tasks where is_test").fetchone()[0]
    item = from_item(aws_client(clean, "dynamodb").get_item(
        TableName=clean.dynamo_table_name, Key=to_item({"PK": f"TASK#{task_id}", "SK": "ANALYSIS"}))["Item"])
    assert item["is_test"] is True and item["work_task_id"] == task_id
    code, checked = cli_json("validate", timeout=300)
    assert code == 0 and checked["by_severity"].get("error", 0) == 0, [i for i in checked["issues"]
                                                                       if i["severity"] == "error"][:5]


def test_the_same_seed_gives_the_same_data(clean: Any) -> None:
    generate(clean, 25, seed=42, no_files=True)
    first = content(clean)
    assert run_job(clean, lambda: commands.testdata(clean, "cleanup"))["ok"]
    generate(clean, 25, seed=42, no_files=True)
    assert content(clean) == first and len(first) == 25
    generate(clean, 25, seed=43, no_files=True)
    assert content(clean)[25:] != first


def test_cleanup_removes_exactly_the_test_data(clean: Any) -> None:
    with pg_connect(clean, autocommit=True) as pg:
        real = pg.execute("insert into work_tasks (title) values ('a real task') returning id").fetchone()[0]
        pg.execute("insert into todo_items (work_task_id, title) values (%s, 'a real todo')", (real,))
    store = backups.store_for(clean, backups.store_options(clean))
    store.put("real-files/keep.txt", b"keep me")
    before = everything_else(clean)
    generate(clean, 30, seed=9)
    code, report = cli_json("testdata", "cleanup")
    assert code == 0 and report["tasks"] == 30 and report["analysis_items"] == 30 and report["files"] > 0
    assert everything_else(clean) == before
    with pg_connect(clean) as pg:
        assert pg.execute("select count(*) from work_tasks where is_test").fetchone()[0] == 0
        assert pg.execute("select count(*) from todo_items where is_test").fetchone()[0] == 0
    assert list(store.list("test-data/")) == []


def test_no_dynamodb_gives_the_same_rows_and_no_items(clean: Any) -> None:
    generate(clean, 25, seed=42, no_files=True)
    with_items = content(clean)
    assert run_job(clean, lambda: commands.testdata(clean, "cleanup"))["ok"]
    code, report = cli_json("testdata", "generate", "25", "--seed", "42", "--no-files", "--no-dynamodb", timeout=300)
    assert code == 0 and report["tasks"] == 25 and report["analysis_items"] == 0 and report["files"] == 0
    assert content(clean) == with_items
    items = aws_client(clean, "dynamodb").scan(TableName=clean.dynamo_table_name, ConsistentRead=True,
                                               FilterExpression="is_test = :t",
                                               ExpressionAttributeValues={":t": {"BOOL": True}})["Items"]
    assert items == []
