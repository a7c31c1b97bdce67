"""`worktask testdata generate|cleanup`: realistic, marked test data, fanned out in chunks across workers.

Each chunk makes CHUNK work tasks from its own random generator (seed, chunk number): the same seed
and count give the same data. Rows are bulk-loaded with COPY (ids reserved from the tables' own
sequences), DynamoDB analysis items with BatchWriteItem, deliverable files under `test-data/`.
Test data is marked (is_test, an is_test attribute, the test-data/ prefix): cleanup removes exactly it.
A chunk makes its rows once, however often it is delivered: its process may die after the rows' commit
and before the Redis marker that says the chunk is done (`generate_chunk`).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError
from psycopg import sql

from worker import backups, jobs
from worker.app import app
from worker.connections import aws_client, pg_connect, shared_aws_client
from worker.constants import TASK_TESTDATA_CHUNK, TASK_TESTDATA_CLEAN, TASK_TESTDATA_FINALIZE, TASK_TESTDATA_START
from worker.dynamo import batch_write
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
NULL = "\\N"  # COPY text format


_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
COLUMNS = {"work_tasks": ("id", "title", "description", "priority", "status", "workgroup_id", "is_test", "created_at",
                          "updated_at", "completed_at"),
           "todo_items": ("id", "work_task_id", "title", "status", "position", "is_test", "created_at", "updated_at"),
           "todo_dependencies": ("todo_id", "depends_on_todo_id"),
           "deliverables": ("id", "work_task_id", "todo_id", "artifact_type_id", "name", "file_key", "status",
                            "is_test", "created_at", "updated_at"),
           "quality_checks": ("id", "deliverable_id", "standard_id", "score", "passed", "details", "checked_at")}
DYNAMO_THREADS = 4  # BatchWriteItem calls in flight per chunk
CHUNK_LOCK_TIMEOUT = "60s"  # the wait of a chunk delivered again for its earlier delivery's transaction


def _text(value: str) -> str:
    """A string as a COPY text-format field."""
    return value.translate(_ESCAPE)


def _plain(*strings: str) -> bool:
    """Whether the strings hold nothing COPY's text format escapes (then they go in as they are)."""
    return not any(c in s for s in strings for c in "\\\t\n\r")


_CONSTANTS_PLAIN = _plain(*VERBS, *OBJECTS, *CONTEXT, *STEPS, *PRIORITIES, FILES_PREFIX)


def _copy(cur: Any, table: str, lines: list[str]) -> None:
    """COPY the rows (text format, one line each) into table in one write: no per-row formatting."""
    query = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table),
                                                      sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table])))
    with cur.copy(query) as copy:
        copy.write("".join(lines).encode())


def _reserve(cur: Any, counts: dict[str, int]) -> dict[str, list[int]]:
    """Ids from each table's own sequence, n of them per table, in one round trip."""
    parts = [sql.SQL("array(select nextval(pg_get_serial_sequence({}, 'id')) from generate_series(1, {}))").format(
        sql.Literal(table), sql.Literal(n)) for table, n in counts.items()]
    row = cur.execute(sql.SQL("select ") + sql.SQL(", ").join(parts)).fetchone()
    return dict(zip(counts, row))


def _earlier(below: Any, p: int, k: int) -> list[int]:
    """sorted(rng.sample(range(p), k)) for k <= 2 <= 21 (sample's pool path), drawing exactly what it draws."""
    if k == 0:
        return []
    first = below(p)
    if k == 1:
        return [first]
    second = below(p - 1)
    second = p - 1 if second == first else second  # sample moved the last item into the vacancy
    return [first, second] if first < second else [second, first]


