"""One plain function per CLI command: settings and arguments in, a report (dict) out; never prints."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from worker.constants import (
    TASK_BACKUP_START,
    TASK_BACKUP_VALIDATE_START,
    TASK_CLEANUP_START,
    TASK_DRILL_START,
    TASK_HEALTH_START,
    TASK_INIT_START,
    TASK_MAINTENANCE_START,
    TASK_MIGRATE_START,
    TASK_OPTIMIZE_START,
    TASK_RESTORE_START,
    TASK_SEED_START,
    TASK_TESTDATA_START,
    TASK_VALIDATE_DATA_START,
)
from worker.errors import BadInput, ServiceUnavailable

if TYPE_CHECKING:
    from worker.reports import Progress
    from worker.settings import Settings

# Each command imports what it uses (celery, alembic, sqlalchemy, boto3, redis…) when it runs, so that
# `worktask --help`, a usage error and a command that needs none of them start fast (tests/test_layout.py).

ProgressFn = Callable[["Progress"], None]


def config(settings: Settings) -> dict[str, Any]:
    return settings.public_dict()


_PLANNING: ContextVar[list[dict[str, Any]] | None] = ContextVar("_PLANNING", default=None)


def submit(settings: Settings, kind: str, task: str, options: dict[str, Any]) -> str:
    """Enqueue a job; ServiceUnavailable (exit 3) when Redis or the workers do not answer. While a pipeline
    plans its steps (plan_step), the job is recorded instead of enqueued."""
    from worker import workers
    from worker.connections import check_redis

    planned = _PLANNING.get()
    if planned is not None:
        planned.append({"kind": kind, "task": task, "options": options})
        return ""
    from worker.app import app

    r = check_redis(settings)
    return workers.submit(app, settings, r, kind, task, options)


def wait(settings: Settings, job_id: str, timeout: float | None = None,
         on_progress: ProgressFn | None = None, submitted: bool = False) -> dict[str, Any]:
    from worker import jobs
    from worker.connections import check_redis, redis_client

    # a job just submitted is waited for through a Redis that may go and come back (jobs.wait gives it a bound)
    r = redis_client(settings) if submitted else check_redis(settings)
    return jobs.wait(r, job_id, timeout or settings.job_timeout, on_progress, submitted=submitted)


def health(settings: Settings) -> str:
    return submit(settings, "health", TASK_HEALTH_START, {})


def migrate(settings: Settings, action: str, target: str | None, dry_run: bool) -> str:
    """Enqueue an upgrade or rollback; the migrations folder is checked here, before anything runs."""
    from worker import migrator

    path = migrator.script_path(settings)
    if target and action == "upgrade" and target != "head":
        raise BadInput("migrate applies everything pending; to stop earlier, roll back afterwards")
    if target and target not in ("base", "-1"):
        known = {s.revision for s in migrator.scripts(path, settings).walk_revisions()}
        if target not in known:
            raise BadInput(f"version {target!r} is not a migration in {path}; see worktask migrate status")
    return submit(settings, "migrate", TASK_MIGRATE_START,
                  {"action": action, "target": target, "dry_run": dry_run, "migrations_path": str(path)})


def migrate_status(settings: Settings) -> dict[str, Any]:
    from worker import migrator

    return migrator.status(settings, migrator.script_path(settings))


def migrate_create(settings: Settings, name: str, description: str) -> str:
    from worker import migrator

    return str(migrator.create(settings, migrator.script_path(settings), name, description))


def seed(settings: Settings, config_only: bool, mode: str, dry_run: bool) -> str:
    return submit(settings, "seed", TASK_SEED_START, {"config_only": config_only, "mode": mode, "dry_run": dry_run})


def backup(settings: Settings, compress: bool, encrypt: bool, chunk_rows: int | None,
           skip_dynamodb: bool = False) -> str:
    """Enqueue a full backup; exit 2 when encryption is on without a key or with a KMS key that cannot be used,
    3 when the store (or KMS) is unreachable."""
    from worker import backups

    backups.require_key(settings, encrypt)
    opts = backups.backup_options(settings, compress, encrypt, chunk_rows, skip_dynamodb)
    if encrypt and opts["kms_key_id"]:
        backups.check_kms_key(settings, opts["kms_key_id"])
    backups.store_for(settings, opts).check()
    return submit(settings, "backup", TASK_BACKUP_START, opts)


def backup_list(settings: Settings, source: str | None = None) -> list[dict[str, Any]]:
    """The backups of this installation's store, or with `source` (--from) of another's."""
    from worker import backups, restore_target

    opts = restore_target.source_options(settings, source)
    return backups.list_backups(backups.store_for(settings, opts), opts, settings)


def backup_validate(settings: Settings, backup_id: str, allow_unauthenticated: bool = False,
                    source: str | None = None) -> str:
    """Refuse a malformed or unknown id, or a manifest that fails authentication (exit 2), before anything is
    enqueued; the workers check the manifest again with the same options. `source`: --from another store."""
    from worker import backups, restore_target

    backups.check_backup_id(backup_id)
    opts = restore_target.source_options(settings, source)
    backups.read_manifest(backups.store_for(settings, opts), opts, backup_id, settings, allow_unauthenticated)
    return submit(settings, "backup_validate", TASK_BACKUP_VALIDATE_START,
                  {**opts, "backup_id": backup_id, **backups.auth_options(settings, allow_unauthenticated)})


def backup_verify(settings: Settings, backup_id: str, restore_test: bool, target_database: str | None = None,
                  allow_unauthenticated: bool = False) -> str:
    """The restore drill: refuse (exit 2) without --restore-test, a malformed or unknown id, a manifest that fails
    authentication, a --target-database that is not a plain name or that exists already; then enqueue."""
    from worker import backups

    if not restore_test:
        raise BadInput("backup verify restores the backup into a scratch database to prove it: pass --restore-test "
                       "(or run `worktask backup validate ID` to check the chunks' checksums alone)")
    backups.check_backup_id(backup_id)
    if target_database is not None:
        if not target_database or "/" in target_database or ":" in target_database or len(target_database) > 63:
            raise BadInput(f"--target-database {target_database!r}: give a database name on the same server "
                           "(at most 63 characters), which the drill creates and drops")
        if target_database == settings.postgres_database or _database_exists(settings, target_database):
            raise BadInput(f"--target-database {target_database}: that database exists already, and the drill drops "
                           "what it restores into; name one that does not exist, or leave the option out")
    opts = backups.store_options(settings)
    backups.read_manifest(backups.store_for(settings, opts), opts, backup_id, settings, allow_unauthenticated)
    return submit(settings, "backup_verify", TASK_DRILL_START,
                  {**opts, "backup_id": backup_id, "tag": secrets.token_hex(4), "target_database": target_database,
                   **backups.auth_options(settings, allow_unauthenticated)})


def _database_exists(settings: Settings, name: str) -> bool:
    from worker.connections import pg_connect

    with pg_connect(settings, dbname="postgres") as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def backup_cleanup(settings: Settings, retention_days: int | None, dry_run: bool, **keep: int | None) -> str:
    """Enqueue a clean-up under the retention policy: each of retention_days and keep_last/keep_daily/
    keep_weekly/keep_monthly given (not None) beats its setting (worker/retention.py policy_options)."""
    from worker import backups, retention

    opts = backups.store_options(settings)
    return submit(settings, "backup_cleanup", TASK_CLEANUP_START,
                  {**opts, **retention.policy_options(settings, retention_days, **keep), "dry_run": dry_run})


def _dynamo_exists(settings: Settings, table: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    from worker import dynamo
    from worker.connections import aws_client

    try:
        return dynamo.exists(aws_client(settings, "dynamodb"), table)
    except (BotoCoreError, ClientError) as err:
        raise ServiceUnavailable(f"cannot reach DynamoDB ({settings.aws_endpoint_url or 'AWS'}): {err}") from None


def table_names(option: str | None, settings: Settings) -> list[str]:
    """The tables a restore is limited to: --tables, else TABLES_ONLY; [] (every table) only when neither is
    given. An empty or blank value is refused: a script's `--tables "$UNSET"` must not restore everything."""
    if option is None:
        raw = os.environ.get("TABLES_ONLY")
        if raw is not None and not raw.strip():
            raise BadInput("TABLES_ONLY is set but empty: unset it to restore every table, or name them, "
                           "e.g. TABLES_ONLY=services,dependencies")
        return settings.tables
    names = [n.strip() for n in option.split(",")]
    if not all(names):
        raise BadInput(f"--tables {option!r} names an empty table: leave --tables out to restore every table, or "
                       "name them, e.g. --tables services,dependencies")
    return names


