"""Where a restore writes and where it reads, when not the live installation (README "Restore into another target").

The job's options name the targets (no secret ever: a URL with a password is refused):
  target_database        None, a database name on the live server, or postgresql://user@host:port/db
  target_table           None, or the new name of the single PostgreSQL table restored beside the live one
  target_dynamodb_table  None, or the DynamoDB table the items go into (created when missing)
and `--from` overrides the store keys (s3_bucket, backup_dir, prefix) with another installation's store.

The CLI checks them here (exit 2, nothing changed); the workers see the targets through `target_settings`
(every PostgreSQL connection and the DynamoDB table of the job) and lock `lock_name` (one restore per
target database; the live one keeps the lock `restore` that backups look at).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from worker.errors import BadInput, ServiceUnavailable
from worker.settings import Settings

LIVE_LOCK = "restore"  # tasks/backup.py refuses while this one is held
DYNAMO_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
NAMEDATALEN = 63


# the options --------------------------------------------------------------------------------------------------

def _url_parts(target: str) -> dict[str, Any]:
    """host, port, dbname, user of a target (None where the target does not say)."""
    if "://" not in target:
        return {"host": None, "port": None, "dbname": target, "user": None}
    parts = urlsplit(target)
    return {"host": parts.hostname, "port": parts.port, "dbname": unquote(parts.path.lstrip("/")),
            "user": unquote(parts.username) if parts.username else None}


def database_option(settings: Settings, value: str | None) -> str | None:
    """--target-database as the job's option: a name, or a URL without password (canonical: a URL that
    names the live server and user becomes the database's name, so one target has one lock)."""
    if value is None:
        return None
    value = value.strip()
    if "://" in value:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as err:
            raise BadInput(f"--target-database {value!r}: {err}; e.g. postgresql://user@host:5432/dbname") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise BadInput(f"--target-database {parts.scheme}://…: expects postgresql://user@host:port/dbname")
        if parts.password is not None:
            raise BadInput("--target-database carries a password: it would travel in the task's arguments; leave "
                           "it out (the workers' POSTGRES_PASSWORD, POSTGRES_SECRET_ARN or ~/.pgpass apply)")
        if parts.query or parts.fragment or not parts.hostname or "/" in parts.path.lstrip("/"):
            raise BadInput(f"--target-database {value!r}: expects postgresql://user@host:port/dbname, nothing after")
        p = _url_parts(value)
        if not p["dbname"]:
            raise BadInput(f"--target-database {value!r} names no database: postgresql://user@host:port/dbname")
        same_server = (p["host"], p["port"] or 5432) == (settings.postgres_host, settings.postgres_port)
        if same_server and p["dbname"] == settings.postgres_database and not settings.postgres_secret_arn:
            value = p["dbname"]  # refused below, whatever the user
        elif same_server and (p["user"] or settings.postgres_user) == settings.postgres_user \
                and not settings.postgres_secret_arn:
            value = p["dbname"]
    elif not value or "/" in value:
        raise BadInput(f"--target-database {value!r}: expects a database name or postgresql://user@host:port/dbname")
    if value == settings.postgres_database and not settings.postgres_secret_arn:
        raise BadInput(f"--target-database {value} is the live database: leave --target-database out to restore "
                       "into it")
    if is_live(settings, {"target_database": value}):
        raise BadInput(f"--target-database {value} is the live database (by another name or address): leave "
                       "--target-database out to restore into it")
    return value


def _identity(settings: Settings) -> tuple[str, str] | None:
    """(database, server start time) of the database these settings reach: one server, one database, whatever
    the host is called. None when it cannot be reached (the callers' own checks say so)."""
    import psycopg

    from worker.connections import pg_params

    try:
        with psycopg.connect(**pg_params(settings), autocommit=True) as conn:
            row = conn.execute("select current_database(), pg_postmaster_start_time()::text").fetchone()
            return (row[0], row[1])
    except psycopg.Error:
        return None


