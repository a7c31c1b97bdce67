"""`worktask validate undo JOB_ID`: put back what a validation job's fixes deleted or overwrote, from its
quarantine (worker/quarantine.py), refusing where the live data has moved on since.

It runs in the CLI process (small; its refusals name rows and exit 2), not as a job on the workers:

1. read the job's quarantine; a document whose fixing transaction rolled back (pg_xact_status `aborted`)
   is skipped, one still running (`in progress`) refuses the whole undo;
2. take each row and item once, as the job's fixes left it (after the last fix that touched it) and as it was
   before the first, and compare it with the live one (`t::text` under rowhash.SESSION_SETTINGS, looked up
   by its key columns taken from the stored row): `restore` (live as the fixes left it), `already there`
   (live as before them), or a conflict (the key reused, the row moved on or gone);
3. PostgreSQL: every change in ONE transaction, each row read `for update` before anything is written, the
   deleted rows first (parents before the rows that reference them), then the updated ones; any conflict
   rolls everything back (exit 2). DynamoDB afterwards: a conditional put per item
   (attribute_not_exists(PK)); one that fails is a conflict after the PostgreSQL commit (exit 1, the report
   says what was put back and what was not).

While it writes it holds the live database's restore lock (worker/jobs.py, restore_target.LIVE_LOCK) under
a job record of its own (kind `validate_undo`), so that no restore (and no backup) starts meanwhile, and it
refuses while one holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker import jobs, quarantine
from worker.backups import store_for
from worker.errors import BadInput, ServiceUnavailable
from worker.reports import UndoConflict, UndoReport, UndoSkipped, UndoTable, utcnow
from worker.rowhash import SESSION_SETTINGS, dynamo_item_hash
from worker.settings import Settings

ABSENT = None  # the state of a row or item that does not exist

# why a row cannot be put back, by the kind of mismatch
KEY_REUSED = "key reused"
MOVED_ON = "moved on since the fix"
GONE = "gone since the fix"
LOCK_TTL_S = 1800  # the live restore lock an undo holds lapses after this even if the undo was killed outright


def key_text(row: dict[str, Any]) -> str:
    """A row's key as a report names it: `id=123`, `PK=TASK#1 SK=ANALYSIS`."""
    parts = []
    for col, value in row["key"].items():
        if isinstance(value, dict) and len(value) == 1:  # DynamoDB: {"S": ...}
            value = next(iter(value.values()))
        parts.append(f"{col}={value}")
    return " ".join(parts)