def make_chunk(rng: random.Random, n: int, standards: dict[int, tuple[str, int]],
               types: list[tuple[int, str, str, int]], workgroups: list[int],
               now: datetime) -> dict[str, list[dict[str, Any]]]:
    """The rows of n work tasks (ids assigned later): tasks with todos (a DAG), deliverables, checks.

    The hot draws call the generator's own `_randbelow` as `randint`, `randrange`, `choice` and `sample`
    do (randint(a, b) is a + below(b - a + 1), choice(s) is s[below(len(s))]), in the same order: the
    same seed gives the same data as those calls, without their per-call overhead."""
    below, uniform, rand = rng._randbelow, rng.uniform, rng.random
    todo_open, verbs, objects, context = ("pending", "pending", "in_progress", "blocked"), VERBS, OBJECTS, CONTEXT
    n_types, n_groups, n_steps = len(types), len(workgroups), len(STEPS)
    tasks = []
    for _ in range(n):
        created = now - timedelta(days=uniform(1, 120))
        todo_count = 3 + below(5)  # randint(3, 7)
        partly = below(todo_count + 1)  # choice([0, 0, randint(0, todo_count), todo_count])
        done = (0, 0, partly, todo_count)[below(4)]
        todos = []
        for p in range(todo_count):
            status = "done" if p < done else todo_open[below(4)]
            deps = _earlier(below, p, min(p, below(3)))  # only earlier todos: a DAG
            todos.append({"title": f"{STEPS[p % n_steps]} ({p + 1}/{todo_count})", "status": status,
                          "position": p, "deps": deps})
        if done == todo_count:
            status, completed = "completed", created + timedelta(days=uniform(0.5, 30))
        elif done:
            status, completed = ("in_progress", "blocked")[below(2)], None
        else:
            status, completed = ("pending", "pending", "cancelled")[below(3)], None
        title = f"{verbs[below(len(verbs))]} {objects[below(len(objects))]} {context[below(len(context))]}"
        deliverables = []
        for d in range(1 + below(3)):
            type_id, type_key, ext, std_id = types[below(n_types)]  # checked against its type's standard
            std_key, threshold = standards[std_id]
            score = round(uniform(55, 99), 2)
            passed = score >= threshold
            deliverables.append({"name": f"{title[:60]} — {type_key.replace('_', ' ')} {d + 1}", "type_id": type_id,
                                 "ext": ext, "todo": below(todo_count) if rand() < 0.7 else None,
                                 "status": ("approved" if passed else "rejected") if status == "completed"
                                 else ("draft", "submitted")[below(2)],
                                 "check": {"standard_id": std_id, "score": score, "passed": passed,
                                           "details": {"standard": std_key, "reviewer": "test-data"}}})
        tasks.append({"title": title, "description": f"{title}. Generated test data; safe to delete.",
                      "priority": PRIORITIES[below(len(PRIORITIES))], "status": status,
                      "workgroup_id": workgroups[below(n_groups)],
                      "created": created, "completed": completed, "todos": todos, "deliverables": deliverables})
    return {"tasks": tasks}


