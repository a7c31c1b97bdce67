"""`worktask backup verify ID --restore-test`: the restore drill.

The drill restores a backup into a scratch database on the same server (`worktask_drill_<tag>`, or the
name given, which must not exist yet: the drill drops what it creates) and a scratch DynamoDB table
(`<DYNAMO_TABLE_NAME>-drill-<tag>`), then compares every table's rows and order-independent row hash
(worker/rowhash.py) with what the manifest recorded at backup time. The live database and DynamoDB table
are never written: the restore is a child job (kind `restore`, options `target_database` /
`target_dynamodb_table`) whose end advances the drill (worker/taskbase.py notify_parent).

start:   create the scratch database, migrate it to the backup's migration head, create plainly (from the
         manifest's columns) each table the migrations do not make, create the scratch DynamoDB table;
         submit the restore.
advance: the restore ended: compare per table, write verified.json beside the manifest (worker/markers.py),
         drop the scratch database and table, finish with a DrillReport.
A failure anywhere drops the scratch database and table (release, registered with on_job_failure).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from psycopg import sql

from worker import backups, dynamo, jobs, markers, migrator, restore_target, rowhash
from worker.app import app
from worker.connections import aws_client, pg_connect
from worker.constants import TASK_DRILL_ADVANCE, TASK_DRILL_START, TASK_RESTORE_START
from worker.errors import JobFailed
from worker.reports import DrillReport, DrillTable, utcnow
from worker.settings import Settings
from worker.taskbase import JobTask, on_job_failure

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "worktask_drill_"


def scratch_names(settings: Settings, tag: str, target_database: str | None) -> tuple[str, str]:
    """(scratch database, scratch DynamoDB table) for a drill tagged `tag`."""
    return target_database or f"{SCRATCH_PREFIX}{tag}", f"{settings.dynamo_table_name}-drill-{tag}"


def scratch_settings(settings: Settings, database: str) -> Settings:
    """Every connection of the drill's own to the scratch database (as the restore's: POSTGRES_SECRET_ARN's dbname
    would otherwise win over the scratch database's name and point it at the live one)."""
    return restore_target.pg_settings(settings, {"target_database": database})


# preparing -----------------------------------------------------------------------------------------------------

def create_database(settings: Settings, name: str) -> None:
    """CREATE DATABASE; JobFailed when it exists (the drill drops only what it created)."""
    if name == settings.postgres_database:
        raise JobFailed(f"the drill's scratch database {name} is the live database: refused")
    with pg_connect(settings, dbname="postgres", autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            raise JobFailed(f"database {name} exists already: the drill restores only into a database it creates "
                            "(and drops); name another with --target-database") from None


def migrate_to(settings: Settings, database: str, head: str | None) -> None:
    """The scratch database at the backup's migration head (nothing when the backup recorded none)."""
    if head:
        migrator.upgrade(scratch_settings(settings, database), migrator.script_path(settings), target=head)


def create_missing_tables(settings: Settings, database: str, manifest: dict[str, Any]) -> list[str]:
    """Each PostgreSQL table of the backup that the migrations did not make, created plainly from the manifest's
    columns (no keys, no constraints: the drill compares rows only). The names created."""
    made = []
    with pg_connect(scratch_settings(settings, database), autocommit=True) as conn:
        for t in manifest["tables"]:
            if t["store"] != "postgres":
                continue
            if conn.execute("select to_regclass(%s)", (sql.Identifier(t["name"]).as_string(conn),)).fetchone()[0]:
                continue
            cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c["name"]), sql.SQL(_type(c["type"])))
                                      for c in t["columns"])
            conn.execute(sql.SQL("create table {} ({})").format(sql.Identifier(t["name"]), cols))
            made.append(t["name"])
    return made


_NAME = r'(?:"[^"]+"|[a-z_][a-z0-9_$]*)'
TYPE_RE = re.compile(rf"{_NAME}(?:\.{_NAME})?(?: [a-z_][a-z0-9_]*)*(?:\(\d+(?:,\d+)?\))?"
                     r"(?: with(?:out)? time zone)?(?:\[\])*")
NOT_TYPE_WORDS = {"check", "default", "generated", "references", "constraint", "collate", "primary", "unique", "not",
                  "null", "as", "using", "identity", "always"}


def _type(text: str) -> str:
    """A column type as format_type() wrote it into the manifest (e.g. `character varying(200)`, `"Mood"[]`,
    `timestamp(3) with time zone`), checked before it goes into DDL: a (qualified) type name, type words, a
    numeric modifier, `with[out] time zone`, array brackets — never a constraint, a default or an expression."""
    words = set(re.sub(r'"[^"]*"', " ", text.lower()).replace("(", " ").replace(")", " ").split())
    if not text or not TYPE_RE.fullmatch(text) or words & NOT_TYPE_WORDS:
        raise JobFailed(f"the manifest names a column type {text!r} the drill cannot create")
    return text


