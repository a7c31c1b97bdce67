"""`worktask seed`: default configuration from seeds/*.yaml, one task per part, fanned out as a chord.

Parts: `postgres` (quality_standards, artifact_types, workgroup_skills, in one transaction, in that order
because artifact types name their standard) and one per DynamoDB set (rules, templates, personas, teams).
An item that exists and differs from its seed is a conflict, never overwritten unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml
from botocore.exceptions import ClientError
from psycopg import sql
from psycopg.types.json import Jsonb

from worker import jobs
from worker.app import app
from worker.connections import aws_client, pg_connect
from worker.constants import TASK_SEED_FINALIZE, TASK_SEED_SET, TASK_SEED_START
from worker.dynamo import from_item, to_item
from worker.errors import BadInput, JobFailed
from worker.reports import SeedReport, SeedSet
from worker.settings import Settings
from worker.taskbase import JobTask, fan_out

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"
PG_SETS = ("quality_standards", "artifact_types", "workgroup_skills")
DYNAMO_SETS = {"rules": "RULE", "templates": "TEMPLATE", "personas": "PERSONA", "teams": "TEAM"}
SET_ORDER = PG_SETS + tuple(DYNAMO_SETS)
DYNAMO_SK = "CONFIG"
MODES = ("conflict", "skip", "overwrite")


def load(name: str, seeds_dir: Path = SEEDS_DIR) -> list[dict[str, Any]]:
    path = seeds_dir / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BadInput(f"seed file {path} cannot be read: {err}") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and d.get("key") for d in data):
        raise BadInput(f"seed file {path} must be a list of mappings, each with a key")
    return data


def pg_rows(conn: psycopg.Connection, name: str) -> list[dict[str, Any]]:
    """The seed of one table as rows of its columns (artifact types resolve their standard's id)."""
    rows = []
    for e in load(name):
        row = {"key": e["key"], "name": e["name"], "description": e.get("description", "")}
        if name == "quality_standards":
            row |= {"criteria": e["criteria"], "threshold": e["threshold"]}
        elif name == "artifact_types":
            found = conn.execute("select id from quality_standards where key = %s", (e["standard"],)).fetchone()
            if not found:
                raise JobFailed(f"artifact type {e['key']}: quality standard {e['standard']!r} does not exist")
            row |= {"extensions": e["extensions"], "standard_id": found[0]}
        else:
            row |= {"skills": e["skills"], "artifact_types": e["artifact_types"]}
        rows.append(row)
    return rows


def seed_table(conn: psycopg.Connection, table: str, rows: list[dict[str, Any]], mode: str) -> SeedSet:
    result = SeedSet(name=table)
    cols = [c for c in rows[0] if c != "key"]
    ident = sql.Identifier(table)
    select = sql.SQL("select key, {} from {} where key = any(%s)").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), ident)
    existing = {r[0]: dict(zip(cols, r[1:])) for r in conn.execute(select, ([r["key"] for r in rows],))}
    insert = sql.SQL("insert into {} ({}) values ({}) on conflict (key) do nothing").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, ["key", *cols])),
        sql.SQL(", ").join(sql.Placeholder() * (len(cols) + 1)))
    update = sql.SQL("update {} set {}, updated_at = now() where key = %s").format(
        ident, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols))

    def values(row: dict[str, Any]) -> list[Any]:
        return [Jsonb(row[c]) if c == "criteria" else row[c] for c in cols]
    for row in rows:
        current = existing.get(row["key"])
        if current is None:
            conn.execute(insert, [row["key"], *values(row)])
            result.created += 1
        elif mode == "skip":
            result.skipped += 1
        elif all(current[c] == row[c] for c in cols):
            result.unchanged += 1
        elif mode == "overwrite":
            conn.execute(update, [*values(row), row["key"]])
            result.updated += 1
        else:
            result.conflicts += 1
            result.conflict_keys.append(row["key"])
    return result