class _Postgres:
    """Reads and writes rows of the live database inside one transaction, row text as the quarantine has it."""

    def __init__(self, conn: Any):
        self.conn = conn
        self._columns: dict[str, tuple[list[str], set[str], set[str]]] = {}

    def pin(self) -> None:
        for name, value in SESSION_SETTINGS.items():
            self.conn.execute("select set_config(%s, %s, false)", (name, value))
        # bounded below the lock's own lapse (LOCK_TTL_S): an undo that cannot finish gives up, rolled back
        self.conn.execute("select set_config('statement_timeout', %s, false)", (f"{LOCK_TTL_S // 2}s",))

    def columns(self, table: str) -> tuple[list[str], set[str], set[str]]:
        """(the columns an insert writes: all but the generated ones; identity always columns; nullable ones)."""
        if table not in self._columns:
            rows = self.conn.execute(
                """select attname::text, attidentity, not attnotnull from pg_attribute
                   where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped and attgenerated = ''
                   order by attnum""", (table,)).fetchall()
            if not rows:
                raise BadInput(f"the quarantine names table {table}, which does not exist here: nothing was put back")
            self._columns[table] = ([r[0] for r in rows], {r[0] for r in rows if r[1] == "a"},
                                    {r[0] for r in rows if r[2]})
        return self._columns[table]

    def live(self, table: str, key_columns: list[str], row_text: str, lock: bool) -> list[str]:
        """The live rows (t::text) with the stored row's key."""
        from psycopg import sql

        # a key of every column (a table without a primary key) may hold nulls: they match as equal
        nullable = bool(set(key_columns) & self.columns(table)[2])
        query = sql.SQL("select t::text from only {tbl} t where ({cols}) {op} ({vals})").format(
            tbl=sql.Identifier(table), op=sql.SQL("is not distinct from" if nullable else "="),
            cols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key_columns),
            vals=sql.SQL(", ").join(sql.SQL("(%(row)s::{}).{}").format(sql.Identifier(table), sql.Identifier(c))
                                    for c in key_columns))
        if lock:
            query += sql.SQL(" for update")
        return [r[0] for r in self.conn.execute(query, {"row": row_text}).fetchall()]

    def insert(self, table: str, row_text: str, allow_orphan: bool) -> None:
        from psycopg import sql

        cols = self.columns(table)[0]
        query = sql.SQL("insert into {tbl} ({cols}) overriding system value select {vals} "
                        "from (select %s::{tbl} as r) s").format(
            tbl=sql.Identifier(table), cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            vals=sql.SQL(", ").join(sql.SQL("(s.r).{}").format(sql.Identifier(c)) for c in cols))
        # the orphans fix deleted rows whose parent is gone: they go back as they were, without the foreign key's
        # check for that one insert (a failure rolls the caller's savepoint back, and the setting with it)
        if allow_orphan:
            self.conn.execute("select set_config('session_replication_role', 'replica', true)")
        self.conn.execute(query, (row_text,))
        if allow_orphan:
            self.conn.execute("select set_config('session_replication_role', 'origin', true)")

    def update(self, table: str, key_columns: list[str], before: str, after: str) -> int:
        """Set the row with the key back to `before` (every column but the key, generated and identity always)."""
        from psycopg import sql

        cols, always, _ = self.columns(table)
        cols = [c for c in cols if c not in key_columns and c not in always]
        query = sql.SQL("update only {tbl} t set {sets} where ({keys}) = ({vals}) and t::text = %(after)s").format(
            tbl=sql.Identifier(table),
            sets=sql.SQL(", ").join(sql.SQL("{} = (%(before)s::{}).{}").format(
                sql.Identifier(c), sql.Identifier(table), sql.Identifier(c)) for c in cols),
            keys=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key_columns),
            vals=sql.SQL(", ").join(sql.SQL("(%(before)s::{}).{}").format(sql.Identifier(table), sql.Identifier(c))
                                    for c in key_columns))
        return self.conn.execute(query, {"before": before, "after": after}).rowcount


def xact_statuses(conn: Any, docs: list[dict[str, Any]]) -> dict[str, str | None]:
    """Each fixing transaction's fate: committed, aborted, in progress, or None (too old to know)."""
    import psycopg

    statuses: dict[str, str | None] = {}
    for xid in {d["xid"] for d in docs if d.get("xid")}:
        try:
            with conn.transaction():
                statuses[xid] = conn.execute("select pg_xact_status(%s::xid8)", (str(xid),)).fetchone()[0]
        except psycopg.Error as err:
            raise BadInput(f"the quarantine's transaction id {xid!r} is not one of this server "
                           f"({str(err).strip().splitlines()[0]})") from None
    return statuses


class _Plan:
    """What undo does row by row, and the tally per table."""

    def __init__(self, report: UndoReport):
        self.report = report
        self.tables: dict[tuple[str, str], UndoTable] = {}

    def table(self, store: str, name: str) -> UndoTable:
        if (store, name) not in self.tables:
            self.tables[(store, name)] = UndoTable(store=store, table=name)
            self.report.tables.append(self.tables[(store, name)])
        return self.tables[(store, name)]

    def conflict(self, store: str, table: str, row: dict[str, Any], why: str) -> None:
        self.table(store, table).conflicts += 1
        self.report.conflicts.append(UndoConflict(store=store, table=table, key=key_text(row), why=why))


@dataclass
class Entry:
    """One row or item as the job's fixes left it: its state before the first fix that touched it (`original`)
    and after the last (`final`, ABSENT when that one deleted it). A row changed by two fixes of the job (a
    deliverable's status, then its todo_id set null by a cascade) goes back to before the first in one step."""

    store: str
    table: str
    name: str  # key_text
    row: dict[str, Any]  # the first change's row (its key)
    key_columns: list[str]
    original: Any
    final: Any
    orphan: bool = False  # deleted by the orphans fix: its parent was already gone