def is_live(settings: Settings, options: dict[str, Any]) -> bool:
    """The target database of these options is the live database itself (a secret's dbname, an alias of the
    host, a URL for the same server): then a restore `into another database` would swap the live tables under
    another lock and drop a live restore's replacement tables. Checked by the CLI and again on the workers."""
    if not options.get("target_database"):
        return False
    live = _identity(settings)
    return live is not None and live == _identity(pg_settings(settings, options))


def pg_settings(settings: Settings, options: dict[str, Any]) -> Settings:
    """The settings every PostgreSQL connection of a restore job uses: the live ones, or the target database's
    (host, port and user from its URL where it gives them; the password the workers have for that user:
    POSTGRES_PASSWORD or the secret's, else libpq's ~/.pgpass)."""
    target = options.get("target_database")
    if not target:
        return settings
    from worker.connections import pg_params

    live = pg_params(settings)  # the secret's values, where POSTGRES_SECRET_ARN is set
    p = _url_parts(target)
    user = p["user"] or live["user"]
    update: dict[str, Any] = {"postgres_host": p["host"] or live["host"], "postgres_port": int(p["port"] or (
        5432 if p["host"] else live["port"])), "postgres_database": p["dbname"], "postgres_user": user,
        "postgres_secret_arn": None,
        "postgres_password": None}
    same_server = (update["postgres_host"], update["postgres_port"]) == (live["host"], int(live["port"]))
    if live.get("password") and user == live["user"] and same_server:  # never sent to another server
        update["postgres_password"] = SecretStr(live["password"])
    return settings.model_copy(update=update)


def target_settings(settings: Settings, options: dict[str, Any]) -> Settings:
    """pg_settings, and DYNAMO_TABLE_NAME the job's target DynamoDB table."""
    s = pg_settings(settings, options)
    if options.get("target_dynamodb_table"):
        s = s.model_copy(update={"dynamo_table_name": options["target_dynamodb_table"]})
    return s


def lock_name(options: dict[str, Any]) -> str:
    """One restore per target database: `restore` for the live one, `restore:<target>` for another."""
    target = options.get("target_database")
    return f"{LIVE_LOCK}:{target}" if target else LIVE_LOCK


def source_options(settings: Settings, source: str | None) -> dict[str, Any]:
    """The store keys of a job's options: this installation's, or with --from another's (s3://bucket/prefix, or
    the folder that holds the backup-id folders: backup_dir is its parent, prefix its name)."""
    from worker import backups

    opts = backups.store_options(settings)
    if source is None:
        return opts
    if source.startswith("s3://"):
        bucket, _, prefix = source[5:].partition("/")
        prefix = prefix.strip("/")
        if not bucket or not prefix:
            raise BadInput(f"--from {source!r}: expects s3://bucket/prefix (the prefix that holds the backup ids)")
        if ".." in prefix.split("/"):
            raise BadInput(f"--from {source!r}: '..' is not allowed in the prefix; name it as it is")
        return {**opts, "s3_bucket": bucket, "prefix": prefix}
    if "://" in source:
        raise BadInput(f"--from {source!r}: expects s3://bucket/prefix or a folder")
    if ".." in PurePosixPath(source).parts:
        raise BadInput(f"--from {source!r}: '..' is not allowed; give the folder's path without it")
    folder = Path(source).expanduser().absolute()
    if not folder.is_dir() or folder.parent == folder:
        raise BadInput(f"--from {source}: no such folder; give the folder that holds the backup-id folders")
    return {**opts, "s3_bucket": None, "backup_dir": str(folder.parent), "prefix": folder.name}


# the CLI's checks of the targets -------------------------------------------------------------------------------

