"""`worktask restore`: load in parallel beside the live tables, verifying as it reads, build, swap (DESIGN §9).

    start -> chord(PostgreSQL: load one task per chunk, COPY into the replacement, verified as it is read;
                   DynamoDB: verify one task per chunk) -> after_verify
          -> chord(build one task per PostgreSQL table: keys, checks, indexes;
                   BatchWriteItem one task per verified DynamoDB chunk) -> finalize (one swap transaction)

Each stored chunk of a PostgreSQL table is read once: its load checks the SHA-256 of the stored bytes,
the decryption, the decompression and the row count inside the load's transaction, and a chunk that
fails any of them rolls its load back; after the pass a table with a bad chunk is skipped and its
replacement dropped. The replacement tables are invisible until the swap, so the swap alone is the point
of no return, as before. DynamoDB writes cannot be rolled back: its chunks are verified first and loaded
only then (items are upserted and stay even if the swap then fails, README says so). A failed restore
drops its replacement tables, and the next restore drops those of one that was killed. `--dry-run`
verifies every chunk and writes nothing. One restore runs at a time per target database (a lock its job
holds until it ends: `restore` for the live database, `restore:<target>` for another).

Another target (worker/restore_target.py): every PostgreSQL connection of the job goes to the options'
`target_database`, the DynamoDB items to `target_dynamodb_table`; with `target_table` the one table's
replacement is renamed to that new name instead of swapped (worker/swap_beside.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg

from worker import backups, chunks, dynamo, jobs, restore_target, snapshot, sqltext, swap, swap_beside
from worker.app import app
from worker.chunkcheck import check_chunk, drain, open_chunk, unlisted, verdict
from worker.connections import aws_client, pg_connect, pg_params
from worker.constants import (
    DYNAMO_SCAN_RESTORE_KEY,
    TASK_RESTORE_AFTER_VERIFY,
    TASK_RESTORE_BUILD,
    TASK_RESTORE_FINALIZE,
    TASK_RESTORE_LOAD,
    TASK_RESTORE_START,
    TASK_RESTORE_VERIFY,
)
from worker.dynamo import KEY_SCHEMA, batch_write, from_export, from_export_line, to_export
from worker.errors import CorruptChunk, JobFailed
from worker.plans import RestorePlan
from worker.reports import RestoreReport, RestoreTable, utcnow
from worker.settings import Settings
from worker.taskbase import JobTask, fan_out, finish_owner, on_job_failure

ident = sqltext.ident
BATCH = 25  # BatchWriteItem's limit
# A load's session has its own bounds (TASK_TIME_LIMIT, the chunk's size), not the database's defaults: a COPY fed
# as its chunk downloads is neither a runaway statement nor an idle transaction (as a backup chunk's, DESIGN §12)
OWN_LIMITS = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"}


def plain_blocks(settings: Settings, plan: RestorePlan, table: dict[str, Any], chunk: dict[str, Any]) -> Any:
    return open_chunk(settings, plan.options, plan.backup_id, plan.encryption, plan.compress, table["store"],
                      table["name"], chunk)


ALREADY = "loaded by an earlier delivery"  # not a reason to skip: the chunk's rows are in, once


class _Refused(Exception):
    """The chunk read did not verify: its load is rolled back (the reason is the message)."""


def load_postgres_chunk(settings: Settings, plan: RestorePlan, table: dict[str, Any],
                        chunk: dict[str, Any]) -> tuple[int, str | None]:
    """COPY one chunk into the replacement table, verifying it as it is read: (rows, None) once committed,
    (rows, ALREADY) when an earlier delivery loaded it, or (0, why) when the stored chunk is missing or does
    not verify (nothing of it is kept)."""
    target = swap.replacement(table["name"], plan.tag)
    try:
        src, blocks, hashed = plain_blocks(settings, plan, table, chunk)
    except FileNotFoundError:
        return 0, "missing from the store"
    with src:
        return asyncio.run(_copy_in(settings, target, swap.ledger(plan.tag), table, chunk, blocks, hashed))


async def _copy_in(settings: Settings, target: str, ledger: str, table: dict[str, Any], chunk: dict[str, Any],
                   blocks: Any, hashed: Any) -> tuple[int, str | None]:
    p = pg_params(settings)
    conn = await asyncpg.connect(host=p["host"], port=int(p["port"]), user=p["user"], password=p.get("password"),
                                 database=p["dbname"], timeout=settings.postgres_connect_timeout,
                                 server_settings=OWN_LIMITS)
    rows = 0
    # asyncpg's COPY FROM waits for its transport to take more data and is not woken when the session is lost
    # meanwhile (pg_terminate_backend, a restart): it would wait until TASK_TIME_LIMIT. Lost, the COPY is cancelled.
    copying = asyncio.current_task()

    def lost(_conn: Any) -> None:
        if copying is not None:
            copying.cancel()
    conn.add_termination_listener(lost)

    async def source() -> Any:
        nonlocal rows
        for block in blocks:
            rows += block.count(b"\n")
            yield block
    try:
        async with conn.transaction():
            # exactly once: the ledger row commits with the rows; a second delivery waits here for the first
            # one's transaction and, once that committed, loads nothing
            if not await conn.fetchval(f"insert into {ident(ledger)} (tbl, n, rows) values ($1, $2, $3) "
                                       "on conflict do nothing returning true", table["name"], chunk["n"],
                                       chunk["rows"]):
                return chunk["rows"], ALREADY
            where, args = chunks.row_filter(table, chunk) if chunk.get("range") else ("", [])
            if where:  # a rerun of a key-range chunk (an older backup) replaces what an earlier run loaded
                await conn.execute(f"delete from {ident(target)}{where}", *args)
            whole = not where and not chunk.get("ctid")
            if whole:  # the table's only chunk: emptied in this transaction, so its rows can be written frozen
                await conn.execute(f"truncate {ident(target)}")
            await conn.copy_to_table(target, source=source(), columns=[c["name"] for c in table["columns"]],
                                     schema_name="public", freeze=whole)
            reason = verdict(hashed, chunk, rows, None)
            if reason:  # read whole, but not what the backup wrote: roll this load back
                raise _Refused(reason)
    except CorruptChunk as err:  # the COPY was aborted and its transaction rolled back
        drain(hashed)
        return 0, verdict(hashed, chunk, rows, str(err))
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresError) as err:
        if conn.is_closed() or isinstance(err, asyncpg.AdminShutdownError | asyncpg.InternalClientError):
            # The server ended this session mid-COPY (pg_terminate_backend, a restart): the load's transaction and
            # its ledger row ended with it, so the chunk can be loaded again: a transient error, as a backup's chunk
            raise ConnectionResetError(f"the server ended the load's session ({type(err).__name__}: "
                                       f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if not isinstance(err, asyncpg.PostgresError):
            raise
        # e.g. bytes changed in an unencrypted chunk that the server refused first
        drain(hashed)
        reason = verdict(hashed, chunk, rows, None)
        if reason and reason.startswith("checksum mismatch"):
            return 0, reason
        raise  # the chunk is what the backup wrote: a real error (the job fails, naming it)
    except _Refused as refused:
        return 0, str(refused)
    except asyncio.CancelledError:
        if not conn.is_closed():
            raise
        raise ConnectionResetError("the server ended the load's session mid-COPY") from None
    finally:
        conn.remove_termination_listener(lost)
        await conn.close()
    return rows, None


def verified_lines(settings: Settings, plan: RestorePlan, table: dict[str, Any],
                   chunk: dict[str, Any]) -> Iterator[bytes]:
    """A DynamoDB chunk's lines, given out only once its stored bytes match the manifest's SHA-256: the plain
    text is spooled to a temporary file while the stored bytes are hashed, so nothing of a chunk that changed
    after the verify step is used (DynamoDB writes cannot be rolled back as the PostgreSQL load is)."""
    src, blocks, hashed = plain_blocks(settings, plan, table, chunk)
    with src, tempfile.TemporaryFile() as spool:
        problem = None
        try:
            for block in blocks:
                spool.write(block)
        except CorruptChunk as err:
            problem = str(err)
            while hashed.read(1 << 20):
                pass
        if hashed.sha.hexdigest() != chunk["sha256"]:
            raise JobFailed(f"table {table['name']} chunk {chunk['n']} ({chunk['key']}) changed in the store after it "
                            "was verified (SHA-256 differs): nothing of it was written")
        if problem:
            raise JobFailed(f"table {table['name']} chunk {chunk['n']} ({chunk['key']}): {problem}")
        spool.seek(0)
        for line in spool:
            if line.strip():
                yield line


def load_dynamo_chunk(settings: Settings, plan: RestorePlan, table: dict[str, Any], chunk: dict[str, Any]) -> int:
    """BatchWriteItem the chunk's items (an upsert; B back to bytes) once the chunk verified."""
    client = aws_client(settings, "dynamodb")
    count, pending = 0, []
    for line in verified_lines(settings, plan, table, chunk):
        pending.append({"PutRequest": {"Item": from_export_line(line)}})
        if len(pending) == BATCH:
            batch_write(client, settings.dynamo_table_name, pending)
            count, pending = count + len(pending), []
    if pending:
        batch_write(client, settings.dynamo_table_name, pending)
        count += len(pending)
    return count