def entries(docs: list[dict[str, Any]]) -> list[Entry]:
    """Every row and item the documents name, once, in the order of their first change (oldest document first,
    then change order: parents before the rows that reference them)."""
    seen: dict[tuple[str, str, str], Entry] = {}
    for doc in docs:
        for change in doc["changes"]:
            store, table, delete = change["store"], change["table"], change["action"] == "delete"
            for row in change["rows"]:
                name = key_text(row)
                after = ABSENT if delete else row.get("after", ABSENT)
                entry = seen.get((store, table, name))
                if entry is None:
                    entry = seen[(store, table, name)] = Entry(store, table, name, row, change.get("key_columns") or [],
                                                               row["before"], after)
                entry.final = after
                entry.orphan = entry.orphan or (delete and change.get("kind") == "orphans")
    return list(seen.values())


def classify(entry: Entry, live: Any, same: Callable[[Any, Any], bool]) -> str:
    """`restore` (live as the fixes left it), `already` (live as before them), or why it conflicts."""
    if same(live, entry.final):
        return "restore"
    if same(live, entry.original):
        return "already"
    if entry.final is ABSENT:
        return KEY_REUSED
    return GONE if live is ABSENT else MOVED_ON


def _same_row(a: Any, b: Any) -> bool:
    return a == b


def _same_item(a: Any, b: Any) -> bool:
    if a is ABSENT or b is ABSENT:
        return a is b
    return dynamo_item_hash(a) == dynamo_item_hash(b)


def plan_postgres(pg: _Postgres, plan: _Plan, docs: list[dict[str, Any]], apply: bool) -> None:
    """Classify every PostgreSQL row against the live one (read `for update` when applying); with apply, write
    each back inside the caller's transaction: the updates after every insert, and an insert that needs a row
    not yet put back (a foreign key) tried again after the others. The caller rolls back on any conflict."""
    todo: list[Entry] = []
    for entry in entries(docs):
        if entry.store != "postgres":
            continue
        tally = plan.table("postgres", entry.table)
        found = pg.live(entry.table, entry.key_columns, entry.original, lock=apply)
        if len(found) > 1:
            plan.conflict("postgres", entry.table, entry.row, f"{len(found)} live rows have that key")
            continue
        outcome = classify(entry, found[0] if found else ABSENT, _same_row)
        if outcome == "already":
            tally.already += 1
        elif outcome == "restore":
            tally.restored += 1  # a dry run's or a refused undo's `would restore`
            todo.append(entry)
        else:
            plan.conflict("postgres", entry.table, entry.row, outcome)
    if not apply or plan.report.conflicts:
        return
    inserts = [e for e in todo if e.final is ABSENT]
    while inserts:  # parents first: an insert whose parent is not back yet waits for the next round
        waiting = [e for e in inserts if not _write(pg, plan, e, last_round=False)]
        if len(waiting) == len(inserts):
            for e in waiting:
                _write(pg, plan, e, last_round=True)
            break
        inserts = waiting
    for entry in todo:
        if entry.final is not ABSENT:
            _write(pg, plan, entry, last_round=True)


def _write(pg: _Postgres, plan: _Plan, entry: Entry, last_round: bool) -> bool:
    """Put one row back in a savepoint; False when its foreign key's row is not there (yet), unless last_round
    (then that is a conflict)."""
    import psycopg

    why = None
    try:
        with pg.conn.transaction():
            if entry.final is ABSENT:
                pg.insert(entry.table, entry.original, allow_orphan=entry.orphan)
            elif pg.update(entry.table, entry.key_columns, entry.original, entry.final) != 1:
                why = MOVED_ON  # cannot happen under `for update`: a guard
    except psycopg.errors.UniqueViolation:
        why = KEY_REUSED
    except psycopg.errors.ForeignKeyViolation:
        if not last_round:
            return False
        why = "a row it references is gone"
    except psycopg.errors.InsufficientPrivilege:
        why = ("its parent row is gone: putting an orphan back needs session_replication_role (a superuser or "
               "the SET privilege on it)")
    if why:
        plan.table("postgres", entry.table).restored -= 1
        plan.conflict("postgres", entry.table, entry.row, why)
    return True


def _get_item(client: Any, table: str, key: dict[str, Any]) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.get_item(TableName=table, Key=key, ConsistentRead=True)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        if code == "ResourceNotFoundException":
            raise BadInput(f"the quarantine names DynamoDB table {table}, which does not exist here: nothing was "
                           "put back") from None
        raise ServiceUnavailable(f"DynamoDB refused GetItem on {table} ({code}): nothing was put back") from None
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach DynamoDB: {err}; nothing was put back") from None


