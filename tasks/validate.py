"""`worktask validate [--fix]`: the guide's four families of checks, one task per check unit (a table, a
foreign key, a key range, a scan segment), fanned out as a chord; finalize writes the report and keeps
it in Redis for `worktask health`.

Each unit returns its issues and how many records it looked at; with fix it repairs what is fixable, of the
kinds the job may apply, in its own transaction (worker/fixer.py: re-checked, aged, quarantined before the
commit) and marks those issues fixed, or pending with why.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

import psycopg
from pydantic import ValidationError

from worker import jobs, quarantine
from worker.app import app
from worker.backups import store_for
from worker.connections import aws_client, pg_connect, redis_client
from worker.constants import (
    DYNAMO_SCAN_RESTORE_KEY,
    LAST_VALIDATION_KEY,
    TASK_VALIDATE_DATA_CHECK,
    TASK_VALIDATE_DATA_FINALIZE,
    TASK_VALIDATE_DATA_START,
)
from worker.dynamo import from_item
from worker.fix_dynamo import delete_items
from worker.fixer import Fixer, Outcome, pin_session
from worker.models import model_for
from worker.reports import Issue, ValidationReport
from worker.settings import Settings
from worker.taskbase import JobTask, fan_out

RANGE = 50_000  # work tasks per consistency unit
TEXT_COLUMNS = {"work_tasks": "title", "todo_items": "title", "deliverables": "name", "services": "name"}


def issue(severity: str, category: str, table: str, key: Any, message: str, kind: str | None = None
          ) -> dict[str, Any]:
    return Issue(severity=severity, category=category, table=table, key=str(key), message=message,
                 fixable=kind is not None, kind=kind).model_dump()


def settle(entry: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """An issue with what its fix did."""
    entry["fixed"] = outcome.state == "fixed"
    entry["pending"] = outcome.state == "pending"
    entry["note"] = outcome.note
    return entry


def ident(name: str) -> psycopg.sql.Identifier:
    return psycopg.sql.Identifier(name)


# schema ----------------------------------------------------------------------------------------------------

def check_config(conn: psycopg.Connection, fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    out, n = [], 0
    for key, criteria in conn.execute("select key, criteria from quality_standards"):
        n += 1
        if not criteria:
            out.append(issue("error", "schema", "quality_standards", key, "no criteria"))
            continue
        if not all({"key", "weight", "threshold"} <= set(c) for c in criteria):
            out.append(issue("error", "schema", "quality_standards", key, "a criterion lacks key, weight or threshold"))
        elif abs(sum(float(c["weight"]) for c in criteria) - 1) > 1e-6:
            out.append(issue("error", "schema", "quality_standards", key, "criteria weights do not sum to 1"))
    for key, exts in conn.execute("select key, extensions from artifact_types"):
        n += 1
        bad = [e for e in exts if not e.startswith(".") or e != e.lower()]
        if not exts or bad:
            out.append(issue("warning", "schema", "artifact_types", key, f"extensions must be lower-case and start "
                                                                          f"with '.': {bad or 'none given'}"))
    return n, out


def check_blank_text(conn: psycopg.Connection, table: str, fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    col = TEXT_COLUMNS[table]
    n = conn.execute(psycopg.sql.SQL("select count(*) from {}").format(ident(table))).fetchone()[0]
    rows = conn.execute(psycopg.sql.SQL("select id from {} where btrim({}) = '' or {} <> btrim({}) limit 1000").format(
        ident(table), ident(col), ident(col), ident(col))).fetchall()
    return n, [issue("warning", "schema", table, r[0], f"{col} is blank or has surrounding spaces") for r in rows]


def check_dynamo(settings: Settings, segment: int, segments: int, fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    """Every item against its model; TASK# items must reference an existing work task (cross-store)."""
    client, table = aws_client(settings, "dynamodb"), settings.dynamo_table_name
    out, n, refs = [], 0, {}
    for page in client.get_paginator("scan").paginate(TableName=table, Segment=segment, TotalSegments=segments):
        for raw in page.get("Items", []):
            n += 1
            item = from_item(raw)
            key = f"{item.get('PK')}|{item.get('SK')}"
            model = model_for(str(item.get("PK", "")))
            if model is None:
                out.append(issue("warning", "schema", table, key, "unknown item type (PK prefix)"))
                continue
            try:
                model.model_validate(item)
            except ValidationError as err:
                first = err.errors()[0]
                out.append(issue("error", "schema", table, key,
                                 f"{'.'.join(map(str, first['loc']))}: {first['msg']} (got {first.get('input')!r})"))
                continue
            if item["PK"].startswith("TASK#"):
                refs.setdefault(int(item["PK"][5:]), []).append((key, raw))
    if refs:
        found = existing_tasks(settings, list(refs))
        note = scan_restore_note(settings)
        fixable = []
        for task_id, key, raw in [(t, k, r) for t in sorted(set(refs) - found) for k, r in refs[t]]:
            if note and (key in note["keys"] or (note["truncated"] and task_id > note["max_work_task_id"])):
                out.append(issue("warning", "referential", table, key, f"references work task {task_id}, which does "
                                 f"not exist; restored from backup {note['backup_id']}, whose DynamoDB part is a scan "
                                 "over a window after its PostgreSQL snapshot, so the task may be newer than the "
                                 "snapshot: not deleted by --fix (delete it by hand if it is stale)"))
                continue
            out.append(issue("error", "referential", table, key, f"references work task {task_id}, which does not "
                             "exist", kind="dynamo_orphans"))
            fixable.append((task_id, key, raw))
        if fx and fixable:
            outcomes = delete_items(fx, client, table, fixable, lambda ids: set(ids) - existing_tasks(settings, ids))
            for entry in out:
                if entry["key"] in outcomes and entry["kind"] == "dynamo_orphans":
                    settle(entry, outcomes[entry["key"]])
    return n, out


