"""The `worktask` commands that run data jobs: migrate, seed, backup, restore, validate, testdata.

They are plain click commands listed in COMMANDS; worker/cli.py adds them to its group. This module imports
only the shared pieces (worker/cli_options.py), never worker/cli.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from worker import commands
from worker.cli_options import dry_run_option, emit_json, flag_or, output_options, run_job, settings
from worker.constants import RETENTION_DAYS_MAX
from worker.render import (
    STEP_DETAIL,
    err,
    human_bytes,
    out,
    render_backup,
    render_backup_validate,
    render_cleanup,
    render_drill,
    render_migrate,
    render_pipeline,
    render_rekey,
    render_rekey_line,
    render_restore,
    render_seed,
    render_testdata,
    render_undo,
    render_validate,
)

if TYPE_CHECKING:
    from worker.reports import Progress as JobProgress


@click.group(invoke_without_command=True)
@dry_run_option
@output_options()
@click.pass_context
def migrate(ctx: click.Context, dry_run: bool | None, as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Apply pending migrations in version order (a job on the workers).

    With --dry-run (or DRY_RUN=true), print the SQL that would run from the current revision.

    \b
    Examples:
      worktask migrate
      worktask migrate --dry-run > pending.sql
      worktask migrate status
    """
    if ctx.invoked_subcommand:
        return 0
    s = settings()
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.migrate(s, "upgrade", None, dry), "migrate", as_json, no_wait, timeout,
                   render_migrate)


@migrate.command("status")
@output_options(wait=False)
def migrate_status(as_json: bool) -> int:
    """List applied and pending migrations (version, name, description, applied-at) and drift.

    Exit 1 when a migration file changed after it was applied.

    \b
    Example:
      worktask migrate status --json
    """
    data = commands.migrate_status(settings())
    if as_json:
        emit_json(data)
    else:
        table = Table("version", "name", "description", "applied at", title=f"current: {data['current'] or 'base'}")
        for m in data["applied"]:
            flag = " [red](drift)[/]" if m["version"] in data["drift"] else ""
            table.add_row(m["version"] + flag, escape(m["name"]), escape(m["description"]), m["applied_at"] or "?")
        for m in data["pending"]:
            table.add_row(m["version"], escape(m["name"]), escape(m["description"]), "[yellow]pending[/]")
        out.print(table)
        if data["drift"]:
            err.print(f"drift: {', '.join(data['drift'])} changed after being applied", markup=False)
    return 1 if data["drift"] else 0


@migrate.command("rollback")
@click.argument("version", required=False)
@dry_run_option
@output_options()
def migrate_rollback(version: str | None, dry_run: bool | None, as_json: bool, no_wait: bool,
                     timeout: int | None) -> int:
    """Roll back down to VERSION (it stays applied); default one step; `base` rolls back everything.

    \b
    Examples:
      worktask migrate rollback
      worktask migrate rollback 20261124100100
      worktask migrate rollback base --dry-run
    """
    s = settings()
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.migrate(s, "downgrade", version or "-1", dry), "migrate", as_json, no_wait,
                   timeout, render_migrate)


@migrate.command("create")
@click.argument("name")
@click.argument("description", required=False, default="")
def migrate_create(name: str, description: str) -> int:
    """Write migrations/versions/<YYYYMMDDHHMMSS>_<name>.py with upgrade(), downgrade() and validate().

    \b
    Example:
      worktask migrate create add_task_labels "labels on work tasks"
    """
    out.print(commands.migrate_create(settings(), name, description), markup=False)
    return 0


@click.command()
@click.option("--config-only", is_flag=True, help="Only the three work-task configuration sets (PostgreSQL).")
@click.option("--skip-existing/--no-skip-existing", default=None,
              help="Leave items that exist as they are (default: SKIP_EXISTING).")
