"""The `worktask` CLI: parses flags, calls worker.commands, renders (tables on stdout, progress on stderr).

Exit codes (DESIGN §6): 0 done; 1 the job failed or found errors; 2 bad input; 3 a service unreachable.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from worker import commands
from worker.errors import WorktaskError
from worker.render import RENDERERS, err, human_bytes, out, progress_bar, render_any, render_health, render_services
from worker.reports import JobReport
from worker.settings import Settings, get_settings

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


def dry_run_option(f: Callable) -> Callable:
    return click.option("--dry-run/--no-dry-run", "dry_run", default=None,
                        help="Report what would change and change nothing (default: DRY_RUN).")(f)


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


from worker import cli_jobs  # noqa: E402,F401 - registers migrate, seed, backup, restore, validate, testdata


def _debug() -> bool:
    return os.environ.get("DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="worktask", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "worktask"
        err.print(f"error: {e.format_message()} (see {where} --help)", markup=False, soft_wrap=True)
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


if __name__ == "__main__":  # python -m worker.cli: run the imported module, where the job commands registered
    from worker.cli import main as registered_main

    registered_main()