def restore(settings: Settings, backup_id: str, tables: list[str], exact: bool, dry_run: bool,
            allow_schema_mismatch: bool, allow_unauthenticated: bool = False, target_database: str | None = None,
            target_table: str | None = None, target_dynamodb_table: str | None = None,
            source: str | None = None) -> str:
    """Check the id, the manifest's MAC, the table names, the targets (worker/restore_target.py) and the schema
    of the database restored into against the backup (exit 2), then enqueue; the workers check the manifest
    again with the same options."""
    from worker import backups, migrator, restore_target

    backups.check_backup_id(backup_id)
    opts = restore_target.source_options(settings, source)
    target_database = restore_target.database_option(settings, target_database)
    if target_dynamodb_table == settings.dynamo_table_name:
        target_dynamodb_table = None  # the live table: as without the option
    manifest = backups.read_manifest(backups.store_for(settings, opts), opts, backup_id, settings,
                                     allow_unauthenticated)
    held = [t["name"] for t in manifest["tables"]]
    leaves = {}  # a partitioned table stands for its partitions (the backup holds only those)
    for t in manifest["tables"]:
        if t.get("partition_of"):
            leaves.setdefault(t["partition_of"], []).append(t["name"])
    if target_table is not None and len(tables) == 1 and tables[0] in leaves and tables[0] not in held:
        raise BadInput(f"--target-table: {tables[0]} is a partitioned table; a partition or partitioned table "
                       "cannot be restored beside the live one")
    tables = [leaf for t in tables for leaf in (leaves[t] if t not in held and t in leaves else [t])]
    unknown = [t for t in tables if t not in held]
    if unknown:
        # ascii(): a look-alike (Cyrillic 'е' in "sеrvices") shows as what it is, not as the name it mimics
        raise BadInput(f"backup {backup_id} holds no table {', '.join(map(ascii, unknown))}; "
                       f"it holds: {', '.join(held)}")
    restore_target.check_names(manifest, tables, target_table, target_dynamodb_table, target_database)
    dyn = next((t["name"] for t in manifest["tables"] if t["store"] == "dynamodb"), None)
    into = target_dynamodb_table or settings.dynamo_table_name
    if dyn and dyn != into and not target_dynamodb_table and (not tables or dyn in tables):
        raise BadInput(f"the backup's DynamoDB table is {dyn}, DYNAMO_TABLE_NAME is {settings.dynamo_table_name}: "
                       f"restore into the same table, name one with --target-dynamodb-table, or leave it out "
                       "with --tables")
    if dyn and not target_dynamodb_table and (not tables or dyn in tables) and not _dynamo_exists(settings, dyn):
        raise BadInput(f"DynamoDB table {dyn!r} does not exist (the restore writes into it): create it with "
                       "worktask migrate, or leave it out with --tables")
    options = {**opts, "target_database": target_database, "target_table": target_table,
               "target_dynamodb_table": target_dynamodb_table}
    pg_tables = [t["name"] for t in manifest["tables"]
                 if t["store"] == "postgres" and (not tables or t["name"] in tables)]
    if target_database or target_table:
        restore_target.check_database(settings, options, pg_tables, target_table)
    head = migrator.current(restore_target.pg_settings(settings, options))
    theirs = manifest["source"].get("migration_head")
    if head != theirs and not allow_schema_mismatch:
        where = f"database {target_database}" if target_database else "database"
        raise BadInput(f"schema mismatch: the {where} is at migration {head or 'base'}, the backup at "
                       f"{theirs or 'base'}; migrate to match, or pass --allow-schema-mismatch")
    return submit(settings, "restore", TASK_RESTORE_START, {**options, "backup_id": backup_id, "tables": tables,
                                                            "exact": exact, "dry_run": dry_run,
                                                            **backups.auth_options(settings, allow_unauthenticated)})