def existing_tasks(settings: Settings, ids: list[int]) -> set[int]:
    with pg_connect(settings) as conn:
        return {r[0] for r in conn.execute("select id from work_tasks where id = any(%s)", (ids,))}


def scan_restore_note(settings: Settings) -> dict[str, Any] | None:
    """What the last restore of a scanned DynamoDB part noted (tasks/restore.py note_dynamo_restore)."""
    raw = redis_client(settings).get(DYNAMO_SCAN_RESTORE_KEY)
    if not raw:
        return None
    note = json.loads(raw)
    return {**note, "keys": set(note["keys"])}


# referential --------------------------------------------------------------------------------------------------

def foreign_keys(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("""
        select c.conname, (select relname::text from pg_class where oid = c.conrelid),
               (select relname::text from pg_class where oid = c.confrelid),
               array_agg(a.attname::text order by k.ord), array_agg(fa.attname::text order by k.ord)
        from pg_constraint c, unnest(c.conkey, c.confkey) with ordinality k(att, fatt, ord), pg_attribute a,
             pg_attribute fa
        where c.contype = 'f' and c.connamespace = 'public'::regnamespace
          and a.attrelid = c.conrelid and a.attnum = k.att and fa.attrelid = c.confrelid and fa.attnum = k.fatt
        group by c.oid, c.conname, c.conrelid, c.confrelid order by 1""").fetchall()
    return [{"name": r[0], "table": r[1], "ref": r[2], "cols": r[3], "ref_cols": r[4]} for r in rows]


def check_fk(conn: psycopg.Connection, fk: dict[str, Any], fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    """Rows whose reference points nowhere (possible when the constraint was disabled or deferred)."""
    sql = psycopg.sql
    on = sql.SQL(" and ").join(sql.SQL("r.{} = t.{}").format(ident(a), ident(b))
                               for a, b in zip(fk["ref_cols"], fk["cols"]))
    notnull = sql.SQL(" and ").join(sql.SQL("t.{} is not null").format(ident(c)) for c in fk["cols"])
    key = sql.SQL("t.todo_id::text || '->' || t.depends_on_todo_id::text" if fk["table"] == "todo_dependencies"
                  else "t.id::text")
    n = conn.execute(sql.SQL("select count(*) from {}").format(ident(fk["table"]))).fetchone()[0]
    query = sql.SQL("select {}, t.ctid from {} t where {} and not exists (select 1 from {} r where {})")
    rows = conn.execute(query.format(key, ident(fk["table"]), notnull, ident(fk["ref"]), on)).fetchall()
    still = sql.SQL("{} and not exists (select 1 from {} r where {})").format(notnull, ident(fk["ref"]), on)
    out = []
    for k, ctid in rows:
        entry = issue("error", "referential", fk["table"], k, f"orphan: {', '.join(fk['cols'])} points to no row of "
                      f"{fk['ref']} ({fk['name']})", kind="orphans")
        if fx:
            key = (dict(zip(("todo_id", "depends_on_todo_id"), k.split("->"), strict=True))
                   if fk["table"] == "todo_dependencies" else {"id": k})
            settle(entry, fx.delete(conn, "orphans", fk["table"], str(ctid), key, still, label=k))
        out.append(entry)
    return n, out


def find_cycles(edges: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Cycles in a dependency graph, each as its list of edges (iterative DFS)."""
    graph: dict[int, list[int]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    state: dict[int, int] = {}
    cycles = []
    for root in list(graph):
        if state.get(root):
            continue
        stack, path = [(root, iter(graph.get(root, [])))], [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                loop = path[path.index(child):] + [child]
                cycles.append(list(zip(loop, loop[1:])))
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(graph.get(child, []))))
                path.append(child)
    return cycles


# the edge (alias t) still closes a cycle: its target still reaches its source
CYCLE_STILL = psycopg.sql.SQL("""exists (with recursive r(n) as (
    select %s::bigint union select d.depends_on_todo_id from todo_dependencies d join r on d.todo_id = r.n)
    select 1 from r where r.n = %s::bigint)""")


def check_cycles(conn: psycopg.Connection, fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    edges = [tuple(r) for r in conn.execute("select todo_id, depends_on_todo_id from todo_dependencies")]
    out = []
    for cycle in find_cycles(edges):
        newest = max(cycle)  # the edge added last has the highest todo ids (ids grow with time)
        key = f"{newest[0]}->{newest[1]}"
        entry = issue("error", "referential", "todo_dependencies", key,
                      "dependency cycle: " + " -> ".join(str(a) for a, _ in cycle) + f" -> {cycle[0][0]}",
                      kind="cycles")
        ctid = conn.execute("select ctid::text from todo_dependencies where todo_id = %s and depends_on_todo_id = %s",
                            newest).fetchone()
        if fx and ctid:
            settle(entry, fx.delete(conn, "cycles", "todo_dependencies", ctid[0],
                                    {"todo_id": str(newest[0]), "depends_on_todo_id": str(newest[1])}, CYCLE_STILL,
                                    (newest[1], newest[0]), label=key))
        out.append(entry)
    return len(edges), out


# consistency -------------------------------------------------------------------------------------------------

# Each fix's re-check (the finding still holds for the locked row, alias t), its change, and the rows its
# finding rests on (their newest timestamp ages it): worker/fixer.py
SQL = psycopg.sql.SQL
TASK_STILL = SQL("t.status = 'completed' and exists (select 1 from todo_items i where i.work_task_id = t.id "
                 "and i.status <> 'done')")
TASK_FIX = SQL("status = 'in_progress', completed_at = null, updated_at = now()")
TASK_EVIDENCE = SQL("select max(greatest(i.created_at, i.updated_at)) from todo_items i where i.work_task_id = t.id "
                    "and i.status <> 'done'")
DELIVERABLE_STILL = SQL("t.status = 'approved' and exists (select 1 from quality_checks q where q.deliverable_id = "
                        "t.id and not q.passed)")
DELIVERABLE_FIX = SQL("status = 'submitted', updated_at = now()")
DELIVERABLE_EVIDENCE = SQL("select max(q.checked_at) from quality_checks q where q.deliverable_id = t.id and "
                           "not q.passed")
DUPLICATE_STILL = SQL("exists (select 1 from todo_items k where k.id = %s and k.id < t.id and k.work_task_id = "
                      "t.work_task_id and k.position is not distinct from t.position and k.title = t.title)")

def check_tasks(conn: psycopg.Connection, lo: int, hi: int, fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    n = conn.execute("select count(*) from work_tasks where id >= %s and id < %s", (lo, hi)).fetchone()[0]
    out = []
    for tid, open_count, ctid in conn.execute("""
            select t.id, count(*), t.ctid::text from work_tasks t join todo_items i on i.work_task_id = t.id
            where t.id >= %s and t.id < %s and t.status = 'completed' and i.status <> 'done'
            group by t.id, t.ctid order by t.id""", (lo, hi)).fetchall():
        entry = issue("error", "consistency", "work_tasks", tid, f"completed while {open_count} todo(s) are open",
                      kind="task_status")
        if fx:
            settle(entry, fx.update(conn, "task_status", "work_tasks", ctid, {"id": str(tid)}, TASK_STILL,
                                    TASK_FIX, label=str(tid), evidence=TASK_EVIDENCE))
        out.append(entry)
    for tid, in conn.execute("""select id from work_tasks where id >= %s and id < %s and
                                ((status = 'completed') <> (completed_at is not null) or updated_at < created_at)""",
                             (lo, hi)).fetchall():
        out.append(issue("warning", "consistency", "work_tasks", tid,
                         "completed_at or updated_at disagrees with status or created_at"))
    for did, failing, ctid in conn.execute("""
            select d.id, count(*), d.ctid::text from deliverables d join quality_checks q on q.deliverable_id = d.id
            where d.work_task_id >= %s and d.work_task_id < %s and d.status = 'approved' and not q.passed
            group by d.id, d.ctid order by d.id""", (lo, hi)).fetchall():
        entry = issue("error", "consistency", "deliverables", did, f"approved with {failing} failing quality check(s)",
                      kind="deliverable_status")
        if fx:
            settle(entry, fx.update(conn, "deliverable_status", "deliverables", ctid, {"id": str(did)},
                                    DELIVERABLE_STILL, DELIVERABLE_FIX, label=str(did), evidence=DELIVERABLE_EVIDENCE))
        out.append(entry)
    for keep, dup, title in conn.execute("""
            select min(id), unnest((array_agg(id order by id))[2:]), min(title) from todo_items
            where work_task_id >= %s and work_task_id < %s
            group by work_task_id, position, title having count(*) > 1""",
                                         (lo, hi)).fetchall():
        entry = issue("warning", "consistency", "todo_items", dup, f"duplicate of todo {keep} ({title!r})",
                      kind="duplicate_todos")
        ctid = conn.execute("select ctid::text from todo_items where id = %s", (dup,)).fetchone()
        if fx and ctid:
            settle(entry, fx.delete(conn, "duplicate_todos", "todo_items", ctid[0], {"id": str(dup)},
                                    DUPLICATE_STILL, (keep,), label=str(dup)))
        out.append(entry)
    for did, key in conn.execute("""select id, file_key from deliverables
                                    where work_task_id >= %s and work_task_id < %s and file_key is not null
                                      and file_key !~ '^[A-Za-z0-9._/-]+$'""", (lo, hi)).fetchall():
        out.append(issue("warning", "consistency", "deliverables", did, f"file_key {key!r} is not a valid object key"))
    return n, out


# performance ----------------------------------------------------------------------------------------------------

def check_performance(conn: psycopg.Connection, fx: Fixer | None) -> tuple[int, list[dict[str, Any]]]:
    out = []
    for fk in foreign_keys(conn):
        indexed = conn.execute("""select exists (select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid
                                  and a.attnum = i.indkey[0] where i.indrelid = %s::regclass and a.attname = %s)""",
                               (fk["table"], fk["cols"][0])).fetchone()[0]
        if not indexed:
            out.append(issue("warning", "performance", fk["table"], fk["name"], f"foreign key column {fk['cols'][0]} "
                                                                               "has no index"))
    stats = conn.execute("""select relname, coalesce(seq_scan, 0), coalesce(idx_scan, 0), n_live_tup, n_dead_tup
                            from pg_stat_user_tables where schemaname = 'public'""").fetchall()
    for name, seq, idx, live, dead in stats:
        if live > 10_000 and seq > 100 and seq > 10 * max(idx, 1):
            out.append(issue("warning", "performance", name, "seq_scan", f"{seq} sequential scans vs {idx} index scans "
                                                                         f"on {live:,} rows"))
        if dead > 1_000 and dead > 0.2 * max(live, 1):
            out.append(issue("info", "performance", name, "n_dead_tup", f"{dead:,} dead rows for {live:,} live: "
                                                                        "vacuum it (VACUUM (ANALYZE))"))
    total = conn.execute("select count(*) from work_tasks").fetchone()[0]
    if total >= 1_000:
        top = conn.execute("""select workgroup_id, count(*) from work_tasks
                              group by 1 order by 2 desc limit 1""").fetchone()
        if top and top[1] > 0.8 * total:
            out.append(issue("info", "performance", "work_tasks", f"workgroup_id={top[0]}",
                             f"skewed: {top[1] / total:.0%} of work tasks belong to one workgroup"))
    return len(stats), out


# plan, run, report ----------------------------------------------------------------------------------------------

def plan_units(settings: Settings) -> list[dict[str, Any]]:
    with pg_connect(settings) as conn:
        fks = foreign_keys(conn)
        lo, hi = conn.execute("select coalesce(min(id), 1), coalesce(max(id), 0) from work_tasks").fetchone()
    units: list[dict[str, Any]] = [{"check": "config"}, {"check": "cycles"}, {"check": "performance"}]
    units += [{"check": "blank", "table": t} for t in TEXT_COLUMNS]
    units += [{"check": "fk", "name": fk["name"]} for fk in fks]
    units += [{"check": "tasks", "lo": lo + i * RANGE, "hi": lo + (i + 1) * RANGE}
              for i in range(max(1, math.ceil((hi - lo + 1) / RANGE)))]
    units += [{"check": "dynamo", "segment": i, "segments": settings.dynamo_segments}
              for i in range(settings.dynamo_segments)]
    return units


def unit_name(unit: dict[str, Any]) -> str:
    """A unit's name in its quarantine objects' names."""
    detail = unit.get("name") or unit.get("table") or unit.get("lo") or unit.get("segment")
    return re.sub(r"[^0-9A-Za-z_-]", "_", f"{unit['check']}-{detail}" if detail is not None else unit["check"])[:80]


def run_unit(settings: Settings, unit: dict[str, Any], fx: Fixer | None) -> dict[str, Any]:
    if unit["check"] == "dynamo":
        n, issues = check_dynamo(settings, unit["segment"], unit["segments"], fx)
        return {"checked": n, "issues": issues, **kept(fx)}
    with pg_connect(settings) as conn:
        pin_session(conn)  # the rows' text kept in the quarantine: the same on undo's side
        if unit["check"] == "config":
            n, issues = check_config(conn, fx)
        elif unit["check"] == "cycles":
            n, issues = check_cycles(conn, fx)
        elif unit["check"] == "performance":
            n, issues = check_performance(conn, fx)
        elif unit["check"] == "blank":
            n, issues = check_blank_text(conn, unit["table"], fx)
        elif unit["check"] == "fk":
            n, issues = check_fk(conn, next(f for f in foreign_keys(conn) if f["name"] == unit["name"]), fx)
        else:
            n, issues = check_tasks(conn, unit["lo"], unit["hi"], fx)
        if fx:
            fx.commit(conn)  # the quarantine first, then the commit
        else:
            conn.commit()
    return {"checked": n, "issues": issues, **kept(fx)}


def kept(fx: Fixer | None) -> dict[str, int]:
    return {"quarantined": fx.kept if fx else 0}


def validation_report(job_id: str, fix: bool, results: list[dict[str, Any]], options: dict[str, Any] | None = None,
                      settings: Settings | None = None) -> ValidationReport:
    issues = [Issue(**i) for r in results for i in r["issues"]]
    checked = sum(r["checked"] for r in results)
    bad_records = {(i.table, i.key) for i in issues if i.category != "performance"}
    open_errors = [i for i in issues if i.severity == "error" and not i.fixed]
    error = (f"{len(open_errors)} error(s) remain" + ("" if fix else "; --fix repairs the fixable ones")
             if open_errors else None)
    quarantined = sum(r.get("quarantined", 0) for r in results)
    where = None
    if fix and settings and options and "prefix" in options:  # listed: a unit redelivered after its commit
        store = store_for(settings, options)  # returns nothing kept, its first delivery's object is there
        if any(True for _ in store.list(quarantine.folder(options, job_id))):
            where = quarantine.where(settings, options, job_id)
    return ValidationReport(job_id=job_id, state="succeeded", ok=not open_errors, fix=fix, records_checked=checked,
                            records_valid=max(checked - len(bad_records), 0), issues=issues,
                            by_severity=dict(Counter(i.severity for i in issues)),
                            by_category=dict(Counter(i.category for i in issues)),
                            by_table=dict(Counter(i.table for i in issues)), fixed=sum(i.fixed for i in issues),
                            error=error, fix_kinds=list((options or {}).get("fix_kinds") or []) if fix else [],
                            pending=sum(i.pending for i in issues), quarantine=where, quarantined=quarantined)


@app.task(name=TASK_VALIDATE_DATA_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    units = plan_units(self.settings)
    if not jobs.start(self.redis, job_id, len(units)):
        return {"job_id": job_id, "skipped": "already planned"}
    fan_out([check.s(job_id=job_id, unit=u) for u in units], finalize.s(job_id=job_id))
    return {"job_id": job_id, "chunks": len(units)}


@app.task(name=TASK_VALIDATE_DATA_CHECK, base=JobTask, bind=True)
def check(self: JobTask, job_id: str, unit: dict[str, Any]) -> dict[str, Any]:
    options = jobs.options(self.redis, job_id)
    fx = (Fixer(self.settings, self.redis, job_id, options, unit_name(unit))
          if options.get("fix") and "prefix" in options else None)  # a job queued before quarantines: no fixes
    result = run_unit(self.settings, unit, fx)
    jobs.add(self.redis, job_id, rows=result["checked"])
    return result


@app.task(name=TASK_VALIDATE_DATA_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    options = jobs.options(self.redis, job_id)
    report = validation_report(job_id, bool(options.get("fix")), results, options, self.settings)
    jobs.finish(self.redis, job_id, report)
    data = report.model_dump(mode="json")
    last = ("job_id", "finished_at", "ok", "records_checked", "by_severity", "fixed", "error")
    self.redis.set(LAST_VALIDATION_KEY, json.dumps({k: data[k] for k in last}))
    return {"job_id": job_id, "issues": len(report.issues)}