def _key_text(item: dict[str, Any], names: list[str]) -> str:
    """A key in export form (B as base64) as one comparable string."""
    return json.dumps([item[n] for n in names], sort_keys=True, separators=(",", ":"))


def extra_items(settings: Settings, plan: RestorePlan, table: dict[str, Any],
                into: str | None = None) -> Iterator[dict[str, Any]]:
    """Keys of the items in the table restored into (`into`, else the backup's own) that the backup does not
    have (what --exact deletes), bounded in memory: the backup's keys go into a temporary sqlite file, the live
    ones are compared a page at a time, and the extras are given out once the live scan is over (so deleting
    them does not disturb it)."""
    names = [k["AttributeName"] for k in table.get("key_schema") or KEY_SCHEMA]
    client = aws_client(settings, "dynamodb")
    with tempfile.TemporaryDirectory(prefix="worktask-exact-") as tmp:
        db = sqlite3.connect(Path(tmp, "keys.sqlite"))
        try:
            db.executescript("pragma journal_mode = off; pragma synchronous = off;"
                             "create table backup (k text primary key) without rowid;"
                             "create table extra (k text primary key) without rowid;")
            for chunk in table["chunks"]:
                batch: list[tuple[str]] = []
                for line in verified_lines(settings, plan, table, chunk):
                    batch.append((_key_text(json.loads(line)["Item"], names),))
                    if len(batch) == 5000:
                        db.executemany("insert or ignore into backup values (?)", batch)
                        batch = []
                db.executemany("insert or ignore into backup values (?)", batch)
            attrs = {f"#k{i}": n for i, n in enumerate(names)}
            pages = client.get_paginator("scan").paginate(
                TableName=into or table["name"], ProjectionExpression=", ".join(attrs),
                ExpressionAttributeNames=attrs, ConsistentRead=True, PaginationConfig={"PageSize": 1000})
            for page in pages:
                db.executemany("insert or ignore into extra select ?1 where not exists "
                               "(select 1 from backup where k = ?1)",
                               [(_key_text(to_export(i), names),) for i in page.get("Items", [])])
            db.commit()
            for (k,) in db.execute("select k from extra"):
                yield from_export(dict(zip(names, json.loads(k))))
        finally:
            db.close()


