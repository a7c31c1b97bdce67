"""The `worktask` CLI: parses flags, calls worker.commands, renders (tables on stdout, progress on stderr).

Exit codes (DESIGN §6): 0 done; 1 the job failed or found errors; 2 bad input; 3 a service unreachable.
"""

from __future__ import annotations

import base64
import json
import secrets
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker import commands
from worker.errors import WorktaskError
from worker.reports import JobReport
from worker.reports import Progress as JobProgress
from worker.settings import Settings, get_settings

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    out = Console(highlight=False, soft_wrap=True, width=160)
err = Console(stderr=True, highlight=False)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def settings() -> Settings:
    return get_settings()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str))


def output_options(wait: bool = True) -> Callable:
    """--json for every command; --no-wait and --timeout for those that run a job."""
    def deco(f: Callable) -> Callable:
        f = click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")(f)
        if wait:
            f = click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")(f)
            f = click.option("--timeout", type=click.IntRange(1), default=None,
                             help="Seconds to wait for the job (default JOB_TIMEOUT).")(f)
        return f
    return deco


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def progress_bar(kind: str) -> tuple[Progress, Callable[[JobProgress], None]]:
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=err, transient=False)
    task = bar.add_task(kind, total=None, detail="queued")

    def update(p: JobProgress) -> None:
        detail = p.state
        if p.rows or p.bytes:
            detail = f"{p.rows:,} rows" + (f", {human_bytes(p.bytes)}" if p.bytes else "")
        if p.rate_rows_per_s:
            detail += f", {p.rate_rows_per_s:,.0f} rows/s"
        if p.eta_seconds is not None and not p.finished:
            detail += f", ETA {p.eta_seconds:.0f} s"
        bar.update(task, total=p.chunks_total or None, completed=p.chunks_done, detail=detail)
    return bar, update


def run_job(submit: Callable[[], str], kind: str, as_json: bool, no_wait: bool, timeout: int | None,
            render: Callable[[dict[str, Any]], None]) -> int:
    """Submit, then (unless --no-wait) show progress, print the report and return its exit code."""
    s = settings()
    job_id = submit()
    if no_wait:
        emit_json({"job_id": job_id, "kind": kind}) if as_json else out.print(job_id)
        return 0
    bar, update = progress_bar(kind)
    with bar:
        report = commands.wait(s, job_id, timeout, update)
    if as_json:
        emit_json(report)
    else:
        if set(report) - set(JobReport.model_fields):  # a job that failed early has only the common fields
            render(report)
        if report.get("error"):
            err.print(f"[red]error:[/] {escape(report['error'])}", soft_wrap=True)
    return 0 if report.get("ok") else 1


def render_health(report: dict[str, Any]) -> None:
    table = Table(title=f"health: {report['status']}  (job {report['job_id']})")
    for col in ("check", "ok", "detail", "s"):
        table.add_column(col)
    for c in report["checks"]:
        table.add_row(c["name"], "[green]ok[/]" if c["ok"] else "[red]FAIL[/]", escape(c["detail"]), f"{c['seconds']:.2f}")
    out.print(table)


def render_any(report: dict[str, Any]) -> None:
    out.print_json(json.dumps(report, default=str))


def render_migrate(report: dict[str, Any]) -> None:
    if report.get("sql") is not None:
        out.print(report["sql"] or "-- nothing to run: the database is at the target", markup=False)
        return
    verb = "applied" if report["action"] == "upgrade" else "rolled back"
    out.print(f"{verb}: {', '.join(report['versions']) or 'nothing'}; now at {report['after'] or 'base'}"
              + (f"; pending: {', '.join(report['pending'])}" if report["pending"] else ""), markup=False)
    for line in report.get("ensured", []):
        out.print(line, markup=False)
    if report.get("drift"):
        out.print(f"drift (changed after they were applied): {', '.join(report['drift'])}", markup=False)


def render_seed(report: dict[str, Any]) -> None:
    title = "seed" + (" (dry run: nothing changed)" if report["dry_run"] else "")
    table = Table("set", "created", "skipped", "unchanged", "updated", "conflicts", title=title)
    for st in report["sets"]:
        table.add_row(st["name"], str(st["created"]), str(st["skipped"]), str(st["unchanged"]), str(st["updated"]),
                      f"[red]{st['conflicts']}[/]" if st["conflicts"] else "0")
    out.print(table)
    if all(st["unchanged"] or st["skipped"] for st in report["sets"]) and not any(
            st["created"] or st["updated"] or st["conflicts"] for st in report["sets"]):
        out.print("nothing created: everything seeded already")


