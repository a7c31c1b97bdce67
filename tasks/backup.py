"""`worktask backup`: plan on `control`, one task per PostgreSQL key range and per DynamoDB scan segment
on `bulk`, then finalize writes the manifest last (DESIGN §9).

Every PostgreSQL chunk reads through the snapshot exported at planning time by the snapshot holder,
so the backup is one point in time across tables and workers. Each run of a chunk writes its own
object (an attempt token in the key); the manifest lists exactly the objects of the results the chord
kept, and finalize removes the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psycopg
from botocore.exceptions import ClientError

from worker import backups, chunks, dynamo, jobs, rowhash, snapshot, sqltext
from worker.app import app
from worker.archive import ChunkWriter
from worker.connections import aws_client, pg_connect, pg_params
from worker.constants import TASK_BACKUP_DUMP_DYNAMO, TASK_BACKUP_DUMP_PG, TASK_BACKUP_FINALIZE, TASK_BACKUP_START
from worker.dynamo import exists as dynamo_exists
from worker.errors import JobFailed, ServiceUnavailable, SnapshotLost
from worker.manifest import build_manifest
from worker.plans import BackupPlan
from worker.reports import BackupReport, BackupTable, utcnow
from worker.settings import Settings
from worker.taskbase import JobTask, fan_out, finish_owner, on_job_failure, stale

EXPORT_PATIENCE = 20  # seconds a DynamoDB chunk task waits for the export in one go,
EXPORT_RETRY = 30  # then it retries this much later (the export's deadline bounds the whole wait)

log = logging.getLogger(__name__)


ident = sqltext.ident


# planning --------------------------------------------------------------------------------------------

# Per table: its columns as COPY lists them (stored generated columns are left out: the restore's table
# computes them), its primary key, for a leaf partition its parent and bound, the catalog's statistics
# (relpages, reltuples: -1 when never analysed; a fallback of _size), and its file node
# (TRUNCATE and table-rewriting DDL give a table a new one: every chunk checks it is still the same).
TABLES_SQL = """
    select c.relname,
           array_agg(a.attname::text order by a.attnum),
           array_agg(format_type(a.atttypid, a.atttypmod) order by a.attnum),
           (select array_agg(pa.attname::text order by k.ord)
              from pg_index i, unnest(i.indkey) with ordinality k(attnum, ord), pg_attribute pa
             where i.indrelid = c.oid and i.indisprimary and pa.attrelid = c.oid and pa.attnum = k.attnum),
           (select p.relname::text from pg_inherits h join pg_class p on p.oid = h.inhparent
             where h.inhrelid = c.oid and c.relispartition),
           case when c.relispartition then pg_get_expr(c.relpartbound, c.oid) end,
           c.relpages, c.reltuples, pg_relation_filenode(c.oid)
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
    where n.nspname = 'public' and c.relname = any(%s)
    group by c.oid, c.relname order by c.relname"""


def plan_postgres(settings: Settings, snap: str, chunk_rows: int, locked: list[str],
                  lock_timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The tables the snapshot holder locked: columns and page-range chunks (worker/chunks.py), planned from
    each table's size and a sample of its pages through the snapshot, without scanning a table."""
    with pg_connect(settings) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute(psycopg.sql.SQL("set transaction snapshot {}").format(psycopg.sql.Literal(snap)))
        source = {"server_version": conn.execute("show server_version").fetchone()[0],
                  "database": conn.info.dbname,
                  "migration_head": _migration_head(conn)}
        conn.execute(psycopg.sql.SQL("set local lock_timeout = {}").format(
            psycopg.sql.Literal(f"{int(lock_timeout * 1000)}ms")))
        conn.execute("set local statement_timeout = 0")  # its sample reads are bounded by the task's time limit
        tables = []
        for name, cols, types, pk, parent, bound, relpages, reltuples, filenode in conn.execute(
                TABLES_SQL, (locked,)).fetchall():
            try:
                pages, rows = _size(conn, name, relpages, reltuples)
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
                conn.autocommit = True
                raise JobFailed(snapshot.locked_out(name, lock_timeout, snapshot.blockers(conn, name))) from None
            tables.append({"name": name, "store": "postgres",
                           "columns": [{"name": c, "type": t} for c, t in zip(cols, types)],
                           "primary_key": pk or [], "partition_of": parent, "partition_bound": bound,
                           "filenode": filenode, "chunks": chunks.plan_page_chunks(pages, rows, chunk_rows)})
        conn.rollback()
    return tables, source