@click.option("--overwrite", is_flag=True, help="Replace items that differ from their seed.")
@dry_run_option
@output_options()
def seed(config_only: bool, skip_existing: bool | None, overwrite: bool, dry_run: bool | None, as_json: bool,
         no_wait: bool, timeout: int | None) -> int:
    """Seed the default configuration: quality standards, artifact types, workgroup skills (PostgreSQL),
    rules, templates, personas and teams (DynamoDB), from seeds/*.yaml.

    An existing item that differs from its seed is a conflict (exit 1), never silently overwritten.

    \b
    Examples:
      worktask seed
      worktask seed --config-only --dry-run
      SKIP_EXISTING=true worktask seed
    """
    s = settings()
    skip = flag_or(skip_existing, s.skip_existing)
    if skip and overwrite:
        raise click.UsageError("--overwrite and --skip-existing (SKIP_EXISTING) exclude each other")
    mode = "overwrite" if overwrite else "skip" if skip else "conflict"
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.seed(s, config_only, mode, dry), "seed", as_json, no_wait, timeout, render_seed)


@click.group(invoke_without_command=True)
@click.option("--compress/--no-compress", default=None, help="zstd (default: COMPRESSION_ENABLED).")
@click.option("--encrypt/--no-encrypt", default=None, help="AES-256-GCM (default: ENCRYPTION_ENABLED).")
@click.option("--chunk-rows", type=click.IntRange(1000), default=None, help="Rows per chunk (default: CHUNK_ROWS).")
@click.option("--skip-dynamodb", is_flag=True, help="Back up the PostgreSQL tables only (what pg_dump would).")
@output_options()
@click.pass_context
def backup(ctx: click.Context, compress: bool | None, encrypt: bool | None, chunk_rows: int | None,
           skip_dynamodb: bool, as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Back up every PostgreSQL table and the DynamoDB table: one task per page range and scan segment,
    through one snapshot, compressed, encrypted and checksummed; the manifest is written last.

    \b
    Examples:
      export BACKUP_ENCRYPTION_KEY=$(worktask keygen)   # keep it: restores need it
      worktask backup
      worktask backup list
      worktask backup validate 20261124T101500Z-backup-1a2b3c
    """
    if ctx.invoked_subcommand:
        return 0
    s = settings()
    comp = flag_or(compress, s.compression_enabled)
    enc = flag_or(encrypt, s.encryption_enabled)
    return run_job(lambda: commands.backup(s, comp, enc, chunk_rows, skip_dynamodb), "backup", as_json, no_wait,
                   timeout, render_backup)


def _marker_cell(marker: dict | None) -> str:
    """A short column of `backup list`: when the last validation / drill was, and whether it passed."""
    if marker is None:
        return "-"
    return f"[green]ok[/] {marker['at'][:10]}" if marker["ok"] else f"[red]FAIL[/] {marker['at'][:10]}"


FROM_HELP = ("Read the backup from another installation's store: s3://bucket/prefix, or the folder that holds "
             "the backup-id folders (default: this installation's S3_BUCKET_NAME/BACKUP_DIR and BACKUP_PREFIX).")
from_option = click.option("--from", "source", default=None, metavar="s3://BUCKET/PREFIX|FOLDER", help=FROM_HELP)


@backup.command("list")
@from_option
@output_options(wait=False)
def backup_list(source: str | None, as_json: bool) -> int:
    """List backups newest first: id, time, state (complete/incomplete/failed), tables, rows, size, and the
    outcome and date of its last validation (`valid.`) and restore drill (`drill`); `-` for never.

    \b
    Examples:
      worktask backup list --json
      worktask backup list --from s3://other-bucket/backups
    """
    rows = commands.backup_list(settings(), source)
    if as_json:
        emit_json([{k: r[k] for k in ("backup_id", "state", "created_at", "tables", "rows", "bytes_stored",
                                      "encrypted", "compressed", "duration_s", "authenticated", "validated",
                                      "verified")} for r in rows])
        return 0
    table = Table("backup id", "created (UTC)", "state", "tables", "rows", "size", "duration", "enc", "zstd", "mac",
                  "valid.", "drill")
    for r in rows:
        colour = {"complete": "green", "failed": "red"}.get(r["state"], "yellow")
        table.add_row(r["backup_id"], r["created_at"][:19], f"[{colour}]{r['state']}[/]", str(r["tables"]),
                      f"{r['rows']:,}", human_bytes(r["bytes_stored"]),
                      f"{r['duration_s']:.1f} s" if r["duration_s"] is not None else "-",
                      str(r["encrypted"]) if r["encrypted"] is not None else "-",
                      str(r["compressed"]) if r["compressed"] is not None else "-",
                      {True: "ok", False: "none"}.get(r["authenticated"], "-"),
                      _marker_cell(r["validated"]), _marker_cell(r["verified"]))
    out.print(table)
    return 0


@backup.command("rekey")
@click.argument("backup_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every complete backup in the store.")
@click.option("--new-key", "new_key", metavar="FILE|-", default=None,
              help="A file holding the new BACKUP_ENCRYPTION_KEY (base64, as worktask keygen prints), or - to "
                   "read it from stdin. Never the key itself: arguments show in ps.")
@click.option("--new-kms-key-id", default=None, metavar="ID", help="The new KMS key: id, ARN or alias/NAME.")
@output_options(wait=False)
def backup_rekey(backup_ids: tuple[str, ...], every: bool, new_key: str | None, new_kms_key_id: str | None,
                 as_json: bool) -> int:
    """Re-wrap each backup's data key with a new key and sign its manifest again under it, so that the old
    key is no longer needed to validate or restore it. No chunk is read or rewritten.

    The old key is this installation's current BACKUP_ENCRYPTION_KEY / BACKUP_KMS_KEY_ID: it must
    authenticate each manifest and unwrap its data key first. Each manifest is replaced by one write, after
    the new one was read back with the new key: stopped anywhere, every backup is readable with the old key
    or the new one. A backup already under the new key is left alone (`already`): run it again after an
    interruption. It runs here, in the CLI process, not as a job on the workers: task arguments never carry
    a secret. Then set the new key on the workers and the CLI. Exit 1 if any backup failed, 2 for bad input
    (nothing changed), 3 when the store or KMS cannot be reached.

    \b
    Examples:
      worktask keygen > new.key && chmod 600 new.key
      worktask backup rekey --all --new-key new.key
      worktask backup rekey 20261124T101500Z-backup-1a2b3c --new-key - < new.key
      worktask backup rekey --all --new-kms-key-id alias/worktask-backups --json
    """
    import sys

    from worker import rekey

    s = settings()
    key = rekey.read_new_key(new_key, sys.stdin) if new_key is not None else None
    report, code = rekey.rekey(s, list(backup_ids), every, key, new_kms_key_id,
                               progress=lambda row: render_rekey_line(row, err if as_json else out))
    if as_json:
        emit_json(report)
    else:
        render_rekey(report)
        if code == 3:
            err.print(f"[red]error:[/] {escape(report['error'])}", soft_wrap=True)
    return code


ALLOW_UNAUTHENTICATED_HELP = ("Accept a manifest this installation cannot authenticate: one without a MAC (made "
                              "without a key, or before manifests carried one) or made with a key not configured "
                              "here. A MAC that fails is refused whatever this says.")


@backup.command("validate")
@click.argument("backup_id")
@click.option("--allow-unauthenticated", is_flag=True, help=ALLOW_UNAUTHENTICATED_HELP)
@from_option
@output_options()
def backup_validate(backup_id: str, allow_unauthenticated: bool, source: str | None, as_json: bool, no_wait: bool,
                    timeout: int | None) -> int:
    """Re-read every chunk (one task each): checksum, decryption, decompression, row count.
    Names each bad chunk; exit 1 if any, 2 for a malformed or unknown id or a manifest that fails its MAC
    (or has none while BACKUP_ENCRYPTION_KEY or BACKUP_KMS_KEY_ID is set).

    \b
    Examples:
      worktask backup validate 20261124T101500Z-backup-1a2b3c --json
      worktask backup validate 20261124T101500Z-backup-1a2b3c --allow-unauthenticated   # made without a key
      worktask backup validate 20261124T101500Z-backup-1a2b3c --from /mnt/old-server/backups
    """
    s = settings()
    return run_job(lambda: commands.backup_validate(s, backup_id, allow_unauthenticated, source), "backup_validate",
                   as_json, no_wait, timeout, render_backup_validate)


@backup.command("verify")
@click.argument("backup_id")
@click.option("--restore-test", is_flag=True, help="Restore the backup into a scratch database and DynamoDB table "
              "and compare every table's rows and row hash with the manifest (required).")
@click.option("--target-database", default=None, metavar="NAME",
              help="The scratch database's name (on the same server; must not exist: the drill creates and drops "
                   "it). Default: worktask_drill_<random>.")
@click.option("--allow-unauthenticated", is_flag=True, help=ALLOW_UNAUTHENTICATED_HELP)
@output_options()
def backup_verify(backup_id: str, restore_test: bool, target_database: str | None, allow_unauthenticated: bool,
                  as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Restore drill: restore a backup into a scratch database and DynamoDB table (created, then dropped; the live
    ones are never touched), and compare every table's rows and order-independent row hash with what the backup
    recorded. Per table: match, mismatch (expected vs found), hash not recorded (older backups: counts only) or
    not restored (why). The outcome is kept beside the manifest (verified.json). Exit 1 when any table does not
    match; 2 without --restore-test, for a bad id, a manifest that fails its MAC, or a --target-database that
    exists. Beat runs it on the newest complete backup (DRILL_SCHEDULE, weekly by default).

    \b
    Examples:
      worktask backup verify 20261124T101500Z-backup-1a2b3c --restore-test
      worktask backup verify 20261124T101500Z-backup-1a2b3c --restore-test --target-database drill_nov --json
    """
    s = settings()
    return run_job(lambda: commands.backup_verify(s, backup_id, restore_test, target_database, allow_unauthenticated),
                   "backup_verify", as_json, no_wait, timeout, render_drill)


KEEP_RANGE = click.IntRange(0, 100_000)


@backup.command("cleanup")
@click.option("--retention-days", type=click.IntRange(1, RETENTION_DAYS_MAX), default=None,
              help=f"Keep backups younger than this many days, 1-{RETENTION_DAYS_MAX} (default: RETENTION_DAYS).")
@click.option("--keep-last", type=KEEP_RANGE, default=None, metavar="N",
              help="Keep the newest N complete backups; 0 off (default: RETENTION_KEEP_LAST).")
@click.option("--keep-daily", type=KEEP_RANGE, default=None, metavar="N",
              help="Keep the newest backup of each of the last N days that have one (default: RETENTION_KEEP_DAILY).")
@click.option("--keep-weekly", type=KEEP_RANGE, default=None, metavar="N",
              help="The same per ISO week (default: RETENTION_KEEP_WEEKLY).")
@click.option("--keep-monthly", type=KEEP_RANGE, default=None, metavar="N",
              help="The same per month (default: RETENTION_KEEP_MONTHLY).")
@dry_run_option
@output_options()
def backup_cleanup(retention_days: int | None, keep_last: int | None, keep_daily: int | None,
                   keep_weekly: int | None, keep_monthly: int | None, dry_run: bool | None, as_json: bool,
                   no_wait: bool, timeout: int | None) -> int:
    """Apply the retention policy: a complete backup is kept when it is younger than the retention days or a
    --keep-* rule keeps it (UTC days, ISO weeks, months, as restic's forget --keep-*); the newest complete
    backup, the newest that passed validation and the newest that passed a restore drill are always kept.
    Every other complete backup is deleted, and failed or abandoned leftovers untouched for a day; unfinished
    uploads (S3 multipart) of backups whose job is not running are aborted. Quarantines of fixes
    (BACKUP_PREFIX/quarantine/<validation job id>, what `validate undo` puts back) older than the retention
    days are deleted too. --dry-run lists every backup and quarantine with keep/delete and its reasons, and
    changes nothing. Beat runs it nightly with the settings.

    \b
    Examples:
      worktask backup cleanup --dry-run
      worktask backup cleanup --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run --json
      RETENTION_DAYS=7 RETENTION_KEEP_LAST=3 worktask backup cleanup
    """
    s = settings()
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.backup_cleanup(s, retention_days, dry, keep_last=keep_last,
                                                   keep_daily=keep_daily, keep_weekly=keep_weekly,
                                                   keep_monthly=keep_monthly),
                   "backup_cleanup", as_json, no_wait, timeout, render_cleanup)