def validate(settings: Settings, fix: bool, kinds: list[str] | None = None) -> str:
    """A validation job; with fix, the fix kinds it may apply (None: every kind, as `validate --fix` on the CLI;
    maintenance passes FIX_KINDS) and where its quarantine goes (worker/fixes.py, worker/quarantine.py)."""
    from worker import fixes, quarantine

    return submit(settings, "validate", TASK_VALIDATE_DATA_START,
                  {"fix": fix, "fix_kinds": list(fixes.KINDS) if kinds is None else kinds,
                   "fix_min_age_minutes": settings.fix_min_age_minutes, **quarantine.store_settings(settings)})


def testdata(settings: Settings, action: str, count: int | None = None, seed: int | None = None,
             no_files: bool = False, no_dynamodb: bool = False) -> str:
    from worker import backups

    opts = {**backups.store_options(settings), "action": action, "count": count, "seed_given": seed is not None,
            "seed": seed if seed is not None else secrets.randbelow(2**31), "no_files": no_files,
            "no_dynamodb": no_dynamodb}
    return submit(settings, f"testdata_{action}", TASK_TESTDATA_START, opts)


def job_show(settings: Settings, job_id: str) -> dict[str, Any]:
    from worker import jobs
    from worker.connections import check_redis

    jobs.check_id(job_id)
    r = check_redis(settings)
    progress = jobs.read(r, job_id)
    if progress is None:
        raise BadInput(f"job {job_id} not found in Redis (jobs are kept 14 days); check the id")
    return {"progress": progress.model_dump(mode="json"), "report": jobs.report(r, job_id)}