def delete_items(settings: Settings, table: str, keys: Iterable[dict[str, Any]]) -> int:
    """Delete the items with these keys, a thousand requests at a time; how many."""
    client, batch, count = aws_client(settings, "dynamodb"), [], 0
    for key in keys:
        batch.append({"DeleteRequest": {"Key": key}})
        if len(batch) == 1000:
            batch_write(client, table, batch)
            count, batch = count + len(batch), []
    batch_write(client, table, batch)
    return count + len(batch)


NOTE_LIMIT = 10_000  # item keys kept in the note; past it, every dangling TASK# item above the top id is kept


def note_dynamo_restore(settings: Settings, r: Any, plan: RestorePlan, table: dict[str, Any]) -> None:
    """After writing a DynamoDB part taken by a scan (a window after the PostgreSQL snapshot), note its TASK#
    items whose work task id is above the highest in PostgreSQL now: they may have been written after the
    backup's snapshot, so `validate --fix` reports them instead of deleting them as dangling. A part taken
    by an export (at the snapshot's instant) clears the note."""
    if (table.get("capture") or {"method": "scan"})["method"] != "scan":
        r.delete(DYNAMO_SCAN_RESTORE_KEY)
        return
    with pg_connect(settings) as conn:
        top = conn.execute("select coalesce(max(id), 0) from work_tasks").fetchone()[0]
    keys: list[str] = []
    for chunk in table["chunks"]:
        for line in verified_lines(settings, plan, table, chunk):
            item = json.loads(line)["Item"]
            pk, sk = item.get("PK", {}).get("S", ""), item.get("SK", {}).get("S", "")
            if pk.startswith("TASK#") and pk[5:].isdigit() and int(pk[5:]) > top and len(keys) <= NOTE_LIMIT:
                keys.append(f"{pk}|{sk}")
    r.set(DYNAMO_SCAN_RESTORE_KEY, json.dumps({
        "backup_id": plan.backup_id, "restored_at": utcnow().isoformat(), "max_work_task_id": top,
        "window": (table.get("capture") or {}).get("window"), "truncated": len(keys) > NOTE_LIMIT,
        "keys": keys[:NOTE_LIMIT]}))