def seed_postgres(settings: Settings, mode: str, dry_run: bool) -> list[SeedSet]:
    """The three configuration sets in one transaction; a dry run rolls it back."""
    with pg_connect(settings) as conn:
        try:
            results = [seed_table(conn, name, pg_rows(conn, name), mode) for name in PG_SETS]
        except psycopg.errors.UndefinedTable as err:
            raise JobFailed(f"{str(err).splitlines()[0]}: run worktask migrate first") from None
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    return results


def seed_dynamo(settings: Settings, name: str, mode: str, dry_run: bool) -> SeedSet:
    client, table = aws_client(settings, "dynamodb"), settings.dynamo_table_name
    result = SeedSet(name=name)
    try:
        for entry in load(name):
            item = {"PK": f"{DYNAMO_SETS[name]}#{entry['key']}", "SK": DYNAMO_SK, "type": name[:-1], **entry}
            key = to_item({"PK": item["PK"], "SK": DYNAMO_SK})
            got = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
            if got is None:
                if not dry_run:
                    client.put_item(TableName=table, Item=to_item(item), ConditionExpression="attribute_not_exists(PK)")
                result.created += 1
            elif mode == "skip":
                result.skipped += 1
            elif from_item(got) == item:
                result.unchanged += 1
            elif mode == "overwrite":
                if not dry_run:
                    client.put_item(TableName=table, Item=to_item(item))
                result.updated += 1
            else:
                result.conflicts += 1
                result.conflict_keys.append(entry["key"])
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise JobFailed(f"DynamoDB table {table} does not exist: run worktask migrate first") from None
        raise
    return result


def seed_part(settings: Settings, part: str, mode: str, dry_run: bool) -> list[SeedSet]:
    if mode not in MODES:
        raise BadInput(f"seed mode {mode!r}: expects one of {', '.join(MODES)}")
    if part == "postgres":
        return seed_postgres(settings, mode, dry_run)
    return [seed_dynamo(settings, part, mode, dry_run)]


def seed_report(job_id: str, options: dict[str, Any], sets: list[SeedSet]) -> SeedReport:
    sets = sorted(sets, key=lambda s: SET_ORDER.index(s.name))
    conflicts = [f"{s.name} ({', '.join(s.conflict_keys)})" for s in sets if s.conflicts]
    error = (f"{sum(s.conflicts for s in sets)} item(s) differ from their seed in {'; '.join(conflicts)}: "
             "--overwrite replaces them, --skip-existing keeps them") if conflicts else None
    return SeedReport(job_id=job_id, state="succeeded", ok=not conflicts, dry_run=bool(options.get("dry_run")),
                      config_only=bool(options.get("config_only")), sets=sets, error=error)


def parts(options: dict[str, Any]) -> list[str]:
    return ["postgres"] + ([] if options.get("config_only") else list(DYNAMO_SETS))


@app.task(name=TASK_SEED_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    todo = parts(options)
    if not jobs.start(self.redis, job_id, len(todo)):
        return {"job_id": job_id, "skipped": "already planned"}
    fan_out([seed_set.s(job_id=job_id, part=p, options=options) for p in todo],
            finalize.s(job_id=job_id, options=options))
    return {"job_id": job_id, "chunks": len(todo)}


@app.task(name=TASK_SEED_SET, base=JobTask, bind=True)
def seed_set(self: JobTask, job_id: str, part: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    results = seed_part(self.settings, part, options.get("mode", "conflict"), bool(options.get("dry_run")))
    jobs.add(self.redis, job_id, rows=sum(r.created + r.updated for r in results))
    return [r.model_dump() for r in results]


@app.task(name=TASK_SEED_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[list[dict[str, Any]]], job_id: str,
             options: dict[str, Any]) -> dict[str, Any]:
    report = seed_report(job_id, options, [SeedSet(**s) for part in results for s in part])
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "ok": report.ok}