def _size(conn: psycopg.Connection, table: str, relpages: int, reltuples: float) -> tuple[int, float]:
    """(pages now, about how many rows), through the snapshot: a table of at most chunks.SAMPLE_PAGES pages is
    counted; a bigger one by that many pages in chunks.SAMPLE_RUNS runs spread evenly over it (TID range scans:
    the same pages every time, empty ones included), as the statistics can be far off (a table emptied and
    filled again since its last ANALYZE); they are used only when the sample finds no row."""
    name = psycopg.sql.Identifier(table)
    pages = conn.execute(psycopg.sql.SQL("select pg_relation_size({}::regclass) / current_setting('block_size')::int")
                         .format(psycopg.sql.Literal(ident(table)))).fetchone()[0]
    if pages == 0:
        return 0, 0.0
    if pages <= chunks.SAMPLE_PAGES:
        return pages, conn.execute(psycopg.sql.SQL("select count(*) from only {}").format(name)).fetchone()[0]
    width = chunks.SAMPLE_PAGES // chunks.SAMPLE_RUNS
    runs = [psycopg.sql.SQL("(select count(*) from only {} where ctid >= {}::tid and ctid < {}::tid)").format(
        name, psycopg.sql.Literal(f"({lo},0)"), psycopg.sql.Literal(f"({lo + width},0)"))
        for lo in (i * pages // chunks.SAMPLE_RUNS for i in range(chunks.SAMPLE_RUNS))]
    counted = conn.execute(psycopg.sql.SQL("select {}").format(psycopg.sql.SQL(" + ").join(runs))).fetchone()[0]
    if counted == 0 and relpages > 0 and reltuples > 0:
        return pages, pages * reltuples / relpages
    return pages, counted * pages / (width * chunks.SAMPLE_RUNS)


def _migration_head(conn: psycopg.Connection) -> str | None:
    if conn.execute("select to_regclass('alembic_version')").fetchone()[0] is None:
        return None
    row = conn.execute("select version_num from alembic_version").fetchone()
    return row[0] if row else None


def plan_dynamo(settings: Settings, segments: int, options: dict[str, Any] | None = None, backup_id: str = "",
                gen: int = 0, at: float | None = None) -> dict[str, Any] | None:
    """The DynamoDB table's part: an export at `at` (the PostgreSQL snapshot's time) when the table has
    point-in-time recovery and the backup goes to S3, else parallel Scan segments (a window, stated)."""
    client = aws_client(settings, "dynamodb")
    name = settings.dynamo_table_name
    if not dynamo_exists(client, name):
        return None
    desc = client.describe_table(TableName=name)["Table"]
    table = {"name": name, "store": "dynamodb", "key_schema": desc["KeySchema"]}
    capture, why = None, "no snapshot time was given"
    if options is not None and at is not None:
        capture, why = _request_export(settings, client, desc, options, backup_id, gen, at)
    if capture:
        return {**table, "capture": capture,
                "chunks": [{"n": i, "part": i, "parts": segments} for i in range(segments)]}
    return {**table, "capture": {"method": "scan", "snapshot_at": _iso(at) if at else None, "reason": why},
            "chunks": [{"n": i, "segment": i, "segments": segments} for i in range(segments)]}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _request_export(settings: Settings, client: Any, desc: dict[str, Any], options: dict[str, Any], backup_id: str,
                    gen: int, at: float) -> tuple[dict[str, Any] | None, str]:
    """Start ExportTableToPointInTime into the backup's own prefix (finalize removes its files once read);
    (None, why not) when it cannot be used."""
    try:
        if not dynamo.pitr_enabled(client, desc["TableName"]):
            return None, "point-in-time recovery is off on the table (no export at the snapshot's time)"
        bucket = options.get("s3_bucket")
        if not bucket:
            return None, ("point-in-time recovery is on, but the backup goes to a local folder and the export needs "
                          "an S3 bucket (S3_BUCKET_NAME)")
        prefix = f"{backups.prefix(options, backup_id)}dynamodb-export-{gen}"
        token = hashlib.sha256(f"{backup_id}/{gen}".encode()).hexdigest()[:32]
        arn = dynamo.start_export(client, desc["TableArn"], at, bucket, prefix, token)
    except ClientError as err:
        e = err.response.get("Error", {})
        return None, f"the export was refused ({e.get('Code')}: {e.get('Message')})"
    return {"method": "export", "at": _iso(at), "export_arn": arn, "bucket": bucket, "prefix": prefix,
            "deadline": at + settings.snapshot_max_lifetime}, ""


# per chunk ---------------------------------------------------------------------------------------------

def dump_postgres_chunk(settings: Settings, options: dict[str, Any], backup_id: str, snap: str, table: dict[str, Any],
                        chunk: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """COPY one key range TO STDOUT through the snapshot -> zstd -> AES-GCM -> the store (asyncpg, DESIGN §12);
    the rows' hash (worker/rowhash.py) over the same stream, for the restore drill."""
    store = backups.store_for(settings, options)
    obj = backups.chunk_key(options, backup_id, "postgres", table["name"], chunk["n"], secrets.token_hex(3))
    cols = ", ".join(ident(c["name"]) for c in table["columns"])
    where, args = chunks.row_filter(table, chunk)
    query = f"select {cols} from only {ident(table['name'])}{where}"  # names quoted, bounds parameters
    rate = options.get("rate_limit") or 0
    began = time.monotonic()
    with store.writer(obj) as out:
        writer = ChunkWriter(out, backups.chunk_aad(backup_id, "postgres", table["name"], chunk["n"]),
                             options["compress"], key)
        hasher = rowhash.CopyHasher()
        rows = asyncio.run(_copy_out(settings, snap, table["name"], query, args, writer, rate,
                                     options.get("lock_timeout", settings.backup_lock_timeout), table.get("filenode"),
                                     hasher))
        stats = writer.close()
    bounds = {k: chunk[k] for k in ("range", "ctid") if k in chunk}
    return {"table": table["name"], "store": "postgres", "n": chunk["n"], "key": obj, "rows": rows, **bounds,
            "row_hash": hasher.hexdigest(), "seconds": round(time.monotonic() - began, 3), "ended_at": time.time(),
            **stats}


async def _copy_out(settings: Settings, snap: str, table: str, query: str, args: list[Any], writer: ChunkWriter,
                    rate: int, lock_timeout: float, filenode: int | None, hasher: rowhash.CopyHasher) -> int:
    p = pg_params(settings)
    conn = await asyncpg.connect(host=p["host"], port=int(p["port"]), user=p["user"], password=p.get("password"),
                                 database=p["dbname"], timeout=settings.postgres_connect_timeout,
                                 server_settings={"application_name": "worktask-backup",
                                                  # a chunk's own bounds (TASK_TIME_LIMIT, lock_timeout below), not
                                                  # the database's defaults: a long COPY, read at the rate limit
                                                  # after the server has sent it all, is neither of these
                                                  "statement_timeout": "0",
                                                  "idle_in_transaction_session_timeout": "0",
                                                  # the text of a row, hashed, must not depend on the session
                                                  **rowhash.SESSION_SETTINGS})
    rows = 0
    began = time.monotonic()

    async def sink(data: bytes) -> None:
        nonlocal rows
        rows += data.count(b"\n")  # text COPY: one newline per row, newlines in values are escaped
        writer.write(data)
        hasher.update(data)
        if rate:
            ahead = writer.raw / rate - (time.monotonic() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)
    try:
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                try:
                    # takes no parameter: the id is checked against what pg_export_snapshot() returns, then quoted
                    await conn.execute("set transaction snapshot " + sqltext.literal(snapshot.check_id(snap)))
                except (asyncpg.InvalidParameterValueError, asyncpg.UndefinedObjectError) as err:  # 22023 / 42704 (18)
                    raise SnapshotLost(f"snapshot {snap} is gone ({err})") from None
                # The holder's lock keeps TRUNCATE and rewrites out, but one that queues for its ACCESS EXCLUSIVE
                # lock meanwhile queues this chunk's ACCESS SHARE behind it: wait a bounded time, then give way
                # (as pg_dump's workers do), failing the backup by name rather than hanging with the holder.
                await conn.execute("select set_config('lock_timeout', $1, true)", f"{int(lock_timeout * 1000)}ms")
                await conn.execute(f"lock table only {ident(table)} in access share mode")
                # The holder's locks keep TRUNCATE and rewrites out while it lives; should it die between this
                # chunk's import of the snapshot and its lock, such DDL could slip in: its new file gives it away.
                now = await conn.fetchval("select pg_relation_filenode($1::regclass)", ident(table))
                if filenode is not None and now != filenode:
                    raise JobFailed(f"table {table} was truncated or rewritten during the backup (its file node "
                                    f"changed from {filenode} to {now}); run the backup again")
                await conn.copy_from_query(query, *args, output=sink)
        except asyncpg.LockNotAvailableError:
            blockers = await conn.fetch(snapshot.BLOCKERS_SQL.format(param="$1"), table)
            raise JobFailed(snapshot.locked_out(table, lock_timeout, snapshot.describe_blockers(blockers))) from None
        except (asyncpg.InternalClientError, asyncpg.PostgresError) as err:
            # The server ended this session mid-COPY (pg_terminate_backend, a restart): asyncpg then reports
            # whatever its state machine met first (57P01, or "cannot switch to state 15" from the rollback).
            # The snapshot lives in the holder's session, so the chunk can run again: a transient error.
            if conn.is_closed() or isinstance(err, asyncpg.AdminShutdownError | asyncpg.InternalClientError):
                raise ConnectionResetError(f"the server ended the chunk's session ({type(err).__name__}: "
                                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
            raise
    finally:
        await conn.close()
    return rows


def dump_dynamo_segment(settings: Settings, options: dict[str, Any], backup_id: str, table: dict[str, Any],
                        chunk: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """One chunk of DynamoDB export JSON lines ({"Item": {...}}, B as base64): a parallel Scan segment, or
    this chunk's share of the export's data files (ExportPending while the export runs)."""
    capture = table.get("capture") or {"method": "scan"}
    if capture["method"] == "export":
        desc = dynamo.wait_export(aws_client(settings, "dynamodb"), capture["export_arn"], capture["deadline"],
                                  EXPORT_PATIENCE)
        s3 = aws_client(settings, "s3")
        files = dynamo.export_data_files(s3, capture["bucket"], capture["prefix"])[chunk["part"]::chunk["parts"]]
        items = (item for f in files for item in dynamo.export_items(s3, capture["bucket"], f))
        return {**_write_items(settings, options, backup_id, table, chunk, key, items),
                "export_items": desc.get("ItemCount"), "export_files": len(files)}
    client = aws_client(settings, "dynamodb")
    pages = client.get_paginator("scan").paginate(TableName=table["name"], Segment=chunk["segment"],
                                                  TotalSegments=chunk["segments"], ConsistentRead=True)
    began = time.time()
    result = _write_items(settings, options, backup_id, table, chunk, key,
                          (item for page in pages for item in page.get("Items", [])))
    return {**result, "window": [began, result["ended_at"]]}


def _write_items(settings: Settings, options: dict[str, Any], backup_id: str, table: dict[str, Any],
                 chunk: dict[str, Any], key: bytes | None, items: Any) -> dict[str, Any]:
    store = backups.store_for(settings, options)
    obj = backups.chunk_key(options, backup_id, "dynamodb", table["name"], chunk["n"], secrets.token_hex(3))
    began, hasher = time.monotonic(), rowhash.DynamoHasher()
    with store.writer(obj) as out:
        writer = ChunkWriter(out, backups.chunk_aad(backup_id, "dynamodb", table["name"], chunk["n"]),
                             options["compress"], key)
        for item in items:
            writer.write(dynamo.export_line(item))
            hasher.update(dynamo.to_export(item))
        stats = writer.close()
    return {"table": table["name"], "store": "dynamodb", "n": chunk["n"], "key": obj, "rows": hasher.rows,
            "row_hash": hasher.hexdigest(),
            "seconds": round(time.monotonic() - began, 3), "ended_at": time.time(), **stats}


# finalize -------------------------------------------------------------------------------------------------

def backup_report(job_id: str, manifest: dict[str, Any]) -> BackupReport:
    duration = manifest["duration_s"] or 0.0
    tables = [BackupTable(name=t["name"], store=t["store"], rows=t["rows"], chunks=len(t["chunks"]),
                          bytes_raw=t["bytes_raw"], bytes_stored=t["bytes_stored"], seconds=t["seconds"],
                          capture=t.get("capture"))
              for t in manifest["tables"]]
    totals = {**manifest["totals"], "seconds": duration,
              "rows_per_s": round(manifest["totals"]["rows"] / duration, 1) if duration else None,
              "mb_raw_per_s": round(manifest["totals"]["bytes_raw"] / duration / 1e6, 2) if duration else None}
    return BackupReport(job_id=job_id, state="succeeded", ok=True, backup_id=manifest["backup_id"], tables=tables,
                        totals=totals,
                        encrypted=manifest["options"]["encrypt"], compressed=manifest["options"]["compress"])


# tasks -------------------------------------------------------------------------------------------------------

MAX_RESTARTS = 2  # fresh snapshots a backup may take after losing one


def restart(r: Any, job_id: str, gen: int) -> bool:
    """Start the backup over from a fresh snapshot (once per lost generation, a bounded number of times);
    False when it may not (restarted too often: the job fails). Chunks of the old generation that still
    run are ignored; finalize removes their objects."""
    progress = jobs.read(r, job_id)
    if progress is None or progress.state != "running":
        return True  # the job ended (failed or succeeded) and released its snapshot on purpose
    if gen >= MAX_RESTARTS:
        return False
    if jobs.next_generation(r, job_id, gen):  # else another chunk of this generation restarted it already
        snapshot.release(r, job_id, gen)
        app.send_task(TASK_BACKUP_START, kwargs={"job_id": job_id, "options": jobs.options(r, job_id)})
    return True


def release(settings: Settings, r: Any, job_id: str) -> None:
    """A failed backup lets go of its snapshot and says so in the store (failed.json), never listed complete."""
    snapshot.release(r, job_id, jobs.generation(r, job_id))
    opts = jobs.options(r, job_id)
    progress = jobs.read(r, job_id)
    error = progress.error if progress else None
    store = backups.store_for(settings, opts)
    for attempt in range(3):  # its chunks go first: they are never restored, and a full disk needs their room
        store.delete([backups.prefix(opts, job_id) + "manifest.json"])  # first: never complete over missing chunks
        store.delete([o.key for o in store.list(backups.prefix(opts, job_id)) if not o.key.endswith("/failed.json")])
        try:
            store.put(backups.prefix(opts, job_id) + "failed.json", json.dumps({"error": error}).encode())
            return
        except OSError:  # chunks still running filled it again meanwhile
            if attempt == 2:
                raise


on_job_failure("backup", release)


def refuse_during_restore(r: Any) -> None:
    """A restore swaps its tables in when its load ends. A backup that held them then would keep the swap's
    ACCESS EXCLUSIVE request waiting (up to its lock timeout), and every read of the application, and the
    backup's own chunks, queued behind it: the backup waits for the restore instead (as restores and
    migrations wait for backups: worker/snapshot.py refuse_during_backup). A dry run swaps nothing."""
    holder = r.get(jobs.LOCK_KEY.format(resource="restore"))
    if not holder:
        return
    if jobs.job_kind(r, holder) == "validate_undo":  # puts rows back in one transaction: a snapshot sees all or none
        return
    held = jobs.read(r, holder)
    if held is not None and not held.finished and not jobs.options(r, holder).get("dry_run"):
        raise JobFailed(f"restore job {holder} is running and swaps its tables in when its load ends; run the "
                        f"backup after it (worktask jobs show {holder})")


@app.task(name=TASK_BACKUP_START, base=JobTask, bind=True, max_retries=0)
def start(self: JobTask, job_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    r, s = self.redis, self.settings
    if job_id is None:  # from beat: one backup per schedule slot, none while another backup runs
        options = {**backups.backup_options(s), **options}
        job_id = jobs.scheduled(r, "backup", s.crontab("backup"), options)
        if job_id is None:
            return {"skipped": "slot already run, or a backup is running"}
        self.apply_async(kwargs={"job_id": job_id, "options": options})  # the job's own start: failures fail it
        return {"job_id": job_id, "scheduled": True}
    if jobs.is_planned(r, job_id):
        return {"job_id": job_id, "skipped": "already planned"}
    refuse_during_restore(r)
    backups.require_key(s, options["encrypt"])
    gen = jobs.generation(r, job_id)
    lock_timeout = options.get("lock_timeout", s.backup_lock_timeout)
    snap, locked = snapshot.start_holder(r, s, job_id, gen, s.snapshot_max_lifetime, lock_timeout)
    snapshot_time = time.time()  # the snapshot's instant, near enough: the holder has just exported it
    pg_tables, source = plan_postgres(s, snap, options["chunk_rows"], locked, lock_timeout)
    dyn = None if options.get("skip_dynamodb") else plan_dynamo(s, options["dynamo_segments"], options, job_id, gen,
                                                                 snapshot_time)
    source["dynamodb"] = {"table": dyn["name"], "key_schema": dyn["key_schema"]} if dyn else None
    encryption = None
    if options["encrypt"]:  # one data key for the backup, kept across restarts
        fresh = backups.make_data_key(s, job_id, options.get("kms_key_id"))[1]
        encryption = jobs.put_once(r, job_id, "encryption", fresh)
    plan = BackupPlan(created_at=utcnow().isoformat(), started=time.time(), snapshot_time=snapshot_time, source=source,
                      options=options, encryption=encryption, tables=pg_tables + ([dyn] if dyn else []))
    jobs.save_plan(r, job_id, plan)
    header = [dump_pg.s(job_id=job_id, table=t["name"], chunk=c["n"], gen=gen) for t in pg_tables for c in t["chunks"]]
    if dyn:
        header += [dump_dynamo.s(job_id=job_id, table=dyn["name"], chunk=c["n"], gen=gen) for c in dyn["chunks"]]
    if not jobs.start(r, job_id, len(header)):
        return {"job_id": job_id, "skipped": "already planned"}
    fan_out(header, finalize.s(job_id=job_id, gen=gen))
    return {"job_id": job_id, "chunks": len(header)}


def _chunk_context(self: JobTask, job_id: str, table: str, chunk: int) -> tuple[BackupPlan, dict, dict, bytes | None]:
    plan = jobs.load_plan(self.redis, job_id, BackupPlan)
    t, c = plan.chunk(table, chunk)
    return plan, t, c, backups.data_key(self.settings, job_id, plan.encryption)


@app.task(name=TASK_BACKUP_DUMP_PG, base=JobTask, bind=True)
def dump_pg(self: JobTask, job_id: str, table: str, chunk: int, gen: int = 0) -> dict[str, Any]:
    if stale(self.redis, job_id, gen):
        return {"stale": gen}  # the backup started over from a fresh snapshot
    plan, t, c, key = _chunk_context(self, job_id, table, chunk)
    try:
        snap = snapshot.snapshot_id(self.redis, job_id, gen)
        if not snap:
            raise SnapshotLost("the snapshot holder is gone")
        result = dump_postgres_chunk(self.settings, plan.options, job_id, snap, t, c, key)
    except SnapshotLost:
        if restart(self.redis, job_id, gen):
            return {"stale": gen}
        raise
    if not stale(self.redis, job_id, gen):
        jobs.add(self.redis, job_id, rows=result["rows"], nbytes=result["bytes_stored"])
    return result


@app.task(name=TASK_BACKUP_DUMP_DYNAMO, base=JobTask, bind=True)
def dump_dynamo(self: JobTask, job_id: str, table: str, chunk: int, gen: int = 0) -> dict[str, Any]:
    if stale(self.redis, job_id, gen):
        return {"stale": gen}
    plan, t, c, key = _chunk_context(self, job_id, table, chunk)
    try:
        result = dump_dynamo_segment(self.settings, plan.options, job_id, t, c, key)
    except dynamo.ExportPending:  # the export runs on: ask again later, without holding a worker meanwhile
        raise self.retry(countdown=EXPORT_RETRY, max_retries=self.request.retries + 1) from None
    if not stale(self.redis, job_id, gen):
        jobs.add(self.redis, job_id, rows=result["rows"], nbytes=result["bytes_stored"])
    return result


@app.task(name=TASK_BACKUP_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[dict[str, Any]], job_id: str, gen: int = 0) -> dict[str, Any]:
    if stale(self.redis, job_id, gen) or any("stale" in r for r in results):
        return {"job_id": job_id, "stale": gen}
    owner = finish_owner(self)
    # the end first, then the snapshot: a chunk that finds the snapshot gone then never starts the backup over
    if not jobs.claim_end(self.redis, job_id, owner):  # a failure owns the end: its release deletes the chunks
        return {"job_id": job_id, "skipped": "the job failed"}  # (no manifest over them)
    plan = jobs.load_plan(self.redis, job_id, BackupPlan)
    snapshot.release(self.redis, job_id, gen)
    manifest = build_manifest(job_id, plan.model_dump(), results, plan.started)
    store = backups.store_for(self.settings, plan.options)
    backups.write_manifest(store, plan.options, manifest, sign_with=self.settings)
    if not jobs.claim_end(self.redis, job_id, owner):  # its failure took the end over meanwhile (a second delivery
        store.delete([backups.prefix(plan.options, job_id) + "manifest.json"])  # of this finalize failed): no
        return {"job_id": job_id, "skipped": "the job failed"}  # manifest beside a failed backup
    kept = {c["key"] for t in manifest["tables"] for c in t["chunks"]}
    strays = [o.key for o in store.list(backups.prefix(plan.options, job_id))
              if o.key not in kept and not o.key.endswith("/manifest.json")]
    try:
        store.delete(strays)  # other attempts of redelivered chunks
    except ServiceUnavailable as err:  # the manifest is written: the backup is complete; validate names them
        log.warning("backup %s: %d object(s) of other attempts not deleted: %s", job_id, len(strays), err)
    report = backup_report(job_id, manifest)
    report.restarts = gen
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "rows": manifest["totals"]["rows"]}
