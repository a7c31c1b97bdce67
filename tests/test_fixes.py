"""Safe fixes (issue 17): every `validate --fix` keeps what it removes or overwrites in a quarantine before it
commits, never touches a row younger than FIX_MIN_AGE_MINUTES, re-checks destructive fixes, applies only the
kinds it may, and `validate undo` puts everything back exactly (row hashes) or refuses, naming the rows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_json, data_hashes, run_cli, run_job
from tasks.validate import TASK_EVIDENCE, TASK_FIX, TASK_STILL, existing_tasks
from worker import commands, quarantine
from worker.backups import store_for
from worker.connections import aws_client, pg_connect, redis_client
from worker.dynamo import to_item
from worker.fix_dynamo import delete_items
from worker.fix_gate import SEEN_KEY
from worker.fixer import Fixer

pytestmark = pytest.mark.slow  # run once (local services): the fixes do not depend on the services' path

TABLES = ("work_tasks", "todo_items", "todo_dependencies", "deliverables", "quality_checks")
OLD = "now() - interval '2 hours'"


def hashes(settings: Any) -> dict[str, Any]:
    return data_hashes(settings, TABLES)


def issue_of(report: dict[str, Any], table: str, key: str) -> dict[str, Any]:
    found = [i for i in report["issues"] if i["table"] == table and i["key"] == key]
    assert len(found) == 1, (table, key, [(i["table"], i["key"]) for i in report["issues"]])
    return found[0]


def fixer(settings: Any, kinds: list[str], min_age: float = 0) -> Fixer:
    """A fixing unit as a validation check task makes one (in this process: to step between its moves)."""
    options = {**quarantine.store_settings(settings), "fix_kinds": kinds, "fix_min_age_minutes": min_age}
    return Fixer(settings, redis_client(settings), f"20261125T000000Z-validate-{time.time_ns() % 10**9}", options,
                 "test")


def kept_docs(settings: Any, job_id: str) -> list[dict[str, Any]]:
    opts = quarantine.store_settings(settings)
    return quarantine.read(settings, store_for(settings, opts), opts, job_id)


@pytest.fixture(autouse=True)
def no_first_looks(settings: Any) -> None:
    """Each test starts with no finding seen before (the second look's records are per finding, in Redis)."""
    r = redis_client(settings)
    for key in r.scan_iter(SEEN_KEY.format(digest="*")):
        r.delete(key)


def a_deliverable(pg: Any, task: int) -> int:
    """The task's first deliverable (one is made when the generator gave it none)."""
    found = pg.execute("select id from deliverables where work_task_id = %s order by id limit 1", (task,)).fetchone()
    return found[0] if found else pg.execute(
        """insert into deliverables (work_task_id, artifact_type_id, name, is_test)
           values (%s, (select min(id) from artifact_types), 'planted', true) returning id""", (task,)).fetchone()[0]


@pytest.fixture()
def planted(migrated: Any) -> Iterator[dict[str, Any]]:
    """Test data and fixable defects: a duplicate todo that another todo depends on and a deliverable points at
    (deleting it cascades and sets null), a task completed with open todos, an approved deliverable with a
    failing check, and a DynamoDB analysis of a work task that does not exist. `age(old)` ages them."""
    with pg_connect(migrated, autocommit=True) as pg:
        old = [r[0] for r in pg.execute("select id from work_tasks where is_test")]
    assert run_job(migrated, lambda: commands.testdata(migrated, "generate", 12, 7, True))["ok"]
    with pg_connect(migrated, autocommit=True) as pg:  # this generation's tasks (another test may have left some)
        tasks = [r[0] for r in pg.execute("select id from work_tasks where is_test and id <> all(%s) order by id",
                                          (old,))]
        t_dup, t_done, t_appr = tasks[0], tasks[1], tasks[2]
        dup = pg.execute("""insert into todo_items (work_task_id, title, position, is_test)
                            select work_task_id, title, position, true from todo_items where work_task_id = %s
                            order by id limit 1 returning id""", (t_dup,)).fetchone()[0]
        other = pg.execute("select id from todo_items where work_task_id = %s and id <> %s order by id desc limit 1",
                           (t_dup, dup)).fetchone()[0]
        pg.execute("delete from todo_dependencies where todo_id = %s or depends_on_todo_id = %s", (other, other))
        pg.execute("insert into todo_dependencies values (%s, %s)", (other, dup))
        deliverable = a_deliverable(pg, t_dup)
        pg.execute("update deliverables set todo_id = %s where id = %s", (dup, deliverable))
        pg.execute("update work_tasks set status = 'completed', completed_at = greatest(created_at, now()), "
                   "updated_at = now() where id = %s", (t_done,))  # as the application does: updated_at moves
        pg.execute("update todo_items set status = 'pending' where work_task_id = %s", (t_done,))
        appr = a_deliverable(pg, t_appr)
        pg.execute("update deliverables set status = 'approved', updated_at = now() where id = %s", (appr,))
        pg.execute("""insert into quality_checks (deliverable_id, standard_id, score, passed)
                      values (%s, (select min(id) from quality_standards), 10, false)""", (appr,))
        missing = pg.execute("select coalesce(max(id), 0) + 1000 from work_tasks").fetchone()[0]
    dynamo = aws_client(migrated, "dynamodb")
    item = {"PK": f"TASK#{missing}", "SK": "ANALYSIS", "type": "analysis", "work_task_id": missing,
            "complexity": 3, "risk": "low", "summary": "an analysis without its task", "estimated_hours": 1.5,
            "blob": b"\x00\xffbinary", "is_test": True}
    dynamo.put_item(TableName=migrated.dynamo_table_name, Item=to_item(item))

    def age() -> None:
        with pg_connect(migrated, autocommit=True) as pg:
            pg.execute(f"""update work_tasks set created_at = {OLD}, updated_at = {OLD},
                           completed_at = case when completed_at is not null then {OLD} end where is_test""")
            for table in ("todo_items", "deliverables"):
                pg.execute(f"update {table} set created_at = {OLD}, updated_at = {OLD} where is_test")
            pg.execute(f"update quality_checks set checked_at = {OLD}")

    yield {"dup": dup, "other": other, "deliverable": deliverable, "done": t_done, "approved": appr,
           "missing": missing, "item_key": f"TASK#{missing}|ANALYSIS", "age": age}
    dynamo.delete_item(TableName=migrated.dynamo_table_name, Key=to_item({"PK": f"TASK#{missing}", "SK": "ANALYSIS"}))
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("delete from work_tasks where id = %s", (missing,))
    assert run_job(migrated, lambda: commands.testdata(migrated, "cleanup"))["ok"]


def planted_rows(settings: Any, planted: dict[str, Any]) -> list[str]:
    """The text of every row the planted defects are about (other tests' data may hold fixable findings too)."""
    with pg_connect(settings) as pg:
        return [r[0] for r in pg.execute(
            """select t::text from todo_items t where id = %(dup)s union all
               select t::text from work_tasks t where id = %(done)s union all
               select t::text from deliverables t where id in (%(deliverable)s, %(approved)s) union all
               select t::text from todo_dependencies t where depends_on_todo_id = %(dup)s order by 1""", planted)]


def test_a_young_duplicate_todo_is_pending_and_left_alone(planted: dict[str, Any], migrated: Any) -> None:
    before = planted_rows(migrated, planted)
    code, report = cli_json("validate", "--fix", timeout=300)  # FIX_MIN_AGE_MINUTES: the default, 60
    dup = issue_of(report, "todo_items", str(planted["dup"]))
    assert dup["fixable"] and dup["kind"] == "duplicate_todos"
    assert dup["pending"] and not dup["fixed"] and "FIX_MIN_AGE_MINUTES" in dup["note"], dup
    status = issue_of(report, "work_tasks", str(planted["done"]))  # changed by the test a moment ago: pending too
    assert status["pending"] and not status["fixed"], str(status)
    assert report["pending"] >= 2, report["issues"]
    assert planted_rows(migrated, planted) == before  # none of them changed
    proc = run_cli("validate", "--fix", timeout=300)
    assert "pending" in proc.stdout and "fix kinds applied:" in proc.stdout, proc.stdout


def test_a_fix_keeps_what_it_removes_and_overwrites_before_it_commits(planted: dict[str, Any], migrated: Any) -> None:
    code, report = cli_json("validate", "--fix", timeout=300, env={"FIX_MIN_AGE_MINUTES": "0"})
    dup = issue_of(report, "todo_items", str(planted["dup"]))
    assert dup["fixed"], dup
    assert issue_of(report, "work_tasks", str(planted["done"]))["fixed"]
    assert issue_of(report, "deliverables", str(planted["approved"]))["fixed"]
    assert issue_of(report, migrated.dynamo_table_name, planted["item_key"])["fixed"]
    assert report["quarantine"] and report["job_id"] in report["quarantine"] and report["quarantined"] >= 6

    docs = kept_docs(migrated, report["job_id"])
    changes = [c for d in docs for c in d["changes"]]
    by = {(c["table"], c["action"]): c for c in changes}
    todo = by[("todo_items", "delete")]
    assert [r["key"] for r in todo["rows"]] == [{"id": str(planted["dup"])}]
    edge = by[("todo_dependencies", "delete")]  # cascaded from the duplicate
    assert edge["rows"][0]["key"] == {"todo_id": str(planted["other"]), "depends_on_todo_id": str(planted["dup"])}
    nulled = by[("deliverables", "update")]  # ON DELETE SET NULL: before and after kept
    row = next(r for r in nulled["rows"] if r["key"] == {"id": str(planted["deliverable"])})
    assert f",{planted['dup']}," in row["before"] and row["after"] and row["after"] != row["before"]
    with pg_connect(migrated) as pg:  # the kept text is the row: PostgreSQL reads it back as one
        assert pg.execute("select (%s::deliverables).todo_id, (%s::deliverables).todo_id",
                          (row["before"], row["after"])).fetchone() == (planted["dup"], None)
    task = by[("work_tasks", "update")]
    assert "completed" in task["rows"][0]["before"] and "in_progress" in task["rows"][0]["after"]
    assert all(d["xid"] for d in docs if any(c["store"] == "postgres" for c in d["changes"]))
    item = by[(migrated.dynamo_table_name, "delete")]["rows"][0]["before"]
    assert item["PK"] == {"S": planted["item_key"].split("|")[0]} and item["blob"] == {"B": "AP9iaW5hcnk="}
    assert "Item" not in aws_client(migrated, "dynamodb").get_item(
        TableName=migrated.dynamo_table_name, Key=to_item({"PK": f"TASK#{planted['missing']}", "SK": "ANALYSIS"}))
    # encrypted like a backup chunk (the header names how its key is wrapped), compressed
    for doc in docs:
        header = json.loads(Path(migrated.backup_folder, doc["object"]).read_bytes().split(b"\n", 1)[0])
        assert header["encryption"]["wrapping"] in ("key", "kms") and header["compressed"], header


def test_an_item_whose_work_task_is_committed_after_the_first_look_is_not_deleted(planted: dict[str, Any],
                                                                                  migrated: Any) -> None:
    env = {"FIX_MIN_AGE_MINUTES": "0.05"}  # 3 s between the first look and a fix
    table, key = migrated.dynamo_table_name, planted["item_key"]
    code, first = cli_json("validate", "--fix", timeout=300, env=env)
    assert issue_of(first, table, key)["pending"]  # seen once: not deleted
    # the application commits the work task a moment after the scan
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("""insert into work_tasks (id, title, is_test) overriding system value values (%s, 'late', true)""",
                   (planted["missing"],))
    time.sleep(4)
    code, second = cli_json("validate", "--fix", timeout=300, env=env)
    assert not [i for i in second["issues"] if i["table"] == table and i["key"] == key]
    got = aws_client(migrated, "dynamodb").get_item(TableName=table, Key=to_item({"PK": f"TASK#{planted['missing']}",
                                                                                  "SK": "ANALYSIS"}))
    assert "Item" in got  # still there


def test_an_item_whose_work_task_is_committed_just_before_the_delete_is_not_deleted(planted: dict[str, Any],
                                                                                    migrated: Any) -> None:
    """The last moment: the scan and the first re-check found no work task; the application commits it right
    then; the re-check right before the delete sees it. Nothing is deleted and nothing is left in the quarantine."""
    table, key = migrated.dynamo_table_name, planted["item_key"]
    raw = to_item({"PK": f"TASK#{planted['missing']}", "SK": "ANALYSIS"})
    calls = []

    def still_missing(ids: list[int]) -> set[int]:
        calls.append(list(ids))
        if len(calls) == 2:  # between the quarantine and the delete, the application commits the work task
            with pg_connect(migrated, autocommit=True) as pg:
                pg.execute("insert into work_tasks (id, title, is_test) overriding system value "
                           "values (%s, 'late', true)", (planted["missing"],))
        return set(ids) - existing_tasks(migrated, ids)

    fx = fixer(migrated, ["dynamo_orphans"])
    out = delete_items(fx, aws_client(migrated, "dynamodb"), table, [(planted["missing"], key, raw)], still_missing)
    assert len(calls) == 2 and out[key].state == "skipped" and "exists now" in out[key].note, out
    assert "Item" in aws_client(migrated, "dynamodb").get_item(TableName=table, Key=raw)
    opts = quarantine.store_settings(migrated)
    assert list(store_for(migrated, opts).list(quarantine.folder(opts, fx.job_id))) == []  # it says what was deleted


def test_a_status_set_right_by_the_application_after_the_check_is_not_touched(planted: dict[str, Any],
                                                                              migrated: Any) -> None:
    """The re-check inside the fixing transaction: the check saw the task completed with open todos; the
    application reopens it before the fix locks it; the fix finds its finding gone and changes nothing."""
    planted["age"]()
    with pg_connect(migrated) as conn:
        ctid = conn.execute("select ctid::text from work_tasks where id = %s", (planted["done"],)).fetchone()[0]
        with pg_connect(migrated, autocommit=True) as app:
            app.execute("update work_tasks set status = 'in_progress', completed_at = null where id = %s",
                        (planted["done"],))
            before = app.execute("select t::text from work_tasks t where id = %s", (planted["done"],)).fetchone()[0]
        fx = fixer(migrated, ["task_status"])
        out = fx.update(conn, "task_status", "work_tasks", ctid, {"id": str(planted["done"])}, TASK_STILL, TASK_FIX,
                        evidence=TASK_EVIDENCE)
        fx.commit(conn)
    assert out.state == "skipped" and "changed meanwhile" in out.note, out
    with pg_connect(migrated) as pg:
        assert pg.execute("select t::text from work_tasks t where id = %s", (planted["done"],)).fetchone()[0] == before


def test_a_dangling_item_seen_twice_past_the_minimum_age_is_deleted_and_kept(planted: dict[str, Any],
                                                                           migrated: Any) -> None:
    env = {"FIX_MIN_AGE_MINUTES": "0.05"}
    table, key = migrated.dynamo_table_name, planted["item_key"]
    code, first = cli_json("validate", "--fix", timeout=300, env=env)
    assert issue_of(first, table, key)["pending"]
    time.sleep(4)
    code, second = cli_json("validate", "--fix", timeout=300, env=env)
    assert issue_of(second, table, key)["fixed"]
    assert "Item" not in aws_client(migrated, "dynamodb").get_item(
        TableName=table, Key=to_item({"PK": f"TASK#{planted['missing']}", "SK": "ANALYSIS"}))
    docs = kept_docs(migrated, second["job_id"])
    kept = [r for d in docs for c in d["changes"] if c["store"] == "dynamodb" for r in c["rows"]]
    assert [r["before"]["PK"] for r in kept] == [{"S": f"TASK#{planted['missing']}"}]
    assert kept[0]["before"]["blob"] == {"B": "AP9iaW5hcnk="}  # the whole item, binary included


def test_scheduled_maintenance_applies_only_fix_kinds(planted: dict[str, Any], migrated: Any) -> None:
    planted["age"]()
    code, report = cli_json("maintenance", "--fix", timeout=300)  # FIX_KINDS: the default, non-destructive
    step = {s["name"]: s for s in report["steps"]}["validate"]["report"]
    assert step["fix_kinds"] == ["task_status", "deliverable_status"]
    assert issue_of(step, "work_tasks", str(planted["done"]))["fixed"]
    dup = issue_of(step, "todo_items", str(planted["dup"]))
    assert not dup["fixed"] and "not applied" in dup["note"], dup
    with pg_connect(migrated) as pg:
        assert pg.execute("select count(*) from todo_items where id = %s", (planted["dup"],)).fetchone()[0] == 1


def test_a_quarantine_that_cannot_be_written_means_no_fix(planted: dict[str, Any], migrated: Any) -> None:
    planted["age"]()
    before = hashes(migrated)
    blocker = Path(migrated.backup_folder, quarantine.root(quarantine.store_settings(migrated)).rstrip("/"))
    blocker.parent.mkdir(parents=True, exist_ok=True)
    moved = blocker.with_name("quarantine.moved")
    if blocker.exists():
        blocker.rename(moved)
    blocker.write_text("a file where the quarantine folder should be")
    try:
        code, report = cli_json("validate", "--fix", timeout=300, env={"FIX_MIN_AGE_MINUTES": "60"})
    finally:
        blocker.unlink()
        if moved.exists():
            moved.rename(blocker)
    assert code == 1 and report["state"] == "failed" and "quarantine could not be written" in report["error"], report
    assert hashes(migrated) == before


@pytest.mark.parametrize("args, env", [(("--fix-kinds", "orphans,bogus"), {}), ((), {"FIX_KINDS": "deletes"}),
                                       ((), {"FIX_MIN_AGE_MINUTES": "-1"})])
def test_an_unknown_fix_kind_or_a_negative_age_is_refused_in_one_line(migrated: Any, args: tuple[str, ...],
                                                                      env: dict[str, str]) -> None:
    proc = run_cli("maintenance", "--fix", *args, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert any(word in lines[0] for word in ("bogus", "deletes", "FIX_MIN_AGE_MINUTES")), lines


def test_a_delete_whose_cascade_has_rows_without_timestamps_waits_for_a_second_look(planted: dict[str, Any],
                                                                                    migrated: Any) -> None:
    """The duplicate todo is old, but deleting it deletes a dependency edge (no timestamp): the first run only
    looks; a new edge in its cascade starts the wait again; a run after the wait, nothing changed, fixes it."""
    planted["age"]()
    env = {"FIX_MIN_AGE_MINUTES": "0.05"}
    dup = str(planted["dup"])
    code, first = cli_json("validate", "--fix", timeout=300, env=env)
    assert issue_of(first, "todo_items", dup)["pending"] and "first seen" in issue_of(first, "todo_items", dup)["note"]
    with pg_connect(migrated, autocommit=True) as pg:  # the application adds an edge to the duplicate meanwhile
        third = pg.execute("select id from todo_items where work_task_id = (select work_task_id from todo_items "
                           "where id = %s) and id not in (%s, %s) order by id limit 1",
                           (planted["dup"], planted["dup"], planted["other"])).fetchone()[0]
        pg.execute("delete from todo_dependencies where todo_id = %s", (third,))
        pg.execute("insert into todo_dependencies values (%s, %s)", (third, planted["dup"]))
    time.sleep(4)
    code, second = cli_json("validate", "--fix", timeout=300, env=env)
    note = issue_of(second, "todo_items", dup)["note"] or ""
    assert issue_of(second, "todo_items", dup)["pending"] and "first seen" in note, note  # its cascade changed
    time.sleep(4)
    code, third_run = cli_json("validate", "--fix", timeout=300, env=env)
    assert issue_of(third_run, "todo_items", dup)["fixed"]
    edges = [c for d in kept_docs(migrated, third_run["job_id"]) for c in d["changes"]
             if c["table"] == "todo_dependencies"]
    assert {r["key"]["todo_id"] for c in edges for r in c["rows"]} == {str(planted["other"]), str(third)}


def test_orphans_and_cycles_are_fixed_and_kept(planted: dict[str, Any], migrated: Any) -> None:
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("alter table todo_items disable trigger all")
        orphan = pg.execute("insert into todo_items (work_task_id, title, is_test, created_at, updated_at) values "
                            f"(987654321, 'orphan', true, {OLD}, {OLD}) returning id").fetchone()[0]
        pg.execute("alter table todo_items enable trigger all")
        # a cycle of its own (the duplicate's edges go with the duplicate's delete, in another unit)
        a, b = [r[0] for r in pg.execute("select id from todo_items where work_task_id = %s order by id limit 2",
                                         (planted["done"],))]
        pg.execute("delete from todo_dependencies where todo_id in (%s, %s) or depends_on_todo_id in (%s, %s)",
                   (a, b, a, b))
        pg.execute("insert into todo_dependencies values (%s, %s), (%s, %s)", (a, b, b, a))
    try:
        code, report = cli_json("validate", "--fix", timeout=300, env={"FIX_MIN_AGE_MINUTES": "0"})
        assert issue_of(report, "todo_items", str(orphan))["fixed"]
        cycle = [i for i in report["issues"] if i["table"] == "todo_dependencies" and "cycle" in i["message"]
                 and {str(a), str(b)} <= set(i["key"].split("->"))]
        assert len(cycle) == 1 and cycle[0]["fixed"] and cycle[0]["kind"] == "cycles", [(c["key"], c["note"])
                                                                                        for c in cycle]
        kept = {(c["kind"], c["table"]) for d in kept_docs(migrated, report["job_id"]) for c in d["changes"]}
        assert {("orphans", "todo_items"), ("cycles", "todo_dependencies")} <= kept
        with pg_connect(migrated) as pg:
            assert pg.execute("select count(*) from todo_items where id = %s", (orphan,)).fetchone()[0] == 0
    finally:
        with pg_connect(migrated, autocommit=True) as pg:
            pg.execute("delete from todo_items where id = %s", (orphan,))


def test_a_fix_then_its_undo_leaves_every_table_and_dynamodb_byte_identical(planted: dict[str, Any],
                                                                           migrated: Any) -> None:
    """Every kind in one run — a duplicate todo (with the edge and the deliverable it takes along), a task and a
    deliverable status, the dangling item — and the deliverable whose todo is the duplicate is also approved with a
    failing check: one row two fixes change. Undo puts everything back; a second undo finds it all there."""
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("update deliverables set status = 'approved' where id = %s", (planted["deliverable"],))
        pg.execute("""insert into quality_checks (deliverable_id, standard_id, score, passed)
                      values (%s, (select min(id) from quality_standards), 5, false)""", (planted["deliverable"],))
    before = hashes(migrated)
    code, report = cli_json("validate", "--fix", timeout=300, env={"FIX_MIN_AGE_MINUTES": "0"})
    assert issue_of(report, "deliverables", str(planted["deliverable"]))["fixed"]
    assert issue_of(report, "todo_items", str(planted["dup"]))["fixed"]
    assert issue_of(report, migrated.dynamo_table_name, planted["item_key"])["fixed"]
    fixed = hashes(migrated)
    assert {t for t in before if before[t] != fixed[t]} >= {"work_tasks", "todo_items", "todo_dependencies",
                                                            "deliverables", "dynamodb"}
    code, dry = cli_json("validate", "undo", report["job_id"], "--dry-run")
    assert code == 0 and hashes(migrated) == fixed, dry
    code, undone = cli_json("validate", "undo", report["job_id"])
    assert code == 0, undone
    assert hashes(migrated) == before
    code, again = cli_json("validate", "undo", report["job_id"])
    assert code == 0 and hashes(migrated) == before, again


def test_undo_refuses_naming_the_row_when_a_deleted_rows_key_was_reused(planted: dict[str, Any],
                                                                        migrated: Any) -> None:
    code, report = cli_json("validate", "--fix", timeout=300, env={"FIX_MIN_AGE_MINUTES": "0"})
    assert issue_of(report, "todo_items", str(planted["dup"]))["fixed"]
    with pg_connect(migrated, autocommit=True) as pg:  # the application's new todo gets the deleted one's id
        pg.execute("""insert into todo_items (id, work_task_id, title, is_test) overriding system value
                      values (%s, %s, 'a new todo, same id', true)""", (planted["dup"], planted["done"]))
    now = hashes(migrated)
    proc = run_cli("validate", "undo", report["job_id"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "todo_items" in lines[0] and str(planted["dup"]) in lines[0] and "reused" in lines[0], lines
    assert hashes(migrated) == now  # nothing was put back


def test_fix_kinds_without_fix_is_refused_rather_than_ignored(migrated: Any) -> None:
    proc = run_cli("validate", "--fix-kinds", "orphans")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--fix" in proc.stderr, proc.stderr
