"""`worktask testdata generate|cleanup`: realistic, marked test data, fanned out in chunks across workers.

Each chunk makes CHUNK work tasks from its own random generator (seed, chunk number): the same seed
and count give the same data. Rows are bulk-loaded with COPY (ids reserved from the tables' own
sequences), DynamoDB analysis items with BatchWriteItem, deliverable files under `test-data/`.
Test data is marked (is_test, an is_test attribute, the test-data/ prefix): cleanup removes exactly it.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from psycopg import sql

from worker import backups, jobs
from worker.app import app
from worker.connections import aws_client, pg_connect
from worker.constants import TASK_TESTDATA_CHUNK, TASK_TESTDATA_CLEAN, TASK_TESTDATA_FINALIZE, TASK_TESTDATA_START
from worker.dynamo import batch_write, to_item
from worker.dynamo import exists as dynamo_exists
from worker.errors import JobFailed
from worker.reports import TestDataReport
from worker.settings import Settings
from worker.taskbase import JobTask, fan_out

CHUNK = 1000
FILES_PREFIX = "test-data/"
VERBS = ["Implement", "Refactor", "Document", "Harden", "Migrate", "Benchmark", "Review", "Automate", "Design",
         "Instrument", "Fix", "Upgrade"]
OBJECTS = ["payment retry logic", "search indexing pipeline", "OAuth token refresh", "audit log export",
           "order history API", "rate limiter", "onboarding flow", "nightly ETL job", "feature flag service",
           "image upload service", "notification preferences", "billing webhooks", "session store",
           "tenant isolation checks", "CSV import", "dashboard latency"]
CONTEXT = ["for the EU region", "behind a feature flag", "with zero downtime", "for the mobile clients",
           "ahead of the Q3 release", "after the incident review", "for enterprise tenants", "in the staging cluster"]
STEPS = ["Write the design note", "Add failing tests", "Implement the change", "Update the API schema",
         "Add metrics and alerts", "Run the load test", "Review with the owning team", "Update the runbook",
         "Roll out to staging", "Roll out to production"]
PRIORITIES = ["low", "medium", "high", "critical"]


def _ts(t: datetime) -> str:
    return t.isoformat()


def _copy(cur: Any, table: str, columns: list[str], rows: list[list[Any]]) -> None:
    query = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table),
                                                      sql.SQL(", ").join(map(sql.Identifier, columns)))
    with cur.copy(query) as copy:
        for row in rows:
            copy.write_row(row)


def _reserve(cur: Any, table: str, n: int) -> list[int]:
    if n == 0:
        return []
    return [r[0] for r in cur.execute("select nextval(pg_get_serial_sequence(%s, 'id')) from generate_series(1, %s)",
                                      (table, n))]


def make_chunk(rng: random.Random, n: int, standards: dict[int, tuple[str, int]],
               types: list[tuple[int, str, str, int]], workgroups: list[int],
               now: datetime) -> dict[str, list[dict[str, Any]]]:
    """The rows of n work tasks (ids assigned later): tasks with todos (a DAG), deliverables, checks."""
    tasks = []
    for _ in range(n):
        created = now - timedelta(days=rng.uniform(1, 120))
        todo_count = rng.randint(3, 7)
        done = rng.choice([0, 0, rng.randint(0, todo_count), todo_count])
        todos = []
        for p in range(todo_count):
            status = "done" if p < done else rng.choice(["pending", "pending", "in_progress", "blocked"])
            deps = sorted(rng.sample(range(p), k=min(p, rng.randint(0, 2))))  # only earlier todos: a DAG
            todos.append({"title": f"{STEPS[p % len(STEPS)]} ({p + 1}/{todo_count})", "status": status,
                          "position": p, "deps": deps})
        if done == todo_count:
            status, completed = "completed", created + timedelta(days=rng.uniform(0.5, 30))
        elif done:
            status, completed = rng.choice(["in_progress", "blocked"]), None
        else:
            status, completed = rng.choice(["pending", "pending", "cancelled"]), None
        title = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(CONTEXT)}"
        deliverables = []
        for d in range(rng.randint(1, 3)):
            type_id, type_key, ext, std_id = rng.choice(types)  # checked against its type's standard
            std_key, threshold = standards[std_id]
            score = round(rng.uniform(55, 99), 2)
            passed = score >= threshold
            deliverables.append({"name": f"{title[:60]} — {type_key.replace('_', ' ')} {d + 1}", "type_id": type_id,
                                 "ext": ext, "todo": rng.randrange(todo_count) if rng.random() < 0.7 else None,
                                 "status": ("approved" if passed else "rejected") if status == "completed"
                                 else rng.choice(["draft", "submitted"]),
                                 "check": {"standard_id": std_id, "score": score, "passed": passed,
                                           "details": {"standard": std_key, "reviewer": "test-data"}}})
        tasks.append({"title": title, "description": f"{title}. Generated test data; safe to delete.",
                      "priority": rng.choice(PRIORITIES), "status": status, "workgroup_id": rng.choice(workgroups),
                      "created": created, "completed": completed, "todos": todos, "deliverables": deliverables})
    return {"tasks": tasks}


def generate_chunk(settings: Settings, options: dict[str, Any], chunk: int, count: int) -> dict[str, int]:
    rng = random.Random(f"{options['seed']}:{chunk}")
    now = datetime(2026, 1, 1, tzinfo=UTC) if options.get("seed_given") else datetime.now(UTC)
    out = {"tasks": 0, "todos": 0, "deliverables": 0, "quality_checks": 0, "analysis_items": 0, "files": 0}
    with pg_connect(settings) as conn, conn.cursor() as cur:
        standards = {i: (k, t) for i, k, t in cur.execute("select id, key, threshold from quality_standards")}
        types = [(i, k, (ext or [".txt"])[0], std) for i, k, ext, std in
                 cur.execute("select id, key, extensions, standard_id from artifact_types order by key").fetchall()]
        workgroups = [r[0] for r in cur.execute("select id from workgroup_skills order by key")]
        if not (standards and types and workgroups):
            raise JobFailed("no seeded configuration: run worktask seed first")
        data = make_chunk(rng, count, standards, types, workgroups, now)["tasks"]
        task_ids = _reserve(cur, "work_tasks", len(data))
        todo_ids = iter(_reserve(cur, "todo_items", sum(len(t["todos"]) for t in data)))
        deliv_ids = iter(_reserve(cur, "deliverables", sum(len(t["deliverables"]) for t in data)))
        check_ids = iter(_reserve(cur, "quality_checks", sum(len(t["deliverables"]) for t in data)))
        rows: dict[str, list[list[Any]]] = {"work_tasks": [], "todo_items": [], "todo_dependencies": [],
                                            "deliverables": [], "quality_checks": []}
        items, files = [], []
        for tid, t in zip(task_ids, data):
            upd = t["completed"] or t["created"] + timedelta(hours=rng.uniform(1, 48))
            rows["work_tasks"].append([tid, t["title"], t["description"], t["priority"], t["status"], t["workgroup_id"],
                                       True, _ts(t["created"]), _ts(upd),
                                       _ts(t["completed"]) if t["completed"] else None])
            ids = []
            for todo in t["todos"]:
                ids.append(next(todo_ids))
                rows["todo_items"].append([ids[-1], tid, todo["title"], todo["status"], todo["position"], True,
                                           _ts(t["created"]), _ts(upd)])
                rows["todo_dependencies"] += [[ids[-1], ids[d]] for d in todo["deps"]]
            for d in t["deliverables"]:
                did = next(deliv_ids)
                key = f"{FILES_PREFIX}{tid}/{did}{d['ext']}"
                rows["deliverables"].append([did, tid, ids[d["todo"]] if d["todo"] is not None else None, d["type_id"],
                                             d["name"], key, d["status"], True, _ts(t["created"]), _ts(upd)])
                c = d["check"]
                rows["quality_checks"].append([next(check_ids), did, c["standard_id"], c["score"], c["passed"],
                                               json.dumps(c["details"]), _ts(upd)])
                files.append((key, f"# {d['name']}\n\nDeliverable of work task {tid}. Test data.\n"))
            items.append({"PK": f"TASK#{tid}", "SK": "ANALYSIS", "type": "analysis", "is_test": True,
                          "work_task_id": tid, "complexity": rng.randint(1, 13),
                          "risk": rng.choice(["low", "medium", "high"]),
                          "summary": f"Analysis of '{t['title']}': {len(t['todos'])} steps, "
                                     f"{len(t['deliverables'])} deliverable(s).",
                          "estimated_hours": round(rng.uniform(2, 80), 1)})
        cols = {"work_tasks": ["id", "title", "description", "priority", "status", "workgroup_id", "is_test",
                               "created_at", "updated_at", "completed_at"],
                "todo_items": ["id", "work_task_id", "title", "status", "position", "is_test", "created_at",
                               "updated_at"],
                "todo_dependencies": ["todo_id", "depends_on_todo_id"],
                "deliverables": ["id", "work_task_id", "todo_id", "artifact_type_id", "name", "file_key", "status",
                                 "is_test", "created_at", "updated_at"],
                "quality_checks": ["id", "deliverable_id", "standard_id", "score", "passed", "details", "checked_at"]}
        for table in cols:
            _copy(cur, table, cols[table], rows[table])
        conn.commit()
    write_items(settings, items)
    if not options.get("no_files"):
        store = backups.store_for(settings, options)
        for key, text in files:
            store.put(key, text.encode())
        out["files"] = len(files)
    out.update(tasks=len(rows["work_tasks"]), todos=len(rows["todo_items"]), deliverables=len(rows["deliverables"]),
               quality_checks=len(rows["quality_checks"]), analysis_items=len(items))
    return out


def write_items(settings: Settings, items: list[dict[str, Any]]) -> None:
    client, table = aws_client(settings, "dynamodb"), settings.dynamo_table_name
    try:
        batch_write(client, table, [{"PutRequest": {"Item": to_item(it)}} for it in items])
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise JobFailed(f"DynamoDB table {table} does not exist: run worktask migrate first") from None
        raise


def cleanup(settings: Settings, options: dict[str, Any]) -> dict[str, int]:
    """Remove exactly the test data: marked rows (and what cascades from them), marked items, test-data/ files."""
    out = {}
    with pg_connect(settings) as conn:  # quality checks and todo dependencies go by ON DELETE CASCADE
        out["quality_checks"] = conn.execute("""select count(*) from quality_checks q join deliverables d
                                                on d.id = q.deliverable_id where d.is_test""").fetchone()[0]
        out["deliverables"] = conn.execute("delete from deliverables where is_test").rowcount
        out["todos"] = conn.execute("delete from todo_items where is_test").rowcount
        out["tasks"] = conn.execute("delete from work_tasks where is_test").rowcount
        conn.commit()
    client, table = aws_client(settings, "dynamodb"), settings.dynamo_table_name
    keys = [] if not dynamo_exists(client, table) else [
        (i["PK"], i["SK"]) for page in client.get_paginator("scan").paginate(
            TableName=table, FilterExpression="is_test = :t", ExpressionAttributeValues={":t": {"BOOL": True}},
            ProjectionExpression="PK, SK") for i in page.get("Items", [])]
    batch_write(client, table, [{"DeleteRequest": {"Key": {"PK": pk, "SK": sk}}} for pk, sk in keys])
    out["analysis_items"] = len(keys)
    store = backups.store_for(settings, options)
    files = [o.key for o in store.list(FILES_PREFIX)]
    store.delete(files)
    out["files"] = len(files)
    return out


def report(job_id: str, options: dict[str, Any], counts: dict[str, int]) -> TestDataReport:
    return TestDataReport(job_id=job_id, kind=f"testdata_{options['action']}", state="succeeded", ok=True,
                          seed=options.get("seed"), **counts)


@app.task(name=TASK_TESTDATA_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    if options["action"] == "cleanup":
        jobs.start(self.redis, job_id, 1)
        fan_out([clean.s(job_id=job_id)], finalize.s(job_id=job_id))
        return {"job_id": job_id}
    count = options["count"]
    parts = [(i, min(CHUNK, count - i * CHUNK)) for i in range((count + CHUNK - 1) // CHUNK)]
    if not jobs.start(self.redis, job_id, len(parts)):
        return {"job_id": job_id, "skipped": "already planned"}
    fan_out([generate.s(job_id=job_id, chunk=i, count=n) for i, n in parts], finalize.s(job_id=job_id))
    return {"job_id": job_id, "chunks": len(parts)}


@app.task(name=TASK_TESTDATA_CHUNK, base=JobTask, bind=True)
def generate(self: JobTask, job_id: str, chunk: int, count: int) -> dict[str, int]:
    done = jobs.marked(self.redis, job_id, f"generated:{chunk}")
    if done:  # a redelivered chunk that committed already
        return done
    out = generate_chunk(self.settings, jobs.options(self.redis, job_id), chunk, count)
    jobs.mark(self.redis, job_id, f"generated:{chunk}", out)
    jobs.add(self.redis, job_id, rows=out["tasks"] + out["todos"] + out["deliverables"] + out["quality_checks"])
    return out


@app.task(name=TASK_TESTDATA_CLEAN, base=JobTask, bind=True)
def clean(self: JobTask, job_id: str) -> dict[str, int]:
    out = cleanup(self.settings, jobs.options(self.redis, job_id))
    jobs.add(self.redis, job_id, rows=sum(out.values()))
    return out


@app.task(name=TASK_TESTDATA_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[dict[str, int]], job_id: str) -> dict[str, Any]:
    options = jobs.options(self.redis, job_id)
    counts = {k: sum(r.get(k, 0) for r in results) for k in
              ("tasks", "todos", "deliverables", "quality_checks", "analysis_items", "files")}
    jobs.finish(self.redis, job_id, report(job_id, options, counts))
    return {"job_id": job_id, **counts}
