"""`worktask validate undo JOB_ID`: what a fix quarantined goes back byte for byte; a row that moved on since
refuses the undo (exit 2, named, nothing changed).

The quarantine documents are made here the way a fix makes them (the lead's end-to-end test runs a real
`validate --fix`): the session settings pinned, the rows read as `t::text`, quarantine.write with the
transaction's xid inside the fixing transaction, then the delete or update, then the commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import cli_json, data_hashes, run_cli, run_job
from worker import commands, jobs, quarantine, rowhash
from worker.connections import aws_client, check_redis, pg_connect
from worker.dynamo import to_export
from worker.restore_target import LIVE_LOCK

pytestmark = pytest.mark.slow  # run once (local services): the fixes do not depend on the services' path

TABLES = ("work_tasks", "todo_items", "todo_dependencies", "deliverables")


def hashes(settings: Any) -> dict[str, Any]:
    return data_hashes(settings, TABLES)


def pin(conn: Any) -> None:
    for name, value in rowhash.SESSION_SETTINGS.items():
        conn.execute("select set_config(%s, %s, false)", (name, value))


def rows(conn: Any, table: str, where: str, params: tuple, keys: tuple[str, ...] = ("id",)) -> list[dict[str, Any]]:
    """[{key, before}] of the rows the condition selects (t::text, the key's columns as text)."""
    cols = ", ".join(f"t.{k}::text" for k in keys)
    found = conn.execute(f"select t::text, {cols} from {table} t where {where} order by 2", params).fetchall()
    return [{"key": dict(zip(keys, r[1:], strict=True)), "before": r[0]} for r in found]


def change(kind: str, table: str, action: str, found: list[dict[str, Any]], keys: tuple[str, ...] = ("id",),
           ) -> dict[str, Any]:
    return {"kind": kind, "store": "postgres", "table": table, "action": action, "key_columns": list(keys),
            "rows": found}


def fix_delete_todo(settings: Any, job_id: str, todo: int, commit: bool = True, hold: bool = False,
                    kind: str = "duplicate_todos") -> Any:
    """What duplicate_todos does to a todo: deleted with its dependency edges (cascade), its deliverables' todo_id
    set null (cascade), all quarantined before the commit. With hold, the open connection (not committed)."""
    conn = pg_connect(settings)
    pin(conn)
    xid = conn.execute("select pg_current_xact_id()::text").fetchone()[0]
    todo_rows = rows(conn, "todo_items", "id = %s", (todo,))
    edge_keys = ("todo_id", "depends_on_todo_id")
    edges = rows(conn, "todo_dependencies", "todo_id = %s or depends_on_todo_id = %s", (todo, todo), edge_keys)
    delivs = rows(conn, "deliverables", "todo_id = %s", (todo,))
    conn.execute("delete from todo_items where id = %s", (todo,))
    for d in delivs:
        d["after"] = conn.execute("select t::text from deliverables t where id = %s", (d["key"]["id"],)).fetchone()[0]
    changes = [change(kind, "todo_items", "delete", todo_rows)]
    if edges:
        changes.append(change(kind, "todo_dependencies", "delete", edges, edge_keys))
    if delivs:
        changes.append(change(kind, "deliverables", "update", delivs))
    quarantine.write(settings, quarantine.store_settings(settings), job_id, f"todos-{todo}", changes, xid)
    if hold:
        return conn
    conn.commit() if commit else conn.rollback()
    conn.close()
    return None


def fix_update(settings: Any, job_id: str, kind: str, table: str, row_id: int, assignments: str) -> None:
    """What task_status / deliverable_status do: one row's values rewritten, quarantined before the commit."""
    with pg_connect(settings) as conn:
        pin(conn)
        xid = conn.execute("select pg_current_xact_id()::text").fetchone()[0]
        found = rows(conn, table, "id = %s", (row_id,))
        conn.execute(f"update {table} set {assignments} where id = %s", (row_id,))
        found[0]["after"] = conn.execute(f"select t::text from {table} t where id = %s", (row_id,)).fetchone()[0]
        quarantine.write(settings, quarantine.store_settings(settings), job_id, f"{kind}-{row_id}",
                         [change(kind, table, "update", found)], xid)


def fix_reopen_task(settings: Any, job_id: str, task: int) -> None:
    fix_update(settings, job_id, "task_status", "work_tasks", task,
               "status = 'in_progress', completed_at = null, updated_at = now()")


def fix_delete_edge(settings: Any, job_id: str, edge: tuple[int, int]) -> None:
    """What cycles does: one dependency edge deleted, quarantined before the commit."""
    keys = ("todo_id", "depends_on_todo_id")
    with pg_connect(settings) as conn:
        pin(conn)
        xid = conn.execute("select pg_current_xact_id()::text").fetchone()[0]
        found = rows(conn, "todo_dependencies", "todo_id = %s and depends_on_todo_id = %s", edge, keys)
        conn.execute("delete from todo_dependencies where todo_id = %s and depends_on_todo_id = %s", edge)
        quarantine.write(settings, quarantine.store_settings(settings), job_id, f"cycles-{edge[0]}",
                         [change("cycles", "todo_dependencies", "delete", found, keys)], xid)


def fix_delete_item(settings: Any, job_id: str, task: int) -> None:
    """What dynamo_orphans does: the TASK# item deleted, quarantined first (no PostgreSQL transaction: no xid)."""
    client, table = aws_client(settings, "dynamodb"), settings.dynamo_table_name
    key = {"PK": {"S": f"TASK#{task}"}, "SK": {"S": "ANALYSIS"}}
    item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    quarantine.write(settings, quarantine.store_settings(settings), job_id, "dynamo-0",
                     [{"kind": "dynamo_orphans", "store": "dynamodb", "table": table, "action": "delete",
                       "rows": [{"key": key, "before": to_export(item)}]}], None)
    client.delete_item(TableName=table, Key=key)


@pytest.fixture()
def data(migrated: Any) -> Iterator[dict[str, Any]]:
    """Test data; a todo with dependency edges both ways and a deliverable pointing at it."""
    with pg_connect(migrated, autocommit=True) as pg:
        old = [r[0] for r in pg.execute("select id from work_tasks where is_test")]
    assert run_job(migrated, lambda: commands.testdata(migrated, "generate", 6, 11, True))["ok"]
    with pg_connect(migrated, autocommit=True) as pg:  # this generation's tasks only (each has its analysis item)
        tasks = [r[0] for r in pg.execute("select id from work_tasks where is_test and id <> all(%s) order by id",
                                          (old,))]
        todo = pg.execute("""select d.todo_id from todo_dependencies d join todo_items i on i.id = d.todo_id
                             join work_tasks w on w.id = i.work_task_id
                             where w.id = any(%s)
                               and exists (select from deliverables v where v.work_task_id = w.id)
                               and exists (select from todo_dependencies e where e.depends_on_todo_id = d.todo_id)
                             order by 1 limit 1""", (tasks,)).fetchone()[0]  # of this test data (a restore may leave
        task_of = pg.execute("select work_task_id from todo_items where id = %s", (todo,)).fetchone()[0]  # others)
        pg.execute("update deliverables set todo_id = %s where id = (select min(id) from deliverables "
                   "where work_task_id = %s)", (todo, task_of))
        others = [r[0] for r in pg.execute("select i.id from todo_items i join work_tasks w on w.id = i.work_task_id "
                                           "where w.id = any(%s) and i.work_task_id <> %s order by i.id",
                                           (tasks, task_of))]
    yield {"tasks": tasks, "todo": todo, "task_of_todo": task_of, "others": others}
    assert run_job(migrated, lambda: commands.testdata(migrated, "cleanup"))["ok"]


def undo(*args: str) -> tuple[int, dict[str, Any]]:
    return cli_json("validate", "undo", *args)


def tally(report: dict[str, Any], table: str) -> tuple[int, int, int]:
    t = next(t for t in report["tables"] if t["table"] == table)
    return t["restored"], t["already"], t["conflicts"]


def test_undo_puts_back_every_table_byte_for_byte(migrated: Any, data: dict[str, Any]) -> None:
    before = hashes(migrated)
    job_id = jobs.new_job_id("validate")
    fix_delete_todo(migrated, job_id, data["todo"])
    fix_reopen_task(migrated, job_id, data["tasks"][3])
    fix_delete_item(migrated, job_id, data["tasks"][4])
    fixed = hashes(migrated)
    assert all(fixed[t] != before[t] for t in before), "every table changed by the fixes"

    code, plan = undo(job_id, "--dry-run")
    assert code == 0 and plan["ok"] and plan["dry_run"] and len(plan["objects"]) == 3
    assert hashes(migrated) == fixed  # a dry run changes nothing
    edges = len([r for r in plan["tables"] if r["table"] == "todo_dependencies"])
    assert edges == 1 and tally(plan, "todo_dependencies")[0] >= 2  # the edges both ways
    assert tally(plan, "todo_items") == (1, 0, 0) and tally(plan, "deliverables") == (1, 0, 0)
    assert tally(plan, "work_tasks") == (1, 0, 0) and tally(plan, migrated.dynamo_table_name) == (1, 0, 0)

    code, done = undo(job_id)
    assert code == 0 and done["ok"] and not done["conflicts"], done
    assert hashes(migrated) == before  # every table and the DynamoDB table as before the fixes
    assert [(t["restored"], t["conflicts"]) for t in done["tables"]] == [(t["restored"], 0) for t in plan["tables"]]

    code, again = undo(job_id)
    assert code == 0 and again["ok"]
    assert all(t["restored"] == 0 and t["already"] > 0 for t in again["tables"]), again  # everything already there
    assert hashes(migrated) == before
    proc = run_cli("validate", "undo", job_id)  # the human output: a table per store and table
    assert proc.returncode == 0 and "already there" in proc.stdout and "todo_items" in proc.stdout


def test_undo_of_rows_two_fixes_changed_goes_back_before_the_first(migrated: Any, data: dict[str, Any]) -> None:
    """A deliverable sent back to review, then its todo_id set null by its todo's deletion; an edge deleted by
    one fix, then its todo by a later one: each goes back to what it was before the job, parents first."""
    todo = data["todo"]
    with pg_connect(migrated, autocommit=True) as pg:
        deliverable = pg.execute("select id from deliverables where todo_id = %s", (todo,)).fetchone()[0]
        edge = tuple(pg.execute("select todo_id, depends_on_todo_id from todo_dependencies where todo_id = %s "
                                "order by 2 limit 1", (todo,)).fetchone())
    before = hashes(migrated)
    job_id = jobs.new_job_id("validate")
    fix_update(migrated, job_id, "deliverable_status", "deliverables", deliverable,
               "status = 'submitted', updated_at = now()")
    fix_delete_edge(migrated, job_id, edge)
    fix_delete_todo(migrated, job_id, todo)  # the edge's todo, after the edge; the deliverable's todo_id -> null
    code, report = undo(job_id)
    assert code == 0 and report["ok"], report
    assert tally(report, "deliverables") == (1, 0, 0) and tally(report, "todo_items") == (1, 0, 0)
    assert hashes(migrated) == before
    code, again = undo(job_id)
    assert code == 0 and all(t["restored"] == 0 and t["conflicts"] == 0 for t in again["tables"]), again


def test_undo_refuses_where_the_data_moved_on(migrated: Any, data: dict[str, Any]) -> None:
    job_id = jobs.new_job_id("validate")
    todo, task = data["others"][0], data["tasks"][5]
    fix_delete_todo(migrated, job_id, todo)
    fix_reopen_task(migrated, job_id, task)
    with pg_connect(migrated, autocommit=True) as pg:  # the deleted todo's id is taken by another row
        pg.execute("""insert into todo_items (id, work_task_id, title, is_test) overriding system value
                      values (%s, %s, 'someone else', true)""", (todo, data["tasks"][0]))
    fixed = hashes(migrated)
    proc = run_cli("validate", "undo", job_id)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("undo refused: 1 row(s) changed")
    assert f"todo_items id={todo} (key reused)" in proc.stderr and "nothing was put back" in proc.stderr
    assert "would restore" in proc.stdout and "changed since the fix" in proc.stdout  # the report names it too
    assert hashes(migrated) == fixed  # the task's update was not put back either

    with pg_connect(migrated, autocommit=True) as pg:  # the key free again; the reopened task moves on
        pg.execute("delete from todo_items where id = %s", (todo,))
        pg.execute("update work_tasks set title = title || ' (edited)' where id = %s", (task,))
    fixed = hashes(migrated)
    code, report = undo(job_id)
    assert code == 2 and not report["ok"]
    assert [(c["table"], c["key"], c["why"]) for c in report["conflicts"]] == [
        ("work_tasks", f"id={task}", "moved on since the fix")]
    assert hashes(migrated) == fixed  # the todo was not put back: all or nothing


def test_undo_skips_a_rolled_back_fix_and_refuses_a_running_one(migrated: Any, data: dict[str, Any]) -> None:
    job_id = jobs.new_job_id("validate")
    fix_delete_todo(migrated, job_id, data["others"][1], commit=False)  # quarantined, then rolled back
    fix_reopen_task(migrated, job_id, data["tasks"][2])
    code, report = undo(job_id)
    assert code == 0 and report["ok"] and len(report["skipped"]) == 1
    assert report["skipped"][0]["why"] == "not applied: its transaction rolled back"
    assert tally(report, "work_tasks") == (1, 0, 0) and "todo_items" not in [t["table"] for t in report["tables"]]

    running = jobs.new_job_id("validate")
    conn = fix_delete_todo(migrated, running, data["others"][2], hold=True)
    try:
        proc = run_cli("validate", "undo", running)
        assert proc.returncode == 2 and "the fix is still running" in proc.stderr
    finally:
        conn.rollback()
        conn.close()


def test_undo_of_a_malformed_or_unknown_job_says_so_in_one_line(migrated: Any) -> None:
    for job_id, said in (("no such/job", "malformed"), ("20261125T000000Z-validate-000000", "no quarantine")):
        proc = run_cli("validate", "undo", job_id)
        assert proc.returncode == 2 and said in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert not proc.stdout


def test_undo_puts_an_orphan_back_as_it_was(migrated: Any, data: dict[str, Any]) -> None:
    with pg_connect(migrated, autocommit=True) as pg:  # a row whose parent is gone, as a bulk load leaves one
        pg.execute("alter table todo_items disable trigger all")
        orphan = pg.execute("insert into todo_items (work_task_id, title, is_test) values (987654321, 'orphan', true) "
                            "returning id").fetchone()[0]
        pg.execute("alter table todo_items enable trigger all")
    before = hashes(migrated)
    job_id = jobs.new_job_id("validate")
    fix_delete_todo(migrated, job_id, orphan, kind="orphans")
    code, report = undo(job_id)
    assert code == 0 and tally(report, "todo_items") == (1, 0, 0), report
    assert hashes(migrated) == before
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("delete from todo_items where id = %s", (orphan,))


def test_undo_does_not_run_during_a_restore_and_lets_go_of_the_lock(migrated: Any, data: dict[str, Any]) -> None:
    r = check_redis(migrated)
    restore_id = jobs.create(r, "restore", {}, state="running")  # a restore of the live database, running
    assert jobs.lock(r, LIVE_LOCK, restore_id) is None
    job_id = jobs.new_job_id("validate")
    fix_reopen_task(migrated, job_id, data["tasks"][1])
    fixed = hashes(migrated)
    try:
        proc = run_cli("validate", "undo", job_id)
        assert proc.returncode == 2 and f"a restore of the live database is running (job {restore_id})" in proc.stderr
        assert hashes(migrated) == fixed
        code, plan = undo(job_id, "--dry-run")  # a dry run changes nothing: it does not need the lock
        assert code == 0 and tally(plan, "work_tasks") == (1, 0, 0)
    finally:
        jobs.fail(r, restore_id, "the test's stand-in restore ended")
        jobs.unlock(r, LIVE_LOCK, restore_id)
    code, report = undo(job_id)
    assert code == 0 and tally(report, "work_tasks") == (1, 0, 0)
    held = jobs.read(r, report["undo_id"])  # undo's own record, ended; the lock let go
    assert held is not None and held.kind == "validate_undo" and held.state == "succeeded"
    assert r.get(jobs.LOCK_KEY.format(resource=LIVE_LOCK)) is None


def test_validate_still_takes_its_options_beside_undo(migrated: Any) -> None:
    proc = run_cli("validate", "--fix", "--fix-kinds", "orphans,bogus")  # refused before a job is submitted
    assert proc.returncode == 2 and "'bogus' is not a fix kind" in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    code, report = cli_json("validate", "--no-fix", timeout=300)
    assert report["kind"] == "validate" and not report["fix"]


def test_undo_refuses_while_the_validation_job_has_not_ended(migrated: Any) -> None:
    r = check_redis(migrated)
    job_id = jobs.create(r, "validate", {"fix": True}, job_id=jobs.new_job_id("validate"), state="running")
    try:
        proc = run_cli("validate", "undo", job_id)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "has not ended" in lines[0], proc.stderr
    finally:
        jobs.fail(r, job_id, "a test's stand-in")