def live_rows(settings: Settings, table: str) -> int:
    with pg_connect(settings) as conn:
        query = psycopg.sql.SQL("select count(*) from {}").format(psycopg.sql.Identifier(table))
        return conn.execute(query).fetchone()[0]


# tasks --------------------------------------------------------------------------------------------------------

def targets(settings: Settings, options: dict[str, Any]) -> Settings:
    """The settings of everything the job writes: the target database and DynamoDB table, when it has them."""
    return restore_target.target_settings(settings, options)


def release(settings: Settings, r: Any, job_id: str) -> None:
    """A restore that ends lets go: its replacement tables (the live ones were never touched) and the lock
    (one restore per target database: `restore` for the live one)."""
    plan = jobs.load_plan(r, job_id, RestorePlan)
    options = plan.options if plan else jobs.options(r, job_id)
    if plan and not plan.options.get("dry_run"):
        try:
            with pg_connect(targets(settings, options), autocommit=True) as conn:
                swap.drop_replacements(conn, plan.tag)
        except Exception:  # noqa: BLE001 - the next restore drops them
            pass
    jobs.unlock(r, restore_target.lock_name(options), job_id)


def ensure_dynamo_target(settings: Settings, table: dict[str, Any]) -> None:
    """--target-dynamodb-table: create it when missing, with the backup's key schema, on demand (the key
    attributes' types are the project's table's, PK and SK strings; another key schema is refused)."""
    client = aws_client(settings, "dynamodb")
    if dynamo.exists(client, settings.dynamo_table_name):
        return
    schema = table.get("key_schema") or KEY_SCHEMA
    types = {a["AttributeName"]: a["AttributeType"] for a in dynamo.ATTRIBUTES}
    if any(k["AttributeName"] not in types for k in schema):
        raise JobFailed(f"--target-dynamodb-table {settings.dynamo_table_name}: the backup's key schema {schema} "
                        "is not the default one; create the table with it first")
    client.create_table(TableName=settings.dynamo_table_name, KeySchema=schema, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": k["AttributeName"],
                                               "AttributeType": types[k["AttributeName"]]} for k in schema])
    client.get_waiter("table_exists").wait(TableName=settings.dynamo_table_name, WaiterConfig=dynamo.WAIT)


on_job_failure("restore", release)