@click.command()
@click.argument("backup_id")
@click.option("--tables", default=None, help="Comma-separated tables to restore (default: TABLES_ONLY, else all).")
@click.option("--exact", is_flag=True, help="DynamoDB: also delete items that are not in the backup.")
@click.option("--allow-schema-mismatch", is_flag=True, help="Restore although the migration heads differ.")
@click.option("--allow-unauthenticated", is_flag=True, help=ALLOW_UNAUTHENTICATED_HELP)
@click.option("--target-database", default=None, metavar="NAME|URL",
              help="Restore into another database: a name on the same server, or postgresql://user@host:port/db "
                   "(no password: the workers' own apply). It must exist at the backup's migration head.")
@click.option("--target-table", default=None, metavar="NEW",
              help="With --tables X (one PostgreSQL table): restore X beside the live one as the new table NEW.")
@click.option("--target-dynamodb-table", default=None, metavar="NAME",
              help="Write the DynamoDB items into NAME (created when missing) instead of DYNAMO_TABLE_NAME.")
@from_option
@dry_run_option
@output_options()
def restore(backup_id: str, tables: str | None, exact: bool, allow_schema_mismatch: bool,
            allow_unauthenticated: bool, target_database: str | None, target_table: str | None,
            target_dynamodb_table: str | None, source: str | None, dry_run: bool | None, as_json: bool,
            no_wait: bool, timeout: int | None) -> int:
    """Restore all tables of a backup, or the named ones. Every chunk of a table is verified before the
    table is touched; PostgreSQL tables load beside the live ones and swap in by rename in one transaction.
    A manifest that fails its MAC (or has none while a key is configured) is refused first (exit 2).
    With --target-database (and --target-dynamodb-table when DynamoDB is restored), or --target-table, the
    live data is not touched; --target-dynamodb-table alone goes with --tables naming the DynamoDB table only.

    \b
    Examples:
      worktask restore 20261124T101500Z-backup-1a2b3c --dry-run
      TABLES_ONLY=services,dependencies worktask restore 20261124T101500Z-backup-1a2b3c
      worktask restore 20261124T101500Z-backup-1a2b3c --target-database scratch --target-dynamodb-table scratch-items
      worktask restore 20261124T101500Z-backup-1a2b3c --tables services --target-table services_restored
      worktask restore 20261124T101500Z-backup-1a2b3c --from s3://other-bucket/backups --allow-unauthenticated
    """
    s = settings()
    names = commands.table_names(tables, s)
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.restore(s, backup_id, names, exact, dry, allow_schema_mismatch,
                                            allow_unauthenticated, target_database, target_table,
                                            target_dynamodb_table, source), "restore", as_json, no_wait, timeout,
                   render_restore)