def create_dynamo_table(settings: Settings, name: str, manifest: dict[str, Any]) -> bool:
    """The scratch DynamoDB table with the backup's key schema (attribute types from the live table when it has
    them, else S); False when the backup holds no DynamoDB table."""
    table = next((t for t in manifest["tables"] if t["store"] == "dynamodb"), None)
    if table is None:
        return False
    if name == settings.dynamo_table_name:
        raise JobFailed(f"the drill's scratch DynamoDB table {name} is the live table: refused")
    client = aws_client(settings, "dynamodb")
    types = {}
    if dynamo.exists(client, table["name"]):
        desc = client.describe_table(TableName=table["name"])["Table"]
        types = {a["AttributeName"]: a["AttributeType"] for a in desc.get("AttributeDefinitions", [])}
    keys = table["key_schema"]
    client.create_table(TableName=name, KeySchema=keys, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": k["AttributeName"],
                                               "AttributeType": types.get(k["AttributeName"], "S")} for k in keys])
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return True


def drop_scratch(settings: Settings, r: Any, job_id: str) -> None:
    """Drop what this drill created (recorded as it created it), never anything else."""
    made = jobs.value(r, job_id, "scratch", {}) or {}
    drop(settings, made.get("database"), made.get("dynamodb"))


def drop(settings: Settings, database: str | None, table: str | None) -> None:
    """Drop a scratch database and DynamoDB table (never the live ones)."""
    if database and database != settings.postgres_database:
        with pg_connect(settings, dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
    if table and table != settings.dynamo_table_name:
        dynamo.drop_table(aws_client(settings, "dynamodb"), table)


def _made(r: Any, job_id: str, **what: str) -> None:
    jobs.put_value(r, job_id, "scratch", {**(jobs.value(r, job_id, "scratch", {}) or {}), **what})


# comparing -----------------------------------------------------------------------------------------------------

def compare(settings: Settings, manifest: dict[str, Any], database: str, dynamo_table: str | None,
            restore_report: dict[str, Any]) -> list[DrillTable]:
    """Per table of the backup: rows and row hash of what the restore wrote against the manifest."""
    skipped = {s["name"]: s["reason"] for s in restore_report.get("skipped") or []}
    restored_ok = restore_report.get("state") == "succeeded"
    out = []
    with pg_connect(scratch_settings(settings, database)) as conn:
        for t in manifest["tables"]:
            row = DrillTable(name=t["name"], store=t["store"], rows_expected=t["rows"],
                             hash_expected=t.get("row_hash"), outcome="not restored")
            if t["name"] in skipped or not restored_ok:
                row.reason = skipped.get(t["name"]) or f"the restore failed: {restore_report.get('error')}"
                out.append(row)
                continue
            if t["store"] == "postgres":
                row.rows_found, row.hash_found = rowhash.postgres_table(conn, t["name"],
                                                                        [c["name"] for c in t["columns"]])
                conn.rollback()
            else:
                row.rows_found, row.hash_found = rowhash.dynamo_table(aws_client(settings, "dynamodb"), dynamo_table)
            out.append(judge(row))
    return out


def judge(row: DrillTable) -> DrillTable:
    if row.hash_expected is None:
        row.outcome = "hash not recorded" if row.rows_found == row.rows_expected else "mismatch"
        row.reason = (f"rows: expected {row.rows_expected}, found {row.rows_found}"
                      if row.outcome == "mismatch" else "the backup recorded no row hash: rows compared only")
    elif row.rows_found == row.rows_expected and row.hash_found == row.hash_expected:
        row.outcome = "match"
    else:
        row.outcome = "mismatch"
        parts = []
        if row.rows_found != row.rows_expected:
            parts.append(f"rows: expected {row.rows_expected}, found {row.rows_found}")
        if row.hash_found != row.hash_expected:
            parts.append(f"row hash: expected {row.hash_expected}, found {row.hash_found}")
        row.reason = "; ".join(parts)
    return row


def conclude(settings: Settings, r: Any, job_id: str, tables: list[DrillTable], error: str | None = None) -> None:
    """verified.json beside the manifest, the scratch dropped, the report."""
    options = jobs.options(r, job_id)
    bad = [t for t in tables if t.outcome not in ("match", "hash not recorded")]
    if bad and not error:
        error = f"{len(bad)} table(s) do not match: " + "; ".join(
            f"{t.name} {t.outcome}" + (f" ({t.reason})" if t.reason else "") for t in bad[:3])
    ok = not bad and not error
    marker = {"job_id": job_id, "ok": ok, "at": utcnow().isoformat(),
              "tables": [t.model_dump(mode="json") for t in tables], "error": error}
    markers.write(backups.store_for(settings, options), options, options["backup_id"], markers.VERIFIED, marker)
    try:
        drop_scratch(settings, r, job_id)
    finally:
        jobs.finish(r, job_id, DrillReport(job_id=job_id, state="succeeded", ok=ok, backup_id=options["backup_id"],
                                           tables=tables, marker=marker, error=error))


def release(settings: Settings, r: Any, job_id: str) -> None:
    """A failed drill drops its scratch database and table, and says so on the backup (verified.json, not ok)."""
    try:
        drop_scratch(settings, r, job_id)
    finally:
        options = jobs.options(r, job_id)
        progress = jobs.read(r, job_id)
        if options.get("backup_id") and jobs.mark(r, job_id, "marker-written"):
            markers.write(backups.store_for(settings, options), options, options["backup_id"], markers.VERIFIED,
                          {"job_id": job_id, "ok": False, "at": utcnow().isoformat(), "tables": [],
                           "error": progress.error if progress else "the drill failed"})


on_job_failure("backup_verify", release)


def newest_complete(settings: Settings, options: dict[str, Any]) -> str | None:
    listed = backups.list_backups(backups.store_for(settings, options), options, settings)
    return next((b["backup_id"] for b in listed if b["state"] == "complete"), None)


# tasks -----------------------------------------------------------------------------------------------------------

@app.task(name=TASK_DRILL_START, base=JobTask, bind=True, max_retries=0)
def start(self: JobTask, job_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    r, s = self.redis, self.settings
    if job_id is None:  # from beat: a drill of the newest complete backup, once per slot
        import secrets

        options = {**backups.store_options(s), **options}
        newest = newest_complete(s, options)
        tag = secrets.token_hex(4)
        options = {**options, "backup_id": newest, "tag": tag, "target_database": None}
        job_id = jobs.scheduled(r, "backup_verify", s.crontab("drill"), options)
        if job_id is None:
            return {"skipped": "slot already run, or a drill is running"}
        if newest is None:
            now = utcnow()
            jobs.finish(r, job_id, DrillReport(job_id=job_id, state="succeeded", ok=True, backup_id=None,
                                               started_at=now, finished_at=now,
                                               skipped="no complete backup to drill"))
            return {"job_id": job_id, "skipped": "no complete backup"}
        self.apply_async(kwargs={"job_id": job_id, "options": options})
        return {"job_id": job_id, "scheduled": True}
    if not jobs.start(r, job_id, 2):  # the restore, the comparison
        return {"job_id": job_id, "skipped": "already planned"}
    manifest = backups.read_manifest(backups.store_for(s, options), options, options["backup_id"], s,
                                     options.get("allow_unauthenticated", False))
    database, table = scratch_names(s, options["tag"], options.get("target_database"))
    create_database(s, database)
    _made(r, job_id, database=database)
    migrate_to(s, database, manifest["source"].get("migration_head"))
    create_missing_tables(s, database, manifest)
    if create_dynamo_table(s, table, manifest):
        _made(r, job_id, dynamodb=table)
    else:
        table = None
    restore_opts = {k: options[k] for k in ("s3_bucket", "backup_dir", "prefix") if k in options} | {
        "backup_id": options["backup_id"], "tables": [], "exact": False, "dry_run": False,
        "allow_unauthenticated": options.get("allow_unauthenticated", False),
        "target_database": database, "target_table": None, "target_dynamodb_table": table, "parent": job_id}
    child = jobs.create(r, "restore", restore_opts)
    jobs.put_value(r, job_id, "child", child)
    app.send_task(TASK_RESTORE_START, kwargs={"job_id": child, "options": restore_opts})
    log.info("drill %s: restore job %s into %s / %s", job_id, child, database, table)
    return {"job_id": job_id, "restore": child}


@app.task(name=TASK_DRILL_ADVANCE, base=JobTask, bind=True, max_retries=0)
def advance(self: JobTask, job_id: str, child: str) -> dict[str, Any]:
    r, s = self.redis, self.settings
    if jobs.value(r, job_id, "child") != child or not jobs.mark(r, job_id, f"advanced:{child}"):
        return {"job_id": job_id, "skipped": "not this drill's restore, or seen already"}
    jobs.add(r, job_id)
    options = jobs.options(r, job_id)
    manifest = backups.read_manifest(backups.store_for(s, options), options, options["backup_id"], s,
                                     options.get("allow_unauthenticated", False))
    made = jobs.value(r, job_id, "scratch", {}) or {}
    restore_report = jobs.report(r, child) or jobs.failed_report(r, child)
    tables = compare(s, manifest, made["database"], made.get("dynamodb"), restore_report)
    jobs.add(r, job_id, rows=sum(t.rows_found or 0 for t in tables))
    conclude(s, r, job_id, tables)
    return {"job_id": job_id, "tables": len(tables)}