@app.task(name=TASK_RESTORE_START, base=JobTask, bind=True, max_retries=0)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    r, s = self.redis, targets(self.settings, options)
    if jobs.load_plan(r, job_id, RestorePlan):
        return {"job_id": job_id, "skipped": "already planned"}
    if restore_target.is_live(self.settings, options):  # a job not submitted by the CLI, or a name it could not see
        raise JobFailed(f"the target database {options['target_database']} is the live database: nothing was "
                        "written; restore without --target-database")
    if not options.get("dry_run") and not options.get("target_database"):  # backups read the live database only
        snapshot.refuse_during_backup(r, "restore")
    holder = jobs.lock(r, restore_target.lock_name(options), job_id)
    if holder:
        where = f" into {options['target_database']}" if options.get("target_database") else ""
        what = ("an undo of fixes (worktask validate undo)" if jobs.job_kind(r, holder) == "validate_undo"
                else f"another restore{where}")
        raise JobFailed(f"{what} is running (job {holder}); wait for it")
    store = backups.store_for(s, options)
    manifest = backups.read_manifest(store, options, options["backup_id"], self.settings,
                                     options.get("allow_unauthenticated", False))
    wanted = options.get("tables") or [t["name"] for t in manifest["tables"]]
    # never read (only the manifest's chunks are), but said: one LIST of the backup's folder
    extra = unlisted(store, options, {c["key"] for t in manifest["tables"] for c in t["chunks"]})
    plan = RestorePlan(backup_id=manifest["backup_id"], tag=job_id.rsplit("-", 1)[-1], options=options,
                       encryption=manifest["encryption"], compress=manifest["options"]["compress"], started=time.time(),
                       tables=[t for t in manifest["tables"] if t["name"] in wanted], unlisted=[b.path for b in extra])
    dry = bool(options.get("dry_run"))
    pg_tables = [t for t in plan.tables if t["store"] == "postgres"]
    bad: dict[str, str] = {}
    if pg_tables and not options.get("target_table"):  # what the swap could not carry over: refused first
        with pg_connect(s, autocommit=True) as conn:
            bad.update(swap.refusals(conn, pg_tables))
    if not dry:
        with pg_connect(s, autocommit=True) as conn:
            swap.drop_replacements(conn)  # marked ones, of restores that were killed; only one runs at a time
            conn.execute("select set_config('lock_timeout', %s, false)", (swap.LOCK_TIMEOUT,))
            conn.execute("select set_config('statement_timeout', '0', false)")  # its own bounds, as the load's
            for t in pg_tables:
                if t["name"] in bad:
                    continue
                # a backup that holds generated columns' values loads them as plain columns
                listed = set(swap.generated_columns(conn, t["name"])) & {c["name"] for c in t["columns"]}
                if listed:
                    plan.plain_generated.append(t["name"])
                swap.create_replacement(conn, t["name"], plan.tag, plain_generated=bool(listed))
            swap.create_ledger(conn, plan.tag)
        for t in plan.tables:
            if t["store"] == "dynamodb" and options.get("target_dynamodb_table"):
                ensure_dynamo_target(s, t)
    plan.skipped = [{"name": n, "reason": f"not touched: {why}"} for n, why in bad.items()]
    jobs.save_plan(r, job_id, plan)
    # PostgreSQL chunks are loaded (and verified as they are read) at once, DynamoDB chunks verified first
    # the biggest first (the queue is first in, first out): the small ones fill the gaps at the end
    work = sorted(((t, c) for t in plan.tables if t["name"] not in bad for c in t["chunks"]),
                  key=lambda tc: -tc[1]["bytes_raw"])
    header = [(verify if dry or t["store"] == "dynamodb" else load).s(job_id=job_id, table=t["name"], chunk=c["n"])
              for t, c in work]
    dynamo_chunks = sum(len(t["chunks"]) for t in plan.tables if t["store"] == "dynamodb" and t["name"] not in bad)
    jobs.start(r, job_id, len(header) + (0 if dry else dynamo_chunks))
    fan_out(header, after_verify.s(job_id=job_id))
    return {"job_id": job_id, "chunks": len(header)}


@app.task(name=TASK_RESTORE_VERIFY, base=JobTask, bind=True)
def verify(self: JobTask, job_id: str, table: str, chunk: int) -> dict[str, Any]:
    plan = jobs.load_plan(self.redis, job_id, RestorePlan)
    t, c = plan.chunk(table, chunk)
    reason = check_chunk(self.settings, plan.options, plan.backup_id, plan.encryption, plan.compress, t["store"],
                         table, c)
    jobs.add(self.redis, job_id, nbytes=c["bytes_stored"])
    return {"table": table, "chunk": chunk, "path": c["key"], "reason": reason}