def stack_up(settings: Settings, aws: str) -> dict[str, Any]:
    from worker.stack import Stack, require_local

    require_local()
    stack = Stack(settings)
    state = stack.up(aws)
    return {"already_up": bool(state.get("already_up")), "state_file": str(stack.file),
            "services": stack.status()}


def stack_down(settings: Settings) -> dict[str, Any]:
    from worker.stack import Stack, require_local

    require_local()
    stack = Stack(settings)
    state = stack.read() or {}
    stopped = stack.down()
    moto = any(s["name"] == "moto" and s.get("started") for s in state.get("services", []))
    return {"stopped": stopped, "moto_state_lost": moto}


def stack_status(settings: Settings) -> dict[str, Any]:
    from worker.stack import Stack, require_local

    require_local()
    return {"services": Stack(settings).status()}


# pipelines (worker/pipeline.py) -----------------------------------------------------------------------------

def plan_step(name: str, skip: str | None, call: Callable[[], str]) -> dict[str, Any]:
    """A pipeline's step: what `call` (one of the command functions above) would submit, with its checks run
    (bad input fails here, before anything runs), not submitted. A skipped step is not planned."""
    if skip:
        return {"name": name, "skip": skip}
    token = _PLANNING.set([])
    try:
        call()
        (job,) = _PLANNING.get() or [None]
    finally:
        _PLANNING.reset(token)
    return {"name": name, "skip": None, **job}


def init_options(settings: Settings, skip: dict[str, bool], test_data: int | None, dry_run: bool) -> dict[str, Any]:
    """migrate -> seed (skip-existing) -> testdata (when asked for) -> validate -> backup; skips name their switch."""
    def why(step: str) -> str | None:
        return f"SKIP_{step.upper()} / --skip-{step}" if skip.get(step) else None
    dry = "dry run: {} has no dry run, it would {}"
    testdata_skip = ("not asked for (GENERATE_TEST_DATA / --test-data)" if test_data is None else
                     dry.format("testdata generate", f"generate {test_data} work tasks") if dry_run else None)
    steps = [
        plan_step("migrate", why("migrations"), lambda: migrate(settings, "upgrade", None, dry_run)),
        plan_step("seed", why("seeding"), lambda: seed(settings, False, "skip", dry_run)),
        plan_step("testdata", testdata_skip, lambda: testdata(settings, "generate", test_data)),
        plan_step("validate", why("validation"), lambda: validate(settings, False)),
        plan_step("backup", why("backup") or (dry.format("backup", "write a backup") if dry_run else None),
                  lambda: backup(settings, settings.compression_enabled, settings.encryption_enabled, None)),
    ]
    return {"dry_run": dry_run, "steps": steps}