def dynamo_steps(client: Any, plan: _Plan, docs: list[dict[str, Any]]) -> list[Entry]:
    """Classify the DynamoDB items against the live ones (consistent reads); the items to put back."""
    from worker.dynamo import from_export, to_export

    steps = []
    for entry in entries(docs):
        if entry.store != "dynamodb":
            continue
        tally = plan.table("dynamodb", entry.table)
        item = _get_item(client, entry.table, from_export(entry.row["key"]))
        outcome = classify(entry, to_export(item["Item"]) if "Item" in item else ABSENT, _same_item)
        if outcome == "already":
            tally.already += 1
        elif outcome == "restore":
            steps.append(entry)
            tally.restored += 1  # a dry run's `would restore`; put_items takes back what it could not put
        else:
            plan.conflict("dynamodb", entry.table, entry.row, outcome)
    return steps


def put_items(client: Any, plan: _Plan, steps: list[Entry]) -> None:
    """Put the items back (after PostgreSQL committed); one that fails is a conflict, the others still go."""
    from botocore.exceptions import BotoCoreError, ClientError

    from worker.dynamo import from_export

    for entry in steps:
        table, row = entry.table, entry.row
        try:
            client.put_item(TableName=table, Item=from_export(entry.original),
                            ConditionExpression="attribute_not_exists(PK)")
        except (ClientError, BotoCoreError) as err:
            code = err.response.get("Error", {}).get("Code", "?") if isinstance(err, ClientError) else str(err)
            why = "an item with that key was written meanwhile" if code == "ConditionalCheckFailedException" else \
                f"DynamoDB failed: {code}"
            plan.table("dynamodb", table).restored -= 1
            plan.conflict("dynamodb", table, row, f"{why}: not put back")


def refusal(report: UndoReport) -> str:
    """The one line of a refused undo."""
    named = ", ".join(f"{c.table} {c.key} ({c.why})" for c in report.conflicts[:3])
    more = ", ..." if len(report.conflicts) > 3 else ""
    return (f"undo refused: {len(report.conflicts)} row(s) changed since the fix, e.g. {named}{more}: "
            "nothing was put back")


def refuse_while_running(settings: Settings, job_id: str) -> None:
    """A validation job still queued or running may fix (and quarantine) more: undo after it has ended."""
    from worker.connections import check_redis

    r = check_redis(settings)
    held = jobs.read(r, job_id)
    if held is not None and not held.finished:
        raise BadInput(f"validation job {job_id} has not ended (state {held.state}): it may fix more; undo once it "
                       f"has ended (worktask jobs show {job_id}): nothing was put back")


def hold(r: Any) -> None:
    from worker.restore_target import LIVE_LOCK

    r.expire(jobs.LOCK_KEY.format(resource=LIVE_LOCK), LOCK_TTL_S)


def _lock(settings: Settings, job_id: str) -> tuple[Any, str]:
    """Hold the live database's restore lock under a job record of undo's own; BadInput while a restore runs."""
    from worker.connections import check_redis
    from worker.restore_target import LIVE_LOCK

    r = check_redis(settings)
    undo_id = jobs.create(r, "validate_undo", {"job_id": job_id}, job_id=jobs.new_job_id("undo"), state="running",
                          started_at=utcnow().isoformat())
    holder = jobs.lock(r, LIVE_LOCK, undo_id)
    if holder:
        what = "another undo" if jobs.job_kind(r, holder) == "validate_undo" else "a restore of the live database"
        jobs.fail(r, undo_id, f"{what} is running (job {holder})")
        raise BadInput(f"{what} is running (job {holder}): nothing was put back; undo after it "
                       f"(worktask jobs show {holder})")
    # an undo killed outright (its record left `running`) must not hold restores back for the job TTL: the lock
    # lapses on its own LOCK_TTL_S after it was last renewed (here, and before the DynamoDB puts)
    hold(r)
    return r, undo_id


def check_shape(docs: list[dict[str, Any]]) -> None:
    """Every change is one undo knows how to reverse (BadInput naming the object otherwise: nothing changed)."""
    known = {("postgres", "delete"), ("postgres", "update"), ("dynamodb", "delete")}
    for doc in docs:
        for change in doc.get("changes") or []:
            if (change.get("store"), change.get("action")) not in known or not isinstance(change.get("rows"), list) \
                    or (change["store"] == "postgres" and not change.get("key_columns")):
                raise BadInput(f"quarantine object {doc['object']}: a change undo cannot reverse "
                               f"(store {change.get('store')!r}, action {change.get('action')!r}): nothing was put "
                               "back")