def render_backup(report: dict[str, Any]) -> None:
    table = Table("table", "store", "rows", "chunks", "raw", "stored", "s", title=f"backup {report['backup_id']}")
    for t in report["tables"]:
        table.add_row(t["name"], t["store"], f"{t['rows']:,}", str(t["chunks"]), human_bytes(t["bytes_raw"]),
                      human_bytes(t["bytes_stored"]), f"{t['seconds']:.1f}")
    tot = report["totals"]
    out.print(table)
    out.print(f"total: {tot['rows']:,} rows in {tot['chunks']} chunks, {human_bytes(tot['bytes_raw'])} raw, "
              f"{human_bytes(tot['bytes_stored'])} stored, {tot['seconds']:.1f} s"
              + (f", {tot['rows_per_s']:,.0f} rows/s, {tot['mb_raw_per_s']} MB/s" if tot.get("rows_per_s") else "")
              + f"; encrypted={report['encrypted']} compressed={report['compressed']}", markup=False)


def render_backup_validate(report: dict[str, Any]) -> None:
    out.print(f"backup {report['backup_id']}: {report['chunks_checked']} chunks checked, "
              f"{report['rows_checked']:,} rows, {len(report['bad_chunks'])} bad", markup=False)
    if report["bad_chunks"]:
        table = Table("table", "chunk", "path", "reason", title="bad chunks")
        for b in report["bad_chunks"]:
            table.add_row(b["table"], str(b["chunk"]), escape(b["path"]), escape(b["reason"]))
        out.print(table)


def render_cleanup(report: dict[str, Any]) -> None:
    verb = "would delete" if report["dry_run"] else "deleted"
    out.print(f"{verb} {len(report['deleted'])} backup(s), kept {report['kept']} "
              f"(retention {report['retention_days']} days)", markup=False)
    for b in report["deleted"]:
        out.print(f"  {b['backup_id']}  {b['state']}  {human_bytes(b['bytes_stored'])}  {b['reason']}", markup=False)


def render_restore(report: dict[str, Any]) -> None:
    title = f"restore of {report['backup_id']}" + (" (dry run: nothing changed)" if report["dry_run"] else "")
    verb = "would write" if report["dry_run"] else "rows restored"
    table = Table("table", "store", verb, "chunks", "removed" if report["dry_run"] else "deleted", "s", title=title)
    for t in report["tables"]:
        table.add_row(t["name"], t["store"], f"{t['rows']:,}", str(t["chunks"]), f"{t['removed']:,}", f"{t['seconds']:.1f}")
    out.print(table)
    for sk in report["skipped"]:
        out.print(f"skipped {sk['name']}: {sk['reason']}", markup=False)


def render_validate(report: dict[str, Any]) -> None:
    out.print(f"Validation Output: {report['records_checked']:,} records checked, {report['records_valid']:,} valid, "
              f"{len(report['issues'])} issue(s) {report['by_severity']}, {report['fixed']} fixed", markup=False)
    if report["issues"]:
        table = Table("severity", "category", "table", "key", "message", "fixed")
        colour = {"error": "red", "warning": "yellow", "info": "blue"}
        for i in report["issues"][:200]:
            table.add_row(f"[{colour[i['severity']]}]{i['severity']}[/]", i["category"], i["table"], escape(i["key"]),
                          escape(i["message"]), "yes" if i["fixed"] else ("fixable" if i["fixable"] else "-"))
        out.print(table)
        if len(report["issues"]) > 200:
            out.print(f"… and {len(report['issues']) - 200} more (--json has them all)")
    out.print(f"by category: {report['by_category']}; by table: {report['by_table']}", markup=False)


def render_testdata(report: dict[str, Any]) -> None:
    verb = "removed" if report["kind"] == "testdata_cleanup" else "generated"
    out.print(f"{verb}: {report['tasks']:,} work tasks, {report['todos']:,} todos, {report['deliverables']:,} "
              f"deliverables, {report['quality_checks']:,} quality checks, {report['analysis_items']:,} analysis items, "
              f"{report['files']:,} files" + (f" (seed {report['seed']})" if report.get("seed") is not None and
                                              verb == "generated" else ""), markup=False)


RENDERERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "restore": render_restore, "validate": render_validate, "testdata_generate": render_testdata,
    "testdata_cleanup": render_testdata,
    "health": render_health, "migrate": render_migrate, "seed": render_seed, "backup": render_backup,
    "backup_validate": render_backup_validate, "backup_cleanup": render_cleanup}


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors (as DEBUG=true).")
def cli(debug: bool) -> None:
    """worktask: data operations for the Work Task system, run as Celery jobs.

    \b
    Examples:
      worktask stack up          # start the local stack (embedded where needed)
      worktask health            # fan out the health checks and print the report
      worktask config --json     # the effective configuration, secrets masked
    """
    if debug:
        os.environ["DEBUG"] = "true"


@cli.command()
@output_options(wait=False)
def config(as_json: bool) -> int:
    """Print the effective configuration, secrets masked.

    \b
    Example:
      RETENTION_DAYS=7 worktask config --json
    """
    data = commands.config(settings())
    if as_json:
        emit_json(data)
    else:
        table = Table("variable", "value")
        for k, v in data.items():
            table.add_row(k, "" if v is None else escape(str(v)))
        out.print(table)
    return 0


@cli.command()
@output_options()
def health(as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Check PostgreSQL, Redis, DynamoDB, the backup store and the workers, one task per check.

    Exit 0 when healthy, 1 when a check fails, 3 when Redis or the workers do not answer.

    \b
    Example:
      worktask health --json
    """
    s = settings()
    return run_job(lambda: commands.health(s), "health", as_json, no_wait, timeout, render_health)


def dry_run_option(f: Callable) -> Callable:
    return click.option("--dry-run/--no-dry-run", "dry_run", default=None,
                        help="Report what would change and change nothing (default: DRY_RUN).")(f)


@cli.group(invoke_without_command=True)
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
    dry = s.dry_run if dry_run is None else dry_run
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
    dry = s.dry_run if dry_run is None else dry_run
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


@cli.command()
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
    skip = s.skip_existing if skip_existing is None else skip_existing
    if skip and overwrite:
        raise click.UsageError("--overwrite and --skip-existing (SKIP_EXISTING) exclude each other")
    mode = "overwrite" if overwrite else "skip" if skip else "conflict"
    dry = s.dry_run if dry_run is None else dry_run
    return run_job(lambda: commands.seed(s, config_only, mode, dry), "seed", as_json, no_wait, timeout, render_seed)


@cli.group(invoke_without_command=True)
@click.option("--compress/--no-compress", default=None, help="zstd (default: COMPRESSION_ENABLED).")
@click.option("--encrypt/--no-encrypt", default=None, help="AES-256-GCM (default: ENCRYPTION_ENABLED).")
@click.option("--chunk-rows", type=click.IntRange(1000), default=None, help="Rows per chunk (default: CHUNK_ROWS).")
@output_options()
@click.pass_context
def backup(ctx: click.Context, compress: bool | None, encrypt: bool | None, chunk_rows: int | None, as_json: bool,
           no_wait: bool, timeout: int | None) -> int:
    """Back up every PostgreSQL table and the DynamoDB table: one task per key range and scan segment,
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
    comp = s.compression_enabled if compress is None else compress
    enc = s.encryption_enabled if encrypt is None else encrypt
    return run_job(lambda: commands.backup(s, comp, enc, chunk_rows), "backup", as_json, no_wait, timeout,
                   render_backup)


@backup.command("list")
@output_options(wait=False)
def backup_list(as_json: bool) -> int:
    """List backups newest first: id, time, state (complete/incomplete/failed), tables, rows, size.

    \b
    Example:
      worktask backup list --json
    """
    rows = commands.backup_list(settings())
    if as_json:
        emit_json([{k: r[k] for k in ("backup_id", "state", "created_at", "tables", "rows", "bytes_stored",
                                      "encrypted", "compressed", "duration_s")} for r in rows])
        return 0
    table = Table("backup id", "created (UTC)", "state", "tables", "rows", "size", "duration", "enc", "zstd")
    for r in rows:
        colour = {"complete": "green", "failed": "red"}.get(r["state"], "yellow")
        table.add_row(r["backup_id"], r["created_at"][:19], f"[{colour}]{r['state']}[/]", str(r["tables"]),
                      f"{r['rows']:,}", human_bytes(r["bytes_stored"]),
                      f"{r['duration_s']:.1f} s" if r["duration_s"] is not None else "-",
                      str(r["encrypted"]) if r["encrypted"] is not None else "-",
                      str(r["compressed"]) if r["compressed"] is not None else "-")
    out.print(table)
    return 0


@backup.command("validate")
@click.argument("backup_id")
@output_options()
def backup_validate(backup_id: str, as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Re-read every chunk (one task each): checksum, decryption, decompression, row count.
    Names each bad chunk; exit 1 if any, 2 for a malformed or unknown id.

    \b
    Example:
      worktask backup validate 20261124T101500Z-backup-1a2b3c --json
    """
    s = settings()
    return run_job(lambda: commands.backup_validate(s, backup_id), "backup_validate", as_json, no_wait, timeout,
                   render_backup_validate)


@backup.command("cleanup")
@click.option("--retention-days", type=click.IntRange(1), default=None, help="Days to keep (default: RETENTION_DAYS).")
@dry_run_option
@output_options()
def backup_cleanup(retention_days: int | None, dry_run: bool | None, as_json: bool, no_wait: bool,
                   timeout: int | None) -> int:
    """Delete complete backups older than the retention (never the newest complete one) and failed or
    abandoned leftovers untouched for a day. Beat runs it nightly.

    \b
    Examples:
      worktask backup cleanup --dry-run
      RETENTION_DAYS=7 worktask backup cleanup
    """
    s = settings()
    dry = s.dry_run if dry_run is None else dry_run
    days = retention_days or s.retention_days
    return run_job(lambda: commands.backup_cleanup(s, days, dry), "backup_cleanup", as_json, no_wait, timeout,
                   render_cleanup)


@cli.command()
@click.argument("backup_id")
@click.option("--tables", default=None, help="Comma-separated tables to restore (default: TABLES_ONLY, else all).")
@click.option("--exact", is_flag=True, help="DynamoDB: also delete items that are not in the backup.")
@click.option("--allow-schema-mismatch", is_flag=True, help="Restore although the migration heads differ.")
@dry_run_option
@output_options()
def restore(backup_id: str, tables: str | None, exact: bool, allow_schema_mismatch: bool, dry_run: bool | None,
            as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Restore all tables of a backup, or the named ones. Every chunk of a table is verified before the
    table is touched; PostgreSQL tables load beside the live ones and swap in by rename in one transaction.

    \b
    Examples:
      worktask restore 20261124T101500Z-backup-1a2b3c --dry-run
      TABLES_ONLY=services,dependencies worktask restore 20261124T101500Z-backup-1a2b3c
    """
    s = settings()
    names = [n.strip() for n in tables.split(",")] if tables else s.tables
    if any(not n for n in names):
        raise click.UsageError("--tables has an empty name; e.g. --tables services,dependencies")
    dry = s.dry_run if dry_run is None else dry_run
    return run_job(lambda: commands.restore(s, backup_id, names, exact, dry, allow_schema_mismatch), "restore",
                   as_json, no_wait, timeout, render_restore)


@cli.command()
@click.option("--fix/--no-fix", default=None, help="Repair the fixable issues (default: FIX_ISSUES).")
@output_options()
def validate(fix: bool | None, as_json: bool, no_wait: bool, timeout: int | None) -> int:
    """Validate the data: schema, referential (incl. DynamoDB -> PostgreSQL), consistency and performance
    checks, one task per table, key, range or scan segment. Exit 1 while errors remain.

    \b
    Examples:
      worktask validate
      worktask validate --fix --json
    """
    s = settings()
    do_fix = s.fix_issues if fix is None else fix
    return run_job(lambda: commands.validate(s, do_fix), "validate", as_json, no_wait, timeout, render_validate)


@cli.group()
def testdata() -> None:
    """Realistic, marked test data: generate it, clean it up."""


@testdata.command("generate")
@click.argument("count", type=click.IntRange(1, 10_000_000), required=False)
@click.option("--seed", type=int, default=None, help="Make the data reproducible.")
@click.option("--no-files", is_flag=True, help="Leave the deliverables' files out (large counts).")
@output_options()
def testdata_generate(count: int | None, seed: int | None, no_files: bool, as_json: bool, no_wait: bool,
                      timeout: int | None) -> int:
    """Generate COUNT work tasks (default TEST_DATA_COUNT), each with 3-7 todos (a DAG), 1-3 deliverables
    with quality checks, an analysis item in DynamoDB and the deliverable's file under test-data/.

    \b
    Examples:
      worktask testdata generate 50 --seed 7
      worktask testdata generate 100000 --no-files
    """
    s = settings()
    return run_job(lambda: commands.testdata(s, "generate", count or s.test_data_count, seed, no_files),
                   "testdata_generate", as_json, no_wait, timeout, render_testdata)


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


@cli.command()
def keygen() -> int:
    """Print a new BACKUP_ENCRYPTION_KEY (base64 of 32 random bytes). Keep it safe: backups need it to restore.

    \b
    Example:
      export BACKUP_ENCRYPTION_KEY=$(worktask keygen)
    """
    click.echo(base64.b64encode(secrets.token_bytes(32)).decode())
    return 0


@cli.group()
def jobs() -> None:
    """Jobs submitted earlier."""


@jobs.command("show")
@click.argument("job_id")
@output_options(wait=False)
def jobs_show(job_id: str, as_json: bool) -> int:
    """Show a job's progress and, once it ended, its report.

    \b
    Example:
      worktask jobs show 20261124T101500Z-health-1a2b3c --json
    """
    data = commands.job_show(settings(), job_id)
    if as_json:
        emit_json(data)
        return 0
    p = data["progress"]
    out.print(f"job {job_id} ({p['kind']}): {p['state']}, chunks {p['chunks_done']}/{p['chunks_total']}, "
              f"{p['rows']:,} rows, {human_bytes(p['bytes'])}"
              + (f", ETA {p['eta_seconds']:.0f} s" if p.get("eta_seconds") and p["state"] == "running" else ""))
    if p.get("error"):
        out.print(f"error: {p['error']}", markup=False)
    if data["report"]:
        RENDERERS.get(p["kind"], render_any)(data["report"])
    return 0


@cli.group()
def stack() -> None:
    """The embedded local stack: PostgreSQL, Redis, moto, workers, beat, Flower."""


def render_services(services: list[dict[str, Any]]) -> None:
    table = Table("service", "ok", "pid", "url")
    for s in services:
        table.add_row(s["name"], "[green]ok[/]" if s["ok"] else "[red]down[/]", str(s["pid"] or "-"), escape(s["url"]))
    out.print(table)


@stack.command("up")
@click.option("--aws", type=click.Choice(["moto", "real"]), default="moto", show_default=True,
              help="moto: start moto's server (unless AWS_ENDPOINT_URL is set); real: boto3's own credentials.")
@output_options(wait=False)
def stack_up(aws: str, as_json: bool) -> int:
    """Start what is missing: PostgreSQL and Redis only where the configured ones do not answer,
    moto's server, two workers, beat and Flower. They outlive the command.

    \b
    Example:
      worktask stack up && worktask health && worktask stack down
    """
    data = commands.stack_up(settings(), aws)
    if as_json:
        emit_json(data)
        return 0
    render_services(data["services"])
    out.print(("stack already up; " if data["already_up"] else "") + f"state: {data['state_file']}")
    return 0 if all(s["ok"] for s in data["services"]) else 1


@stack.command("down")
@output_options(wait=False)
def stack_down(as_json: bool) -> int:
    """Stop exactly what `stack up` started.

    \b
    Example:
      worktask stack down
    """
    data = commands.stack_down(settings())
    if as_json:
        emit_json(data)
        return 0
    out.print("stopped: " + (", ".join(data["stopped"]) or "nothing (no stack was up)"))
    if data["moto_state_lost"]:
        out.print("note: moto kept its DynamoDB items and S3 objects in memory; they are gone with it "
                  "(backups in BACKUP_DIR remain).")
    return 0


@stack.command("status")
@output_options(wait=False)
def stack_status(as_json: bool) -> int:
    """Show each service of the stack: url, pid, whether it answers. Exit 1 if one does not.

    \b
    Example:
      worktask stack status --json
    """
    data = commands.stack_status(settings())
    if as_json:
        emit_json(data)
    elif data["services"]:
        render_services(data["services"])
    else:
        out.print("no stack is up (worktask stack up starts one)")
    return 0 if all(s["ok"] for s in data["services"]) else 1


def _debug() -> bool:
    return os.environ.get("DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="worktask", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "worktask"
        err.print(f"error: {e.format_message()} (see {where} --help)", markup=False)
        sys.exit(2)
    except click.Abort:
        err.print("aborted")
        sys.exit(130)
    except WorktaskError as e:
        if _debug():
            traceback.print_exc()
        err.print(f"error: {e.message}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