@app.task(name=TASK_RESTORE_AFTER_VERIFY, base=JobTask, bind=True)
def after_verify(self: JobTask, results: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    """After the first pass (PostgreSQL chunks loaded, DynamoDB chunks verified; all verified in a dry run):
    skip every table with a bad chunk (dropping its replacement), then build the PostgreSQL tables and load
    the DynamoDB chunks side by side."""
    plan = jobs.load_plan(self.redis, job_id, RestorePlan)
    s = targets(self.settings, plan.options)
    bad: dict[str, str] = {}
    for r in sorted(results, key=lambda r: (r["table"], r["chunk"])):
        if r["reason"] and r["table"] not in bad:
            bad[r["table"]] = f"chunk {r['chunk']} ({r['path']}): {r['reason']}"
    dry = bool(plan.options.get("dry_run"))
    if bad and not dry:
        with pg_connect(s, autocommit=True) as conn:
            swap.drop_replacements(conn, plan.tag, list(bad))
    plan.skipped += [{"name": n, "reason": f"not touched: {why}"} for n, why in bad.items()
                     if n not in {x["name"] for x in plan.skipped}]  # a redelivered after_verify adds none twice
    skipped = {x["name"] for x in plan.skipped}
    plan.ok_tables = [t["name"] for t in plan.tables if t["name"] not in skipped]
    jobs.save_plan(self.redis, job_id, plan)
    jobs.put_value(self.redis, job_id, "loaded", [r for r in results if "rows" in r and not r["reason"]])
    if dry or not plan.ok_tables:
        return finalize.run([], job_id=job_id)
    ok = sorted((t for t in plan.tables if t["name"] in plan.ok_tables), key=lambda t: -t["bytes_raw"])
    header = [build.s(job_id=job_id, table=t["name"]) for t in ok if t["store"] == "postgres"]
    header += [load.s(job_id=job_id, table=t["name"], chunk=c["n"]) for t in ok if t["store"] == "dynamodb"
               for c in t["chunks"]]
    fan_out(header, finalize.s(job_id=job_id))
    return {"job_id": job_id, "building": len(header)}


@app.task(name=TASK_RESTORE_LOAD, base=JobTask, bind=True)
def load(self: JobTask, job_id: str, table: str, chunk: int) -> dict[str, Any]:
    plan = jobs.load_plan(self.redis, job_id, RestorePlan)
    t, c = plan.chunk(table, chunk)
    began = time.monotonic()
    done = {"table": table, "chunk": chunk, "path": c["key"], "reason": None}
    if t["store"] == "postgres":  # once, whatever the deliveries (the restore's ledger)
        rows, reason = load_postgres_chunk(targets(self.settings, plan.options), plan, t, c)
        if reason == ALREADY:  # counted by the delivery that loaded it
            return {**done, "rows": rows, "seconds": 0}
        jobs.add(self.redis, job_id, rows=rows, nbytes=c["bytes_stored"])
        if reason:
            return {**done, "reason": reason}
        return {**done, "rows": rows, "seconds": round(time.monotonic() - began, 3)}
    rows = load_dynamo_chunk(targets(self.settings, plan.options), plan, t, c)
    if rows != c["rows"]:
        raise JobFailed(f"loaded {rows} rows, the manifest says {c['rows']}")
    jobs.add(self.redis, job_id, rows=rows, nbytes=c["bytes_stored"])
    return {**done, "rows": rows, "seconds": round(time.monotonic() - began, 3)}


@app.task(name=TASK_RESTORE_BUILD, base=JobTask, bind=True)
def build(self: JobTask, job_id: str, table: str) -> dict[str, Any]:
    plan = jobs.load_plan(self.redis, job_id, RestorePlan)
    with pg_connect(targets(self.settings, plan.options)) as conn:  # one transaction: a retry starts clean
        conn.execute("select set_config('lock_timeout', %s, true)", (swap.LOCK_TIMEOUT,))
        conn.execute("select set_config('statement_timeout', '0', true)")  # an index build is no runaway query
        if table in plan.plain_generated:
            swap.recompute_generated(conn, table, plan.tag)
        expected = plan.table(table)["rows"]
        # SHARE waits for any load still in flight and keeps new ones out: the count is final
        conn.execute(psycopg.sql.SQL("lock table {} in share mode").format(
            psycopg.sql.Identifier(swap.replacement(table, plan.tag))))
        held = conn.execute(psycopg.sql.SQL("select count(*) from {}").format(
            psycopg.sql.Identifier(swap.replacement(table, plan.tag)))).fetchone()[0]
        if held != expected:  # the ledger makes this a bug's symptom, never a swap of the wrong rows
            raise JobFailed(f"table {table}: the loaded copy holds {held} rows, the backup {expected}; "
                            "the live table is untouched (DynamoDB items already loaded stay), run the restore again")
        swap.build(conn, swap.catalog(conn, table), plan.tag)
        conn.commit()
    return {"table": table}


@app.task(name=TASK_RESTORE_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    if not jobs.claim_end(self.redis, job_id, finish_owner(self)):  # a failure owns the end: its release
        return {"job_id": job_id, "skipped": "the job failed"}  # drops the replacements; no swap of them
    plan = jobs.load_plan(self.redis, job_id, RestorePlan)
    s, opts = targets(self.settings, plan.options), plan.options
    dry, beside = bool(opts.get("dry_run")), opts.get("target_table")
    loaded = jobs.value(self.redis, job_id, "loaded", []) + [r for r in results if "rows" in r]
    ok = [t for t in plan.tables if t["name"] in plan.ok_tables]
    removed: dict[str, int] = {}
    pg_ok = [t["name"] for t in ok if t["store"] == "postgres"]
    for t in ok:
        if t["store"] == "postgres" and dry and not beside:  # beside the live table: nothing is replaced
            removed[t["name"]] = live_rows(s, t["name"])
    if pg_ok and not dry and not jobs.marked(self.redis, job_id, "swapped"):
        with pg_connect(s) as conn:
            conn.execute("select set_config('lock_timeout', %s, true)", (swap.LOCK_TIMEOUT,))
            conn.execute("select set_config('statement_timeout', '0', true)")
            # the swap's row in the ledger commits with it: a finalize delivered again after its process died
            # between this commit and the marker below finds it, and the swap done
            if swap.claim_swap(conn, plan.tag):
                cats = [swap.catalog(conn, name) for name in pg_ok]
                if beside:  # the one table, renamed to the new name (JobFailed if it exists by now); live one untouched
                    swap_beside.beside(conn, cats[0], beside, plan.tag)
                else:
                    swap.swap(conn, cats, plan.tag)
            conn.commit()
        jobs.mark(self.redis, job_id, "swapped")  # a redelivered finalize does not look again
    for t in ok:  # --exact deletes only after the swap (the upserts of the load are already in DynamoDB)
        if t["store"] == "dynamodb" and opts.get("exact"):
            extra = extra_items(s, plan, t, s.dynamo_table_name)  # the table restored into
            removed[t["name"]] = sum(1 for _ in extra) if dry else delete_items(s, s.dynamo_table_name, extra)
        if t["store"] == "dynamodb" and not dry and not opts.get("target_dynamodb_table"):  # the live table's note
            note_dynamo_restore(self.settings, self.redis, plan, t)
    tables = [RestoreTable(name=t["name"], store=t["store"], rows=t["rows"], chunks=len(t["chunks"]),
                           removed=removed.get(t["name"], 0),
                           seconds=round(sum(r["seconds"] for r in loaded if r["table"] == t["name"]), 3))
              for t in ok]
    error = ("skipped: " + "; ".join(f"{x['name']} {x['reason']}" for x in plan.skipped)) if plan.skipped else None
    report = RestoreReport(job_id=job_id, state="succeeded", ok=not plan.skipped, dry_run=dry,
                           backup_id=plan.backup_id, tables=tables, skipped=plan.skipped,
                           totals={"rows": sum(t.rows for t in tables), "tables": len(tables),
                                   "seconds": round(time.time() - plan.started, 3)}, error=error,
                           unlisted=plan.unlisted)
    jobs.finish(self.redis, job_id, report)
    release(s, self.redis, job_id)
    return {"job_id": job_id, "tables": len(tables)}