def _postgres_and_plan(settings: Settings, conn: Any, plan: _Plan, docs: list[dict[str, Any]], dry_run: bool,
                       ) -> list[Entry]:
    """Classify every row (and, unless a dry run, write the PostgreSQL ones back) in one transaction, kept only
    when nothing conflicts; the DynamoDB items to put back."""
    import psycopg

    from worker.connections import shared_aws_client

    pg = _Postgres(conn)
    pg.pin()
    conn.commit()
    with conn.transaction():
        plan_postgres(pg, plan, docs, apply=not dry_run)
        steps = dynamo_steps(shared_aws_client(settings, "dynamodb"), plan, docs)
        if plan.report.conflicts or dry_run:
            raise psycopg.Rollback()  # nothing written stays
    return steps


def undo(settings: Settings, job_id: str, dry_run: bool = False) -> tuple[dict[str, Any], int]:
    """Undo the job's fixes; (the report as JSON data, exit code): 0 done (or a dry run), 2 refused (nothing
    changed), 1 PostgreSQL put back but some DynamoDB item not. BadInput before anything is changed for a
    malformed id, no quarantine, a fix still running or a restore running."""
    import psycopg

    from worker.connections import pg_connect, shared_aws_client
    from worker.restore_target import LIVE_LOCK

    jobs.check_id(job_id)
    refuse_while_running(settings, job_id)
    options = quarantine.store_settings(settings)
    docs = quarantine.read(settings, store_for(settings, options), options, job_id)
    check_shape(docs)
    report = UndoReport(job_id=job_id, state="succeeded", ok=True, dry_run=dry_run, started_at=utcnow(),
                        objects=[d["object"] for d in docs])
    plan = _Plan(report)
    with pg_connect(settings) as conn:
        statuses = xact_statuses(conn, docs)
        conn.rollback()
        running = [d["object"] for d in docs if d.get("xid") and statuses[d["xid"]] == "in progress"]
        if running:
            raise BadInput(f"the fix is still running (its transaction is in progress): {running[0]}; undo once "
                           "the validation job has ended: nothing was put back")
        live_docs = []
        for d in docs:
            if d.get("xid") and statuses[d["xid"]] == "aborted":
                report.skipped.append(UndoSkipped(object=d["object"], why="not applied: its transaction rolled back"))
            else:
                live_docs.append(d)
        lock = None if dry_run else _lock(settings, job_id)
        report.undo_id = lock[1] if lock else None
        try:
            try:
                steps = _postgres_and_plan(settings, conn, plan, live_docs, dry_run)
            except (psycopg.errors.DataError, psycopg.errors.ProgrammingError) as err:  # rolled back: nothing changed
                raise BadInput(f"the quarantine of job {job_id} names a row this database cannot read back "
                               f"({str(err).strip().splitlines()[0]}): nothing was put back") from None
            except psycopg.OperationalError as err:
                raise ServiceUnavailable(f"PostgreSQL failed during the undo ({str(err).strip().splitlines()[-1]}): "
                                         "its transaction did not commit, nothing was put back") from None
            code = 0
            if report.conflicts:
                report.state, report.ok, report.error, code = "failed", False, refusal(report), 2
            elif not dry_run:
                hold(lock[0])  # the lock's lapse counts from here again: the puts are under it
                put_items(shared_aws_client(settings, "dynamodb"), plan, steps)
                if report.conflicts:  # a conditional put failed, after PostgreSQL committed
                    report.state, report.ok, code = "failed", False, 1
                    report.error = ("the PostgreSQL rows were put back, but not every DynamoDB item: " + "; ".join(
                        f"{c.table} {c.key} ({c.why})" for c in report.conflicts[:3]))
        except BaseException as err:
            if lock:
                jobs.fail(lock[0], lock[1], str(err) or type(err).__name__)
                jobs.unlock(lock[0], LIVE_LOCK, lock[1])
            raise
    report.finished_at = utcnow()
    if lock:
        jobs.finish(lock[0], lock[1], report.model_copy(update={"job_id": lock[1]}))
        jobs.unlock(lock[0], LIVE_LOCK, lock[1])
    return report.model_dump(mode="json"), code