@click.group(invoke_without_command=True)
@click.option("--fix/--no-fix", default=None, help="Repair the fixable issues (default: FIX_ISSUES).")
@click.option("--fix-kinds", default=None, metavar="K,K|all",
              help="With --fix, only these fix kinds (comma-separated, or all); default: every kind.")
@output_options()
@click.pass_context
def validate(ctx: click.Context, fix: bool | None, fix_kinds: str | None, as_json: bool, no_wait: bool,
             timeout: int | None) -> int:
    """Validate the data: schema, referential (incl. DynamoDB -> PostgreSQL), consistency and performance
    checks, one task per table, key, range or scan segment. Exit 1 while errors remain.

    With --fix, each fix first keeps what it deletes or overwrites in a quarantine in the backup store (the
    report says where; `validate undo JOB_ID` puts it back), re-checks its finding on the locked row, and
    leaves rows changed less than FIX_MIN_AGE_MINUTES ago `pending` (README: Safe fixes).

    \b
    Examples:
      worktask validate
      worktask validate --fix --json
      worktask validate --fix --fix-kinds task_status,orphans
      worktask validate undo 20261124T101500Z-validate-1a2b3c --dry-run
    """
    if ctx.invoked_subcommand:
        return 0
    from worker.fixes import parse_kinds

    s = settings()
    do_fix = flag_or(fix, s.fix_issues)
    if fix_kinds is not None and not do_fix:
        from worker.errors import BadInput

        raise BadInput("--fix-kinds chooses what --fix repairs: add --fix (or set FIX_ISSUES=true)")
    kinds = None if fix_kinds is None else parse_kinds(fix_kinds)
    return run_job(lambda: commands.validate(s, do_fix, kinds), "validate", as_json, no_wait, timeout,
                   render_validate)