def init(settings: Settings, skip: dict[str, bool], test_data: int | None, dry_run: bool) -> str:
    return submit(settings, "init", TASK_INIT_START, init_options(settings, skip, test_data, dry_run))


OPTIMIZE_DEFAULTS = {"dead_ratio": 0.1, "min_dead": 100, "min_mods": 1000, "analyze_age_days": 7, "lock_timeout": 2.0}


def optimize(settings: Settings, dry_run: bool) -> str:
    """VACUUM (ANALYZE) of the tables that need it (maintenance's optimize step; a job of kind optimize)."""
    return submit(settings, "optimize", TASK_OPTIMIZE_START, {**OPTIMIZE_DEFAULTS, "dry_run": dry_run})


def newest_unvalidated(settings: Settings, dry_run: bool) -> tuple[str | None, str | None]:
    """(the newest complete backup when it was never validated, else None; the reason to skip the step)."""
    from worker import backups

    complete = [b for b in backup_list(settings) if b["state"] == "complete"]
    if not complete:
        return None, "no complete backup"
    newest = complete[0]
    if newest.get("validated"):
        return None, f"newest complete backup {newest['backup_id']} validated already ({newest['validated']['at']})"
    if dry_run:
        return None, f"dry run: it would validate backup {newest['backup_id']}"
    return backups.check_backup_id(newest["backup_id"]), None


def _backup_validate_step(settings: Settings, dry_run: bool) -> dict[str, Any]:
    """Maintenance's last step: `backup validate` of the newest complete backup when it was never validated
    (the nightly backup's own check, so that health does not call it unvalidated every morning). A manifest that
    cannot be checked here (no MAC while a key is set) is a skip naming why, not a maintenance refused."""
    try:
        backup_id, skip = newest_unvalidated(settings, dry_run)
        return plan_step("backup_validate", skip, lambda: backup_validate(settings, str(backup_id)))
    except (BadInput, ServiceUnavailable) as err:  # the other steps run; health names the backup unvalidated
        return {"name": "backup_validate", "skip": f"cannot validate the newest backup here: {err}"}


def maintenance_options(settings: Settings, retention_days: int, fix: bool, dry_run: bool,
                        fix_kinds: list[str] | None = None) -> dict[str, Any]:
    """backup_cleanup -> validate (--fix: the kinds of FIX_KINDS unless given) -> optimize -> backup_validate (the
    newest backup, once); beat's scheduled run plans with the worker's settings."""
    fix_kinds = fix_kinds or settings.fix_kinds.split(",")
    steps = [
        plan_step("backup_cleanup", None, lambda: backup_cleanup(settings, retention_days, dry_run)),
        plan_step("validate", None, lambda: validate(settings, fix and not dry_run, fix_kinds)),
        plan_step("optimize", None, lambda: optimize(settings, dry_run)),
        _backup_validate_step(settings, dry_run),
    ]
    return {"dry_run": dry_run, "fix": fix, "fix_kinds": fix_kinds, "retention_days": retention_days, "steps": steps}


def maintenance(settings: Settings, retention_days: int, fix: bool, dry_run: bool,
                fix_kinds: list[str] | None = None) -> str:
    return submit(settings, "maintenance", TASK_MAINTENANCE_START,
                  maintenance_options(settings, retention_days, fix, dry_run, fix_kinds))


def pipeline_step(settings: Settings, job_id: str) -> str | None:
    """`step seed: 3/7 chunks`: the running step of a pipeline (worker/pipeline.py) and its job's own progress."""
    from worker import jobs
    from worker.connections import check_redis

    r = check_redis(settings)
    current = jobs.value(r, job_id, "current")
    p = jobs.read(r, current["child"]) if current else None
    if not current or p is None:
        return None
    return f"step {current['step']}: {p.chunks_done}/{p.chunks_total or '?'} chunks" + (
        f", {p.rows:,} rows" if p.rows else "")


def job_list(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The newest `limit` jobs, newest first (DESIGN §11: job_id, kind, trigger, state, times, duration_s)."""
    from worker import jobs
    from worker.connections import check_redis

    if limit < 1:
        raise BadInput(f"--limit {limit}: expects a whole number of jobs, 1 or more")
    return jobs.recent(check_redis(settings), limit)