def check_names(manifest: dict[str, Any], tables: list[str], target_table: str | None,
                target_dynamodb_table: str | None, target_database: str | None) -> None:
    """The combinations: --target-table with exactly one PostgreSQL table that is not a partition;
    --target-dynamodb-table only when the DynamoDB table is restored; --target-database with the DynamoDB
    table only together with --target-dynamodb-table (its items would go into the live one)."""
    entries = {t["name"]: t for t in manifest["tables"]}
    restored = tables or list(entries)
    dyn = next((n for n in restored if entries[n]["store"] == "dynamodb"), None)
    if target_table is not None:
        if len(restored) != 1 or entries[restored[0]]["store"] != "postgres":
            raise BadInput("--target-table restores exactly one PostgreSQL table: name it with --tables, e.g. "
                           f"--tables services --target-table {target_table}")
        if entries[restored[0]].get("partition_of"):
            raise BadInput(f"--target-table: {restored[0]} is a partition (of {entries[restored[0]]['partition_of']})"
                           "; a partition or partitioned table cannot be restored beside the live one")
        if not target_table.strip() or len(target_table.encode()) > NAMEDATALEN:
            raise BadInput(f"--target-table {target_table!r}: a table name of 1-{NAMEDATALEN} bytes")
        if target_table == restored[0]:
            raise BadInput(f"--target-table {target_table} is the table itself: name a new table, "
                           f"e.g. {restored[0]}_restored")
        if target_table.startswith("worktask_restore_") or "__restore_" in target_table:
            raise BadInput(f"--target-table {target_table!r}: names like the restore's own replacement tables "
                           "are reserved; pick another")
    if target_dynamodb_table is not None:
        if not DYNAMO_NAME.fullmatch(target_dynamodb_table):
            raise BadInput(f"--target-dynamodb-table {target_dynamodb_table!r}: a DynamoDB table name is 3-255 "
                           "of A-Z a-z 0-9 _ . -")
        if not dyn:
            raise BadInput("--target-dynamodb-table: the restore holds no DynamoDB table (see --tables)")
    pg_restored = [n for n in restored if entries[n]["store"] == "postgres"]
    if target_dynamodb_table is not None and pg_restored and not target_database and target_table is None:
        raise BadInput(f"--target-dynamodb-table restores DynamoDB elsewhere, but {', '.join(pg_restored[:3])}"
                       f"{' …' if len(pg_restored) > 3 else ''} would replace the live tables: add --target-database "
                       "NAME, or restore the DynamoDB table alone (--tables "
                       f"{dyn} --target-dynamodb-table {target_dynamodb_table})")
    if target_database and dyn and not target_dynamodb_table:
        raise BadInput(f"--target-database restores PostgreSQL elsewhere, but the DynamoDB table {dyn} would go "
                       "into the live one: add --target-dynamodb-table NAME, or leave it out with --tables")


def _missing_database(err: Exception) -> bool:
    return "does not exist" in str(err)


def check_database(settings: Settings, options: dict[str, Any], pg_tables: list[str],
                   target_table: str | None) -> None:
    """The target database answers, holds the tables and not --target-table (exit 2 naming the fix)."""
    import psycopg

    s = pg_settings(settings, options)
    from worker.connections import pg_params, pg_where

    params = pg_params(s)
    where = pg_where(params)
    try:
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.OperationalError as err:
        if _missing_database(err):
            raise BadInput(f"target database {where} does not exist: create it and migrate it to the backup's "
                           f"head (createdb {params['dbname']}; then worktask migrate with "
                           f"POSTGRES_DATABASE={params['dbname']} on the workers)") from None
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ServiceUnavailable(f"cannot reach the target database at {where}: {reason}") from None
    with conn:
        missing = [t for t in pg_tables
                   if conn.execute("select to_regclass(format('public.%%I', %s::text))", (t,)).fetchone()[0] is None]
        if missing:
            raise BadInput(f"target database {where} has no table {', '.join(missing)}: migrate it to the "
                           "backup's head first")
        if target_table and conn.execute("select to_regclass(format('public.%%I', %s::text))",
                                         (target_table,)).fetchone()[0] is not None:
            raise BadInput(f"--target-table {target_table} exists already in {where}: drop it or pick another name")