@validate.command("undo")
@click.argument("job_id")
@dry_run_option
@output_options(wait=False)
def validate_undo(job_id: str, dry_run: bool | None, as_json: bool) -> int:
    """Put back what validation job JOB_ID's fixes deleted or overwrote, from its quarantine: the PostgreSQL
    rows in one transaction, then the DynamoDB items. A row whose live data moved on since the fix (its key
    reused by another row, an updated row changed again) refuses the whole undo: exit 2, the rows named,
    nothing put back. A row already as it was before the fix is left alone (`already there`): a second undo
    changes nothing. It runs here, in the CLI process, and not while a restore of the live database runs.
    Exit 1 when a DynamoDB item could not be put back after the PostgreSQL rows were.

    \b
    Examples:
      worktask validate undo 20261124T101500Z-validate-1a2b3c --dry-run
      worktask validate undo 20261124T101500Z-validate-1a2b3c --json
    """
    from worker import undo

    s = settings()
    report, code = undo.undo(s, job_id, flag_or(dry_run, s.dry_run))
    if as_json:
        emit_json(report)
    else:
        render_undo(report)
    if code:
        err.print(escape(report["error"]), soft_wrap=True)
    return code


@click.group()
def testdata() -> None:
    """Realistic, marked test data: generate it, clean it up."""