def _runs(ids: list[int]) -> list[list[int]]:
    """Ascending ids as [first, last] runs (a sequence's reservation: one run unless another session drew
    between): what a chunk notes of the ids it reserved, small whatever the count."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][1] + 1 == i:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def _ids(runs: list[list[int]]) -> list[int]:
    return [i for first, last in runs for i in range(first, last + 1)]


def _lock_chunk(cur: Any, job_id: str, chunk: int) -> None:
    """The chunk's advisory lock, held by its transaction: a second delivery waits here until the first one's
    transaction has ended (committed or rolled back), at most CHUNK_LOCK_TIMEOUT (then it is retried)."""
    before = cur.execute("select current_setting('lock_timeout')").fetchone()[0]
    cur.execute("select set_config('lock_timeout', %s, true)", (CHUNK_LOCK_TIMEOUT,))
    cur.execute("select pg_advisory_xact_lock(hashtext('worktask:testdata'), hashtext(%s))", (f"{job_id}:{chunk}",))
    cur.execute("select set_config('lock_timeout', %s, true)", (before,))


def generate_chunk(settings: Settings, r: Any, job_id: str, options: dict[str, Any], chunk: int,
                   count: int) -> dict[str, int]:
    """Make the chunk's rows (one transaction), then its DynamoDB items and files (upserts), once whatever the
    deliveries: before committing, the chunk notes the ids it reserved in Redis (`made:<chunk>`); a delivery
    that finds the note and those rows in PostgreSQL (its process died after the commit, before the marker)
    makes no row again, only the items and files of those rows, which it draws again from the same seed."""
    rng = random.Random(f"{options['seed']}:{chunk}")
    now = datetime(2026, 1, 1, tzinfo=UTC) if options.get("seed_given") else datetime.now(UTC)
    no_files, no_dynamodb = bool(options.get("no_files")), bool(options.get("no_dynamodb"))
    with pg_connect(settings) as conn, conn.cursor() as cur:
        _lock_chunk(cur, job_id, chunk)
        earlier = jobs.value(r, job_id, f"made:{chunk}")
        if earlier and not cur.execute("select exists (select from work_tasks where id = any(%s))",
                                       (_ids(earlier["work_tasks"]),)).fetchone()[0]:
            earlier = None  # noted, then rolled back (its process died before the commit): made again below
        standards = {i: (k, t) for i, k, t in cur.execute("select id, key, threshold from quality_standards")}
        types = [(i, k, (ext or [".txt"])[0], std) for i, k, ext, std in
                 cur.execute("select id, key, extensions, standard_id from artifact_types order by key").fetchall()]
        workgroups = [row[0] for row in cur.execute("select id from workgroup_skills order by key")]
        if not (standards and types and workgroups):
            raise JobFailed("no seeded configuration: run worktask seed first")
        data = make_chunk(rng, count, standards, types, workgroups, now)["tasks"]
        n_deliverables = sum(len(t["deliverables"]) for t in data)
        if earlier:  # the rows are in: the same ids again, for the items and files
            ids = {table: _ids(runs) for table, runs in earlier.items()}
        else:
            ids = _reserve(cur, {"work_tasks": len(data), "todo_items": sum(len(t["todos"]) for t in data),
                                 "deliverables": n_deliverables, "quality_checks": n_deliverables})
        todo_ids, deliv_ids, check_ids = (iter(ids[t]) for t in ("todo_items", "deliverables", "quality_checks"))
        details = {std_id: _text(json.dumps({"standard": key, "reviewer": "test-data"}))
                   for std_id, (key, _) in standards.items()}
        # titles and names are made of the constants and the seeded keys: escaped only if one of those needs it
        esc = str if _CONSTANTS_PLAIN and _plain(*(k for _, k, _, _ in types), *(e for _, _, e, _ in types)) else _text
        tasks, todos, deps, delivs, checks = [], [], [], [], []  # COPY text lines
        items, files = [], []
        for tid, t in zip(ids["work_tasks"], data):
            completed = t["completed"]
            upd = completed or t["created"] + timedelta(hours=rng.uniform(1, 48))
            created_s, upd_s = t["created"].isoformat(), upd.isoformat()
            tasks.append(f"{tid}\t{esc(t['title'])}\t{esc(t['description'])}\t{t['priority']}\t{t['status']}\t"
                         f"{t['workgroup_id']}\tt\t{created_s}\t{upd_s}\t"
                         f"{completed.isoformat() if completed else NULL}\n")
            todo_of = []
            for todo in t["todos"]:
                todo_id = next(todo_ids)
                todo_of.append(todo_id)
                todos.append(f"{todo_id}\t{tid}\t{esc(todo['title'])}\t{todo['status']}\t{todo['position']}\tt\t"
                             f"{created_s}\t{upd_s}\n")
                for d in todo["deps"]:
                    deps.append(f"{todo_id}\t{todo_of[d]}\n")
            for d in t["deliverables"]:
                did = next(deliv_ids)
                key = f"{FILES_PREFIX}{tid}/{did}{d['ext']}"
                todo_ref = todo_of[d["todo"]] if d["todo"] is not None else NULL
                delivs.append(f"{did}\t{tid}\t{todo_ref}\t{d['type_id']}\t{esc(d['name'])}\t{esc(key)}\t"
                              f"{d['status']}\tt\t{created_s}\t{upd_s}\n")
                c = d["check"]
                checks.append(f"{next(check_ids)}\t{did}\t{c['standard_id']}\t{c['score']}\t"
                              f"{'t' if c['passed'] else 'f'}\t{details[c['standard_id']]}\t{upd_s}\n")
                if not no_files:
                    files.append((key, f"# {d['name']}\n\nDeliverable of work task {tid}. Test data.\n"))
            # drawn with or without --no-dynamodb: the PostgreSQL rows of a seed do not depend on it
            complexity, risk = 1 + rng._randbelow(13), ("low", "medium", "high")[rng._randbelow(3)]
            hours = round(rng.uniform(2, 80), 1)
            if not no_dynamodb:
                items.append(_analysis_item(tid, t, complexity, risk, hours))
        if not earlier:
            for table, lines in zip(COLUMNS, (tasks, todos, deps, delivs, checks)):
                _copy(cur, table, lines)
            # noted before the commit: once committed, the rows are found by these ids
            jobs.put_value(r, job_id, f"made:{chunk}", {table: _runs(v) for table, v in ids.items()})
            conn.commit()
    write_items(settings, items)
    if files:
        store = backups.store_for(settings, options)
        for key, text in files:
            store.put(key, text.encode())
    return {"tasks": len(tasks), "todos": len(todos), "deliverables": len(delivs), "quality_checks": len(checks),
            "analysis_items": len(items), "files": len(files)}


def _analysis_item(tid: int, t: dict[str, Any], complexity: int, risk: str, hours: float) -> dict[str, Any]:
    """The work task's analysis item, in DynamoDB's wire format (what to_item makes of it, without its walk)."""
    summary = f"Analysis of '{t['title']}': {len(t['todos'])} steps, {len(t['deliverables'])} deliverable(s)."
    return {"PK": {"S": f"TASK#{tid}"}, "SK": {"S": "ANALYSIS"}, "type": {"S": "analysis"}, "is_test": {"BOOL": True},
            "work_task_id": {"N": str(tid)}, "complexity": {"N": str(complexity)}, "risk": {"S": risk},
            "summary": {"S": summary}, "estimated_hours": {"N": str(Decimal(str(hours)))}}


def write_items(settings: Settings, items: list[dict[str, Any]]) -> None:
    """BatchWriteItem the items (wire format), DYNAMO_THREADS batches of 25 in flight."""
    if not items:
        return
    client, table = shared_aws_client(settings, "dynamodb"), settings.dynamo_table_name
    requests = [{"PutRequest": {"Item": it}} for it in items]
    size = -(-len(requests) // (25 * DYNAMO_THREADS)) * 25  # whole batches per thread
    parts = [requests[i:i + size] for i in range(0, len(requests), size)]
    try:
        with ThreadPoolExecutor(len(parts)) as pool:
            for done in [pool.submit(batch_write, client, table, part) for part in parts]:
                done.result()
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
    out = generate_chunk(self.settings, self.redis, job_id, jobs.options(self.redis, job_id), chunk, count)
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