@testdata.command("generate")
@click.argument("count", type=click.IntRange(1, 10_000_000), required=False)
@click.option("--seed", type=int, default=None, help="Make the data reproducible.")
@click.option("--no-files", is_flag=True, help="Leave the deliverables' files out (large counts).")
@click.option("--no-dynamodb", is_flag=True, help="Leave the DynamoDB analysis items out (PostgreSQL rows only).")
@output_options()
def testdata_generate(count: int | None, seed: int | None, no_files: bool, no_dynamodb: bool, as_json: bool,
                      no_wait: bool, timeout: int | None) -> int:
    """Generate COUNT work tasks (default TEST_DATA_COUNT), each with 3-7 todos (a DAG), 1-3 deliverables
    with quality checks, an analysis item in DynamoDB and the deliverable's file under test-data/.
    The same --seed and COUNT give the same rows, with or without --no-files and --no-dynamodb.

    \b
    Examples:
      worktask testdata generate 50 --seed 7
      worktask testdata generate 100000 --no-files
      worktask testdata generate 100000 --no-files --no-dynamodb
    """
    s = settings()
    return run_job(lambda: commands.testdata(s, "generate", flag_or(count, s.test_data_count), seed, no_files,
                                             no_dynamodb), "testdata_generate", as_json, no_wait, timeout,
                   render_testdata)


@testdata.command("cleanup")
@output_options()
def testdata_cleanup(as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Remove exactly the test data (marked rows, items and test-data/ files); nothing else.

    \b
    Example:
      worktask testdata cleanup
    """
    s = settings()
    return run_job(lambda: commands.testdata(s, "cleanup"), "testdata_cleanup", as_json, no_wait, timeout,
                   render_testdata)


@click.command()
@click.option("--skip-migrations/--no-skip-migrations", default=None, help="Skip migrate (default: SKIP_MIGRATIONS).")
@click.option("--skip-seeding/--no-skip-seeding", default=None, help="Skip seed (default: SKIP_SEEDING).")
@click.option("--skip-validation/--no-skip-validation", default=None, help="Skip validate (default: SKIP_VALIDATION).")
@click.option("--skip-backup/--no-skip-backup", default=None, help="Skip backup (default: SKIP_BACKUP).")
@click.option("--test-data", "test_data", type=click.IntRange(0, 10_000_000), is_flag=False, flag_value=0,
              default=None, metavar="[COUNT]",
              help="Generate COUNT work tasks of test data (default: GENERATE_TEST_DATA, TEST_DATA_COUNT).")
@dry_run_option
@output_options()
def init(skip_migrations: bool | None, skip_seeding: bool | None, skip_validation: bool | None,
         skip_backup: bool | None, test_data: int | None, dry_run: bool | None, as_json: bool, no_wait: bool,
         timeout: int | None) -> int:
    """Initialise: migrate -> seed (skip existing) -> testdata (with --test-data) -> validate -> backup, each
    step a job of its own; a failing step stops the rest (exit 1). Running it twice creates nothing new: the
    testdata step is skipped when test data exists already.

    \b
    Examples:
      worktask init --test-data 200
      SKIP_BACKUP=true worktask init --json
      worktask init --dry-run
    """
    s = settings()
    skip = {"migrations": flag_or(skip_migrations, s.skip_migrations), "seeding": flag_or(skip_seeding, s.skip_seeding),
            "validation": flag_or(skip_validation, s.skip_validation), "backup": flag_or(skip_backup, s.skip_backup)}
    count = (test_data or s.test_data_count) if test_data is not None else (
        s.test_data_count if s.generate_test_data else None)
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.init(s, skip, count, dry), "init", as_json, no_wait, timeout, render_pipeline)


@click.command()
@click.option("--fix/--no-fix", default=None, help="validate repairs the fixable issues (default: FIX_ISSUES).")
@click.option("--fix-kinds", metavar="KIND,...", default=None,
              help="The fix kinds --fix may apply (default: FIX_KINDS, the non-destructive task_status,"
                   "deliverable_status; `all` for every kind).")
@click.option("--retention-days", type=click.IntRange(1, RETENTION_DAYS_MAX), default=None,
              help=f"Days of backups to keep, 1-{RETENTION_DAYS_MAX} (default: RETENTION_DAYS).")
@dry_run_option
@output_options()
def maintenance(fix: bool | None, fix_kinds: str | None, retention_days: int | None, dry_run: bool | None,
                as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Maintain: backup_cleanup (retention) -> validate (--fix: the kinds of FIX_KINDS, each fix kept in a
    quarantine that `worktask validate undo JOB_ID` puts back) -> optimize (VACUUM (ANALYZE) of the tables
    with many dead tuples or stale statistics, never VACUUM FULL; a table whose lock is not granted within
    2 s is skipped, not waited on) -> backup_validate (the newest complete backup, when it was never
    validated). Exit 1 if a step failed.

    \b
    Examples:
      worktask maintenance
      FIX_ISSUES=true worktask maintenance --json
      worktask maintenance --fix --fix-kinds task_status,orphans
    """
    from worker.fixes import parse_kinds

    s = settings()
    days, do_fix = flag_or(retention_days, s.retention_days), flag_or(fix, s.fix_issues)
    dry = flag_or(dry_run, s.dry_run)
    return run_job(lambda: commands.maintenance(s, days, do_fix, dry, parse_kinds(fix_kinds) if fix_kinds else None),
                   "maintenance", as_json, no_wait, timeout, render_pipeline)


def _step_detail(p: JobProgress) -> str | None:
    return commands.pipeline_step(settings(), p.job_id)


STEP_DETAIL.update(init=_step_detail, maintenance=_step_detail)

COMMANDS: list[click.Command] = [migrate, seed, backup, restore, validate, testdata, init, maintenance]
