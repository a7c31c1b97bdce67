"""The `worktask` CLI: parses flags, calls worker.commands, renders (tables on stdout, progress on stderr).

Exit codes (DESIGN §6): 0 done; 1 the job failed or found errors; 2 bad input; 3 a service unreachable.
"""

from __future__ import annotations

import base64
import gc
import os
import secrets
import sys
import traceback

import click
from rich.markup import escape
from rich.table import Table

from worker import cli_jobs, commands
from worker.cli_options import CONTEXT, emit_json, output_options, run_job, settings
from worker.errors import WorktaskError
from worker.render import (
    RENDERERS,
    err,
    human_bytes,
    out,
    render_any,
    render_health,
    render_job_list,
    render_services,
)


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


@jobs.command("list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="How many jobs to show.")
@output_options(wait=False)
def jobs_list(limit: int, as_json: bool) -> int:
    """List recent jobs, newest first: id, kind, trigger (cli or beat), state, duration. A scheduled run
    skipped because a job of its kind was running says so.

    \b
    Example:
      worktask jobs list --limit 5 --json
    """
    rows = commands.job_list(settings(), limit)
    if as_json:
        emit_json([{k: j[k] for k in ("job_id", "kind", "trigger", "state", "started_at", "finished_at",
                                      "duration_s", "created_at", "skipped", "error")} for j in rows])
    else:
        render_job_list(rows)
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


for command in cli_jobs.COMMANDS:  # migrate, seed, backup, restore, validate, testdata
    cli.add_command(command)


def _debug() -> bool:
    return os.environ.get("DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def run(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (errors printed as one line on stderr)."""
    try:
        code = cli.main(args=argv, prog_name="worktask", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "worktask"
        err.print(f"error: {e.format_message()} (see {where} --help)", markup=False, soft_wrap=True)
        return 2
    except click.Abort:
        err.print("aborted")
        return 130
    except WorktaskError as e:
        if _debug():
            traceback.print_exc()
        err.print(f"error: {e.message}", markup=False, soft_wrap=True)
        return e.exit_code
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> None:
    code = run(argv)
    if argv is None:  # the `worktask` process itself, which ends here
        # Its last garbage collection would walk every object of the libraries it loaded (~0.2 s for nothing):
        # frozen, they are left to the exit. Objects are still freed and files flushed as usual.
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # python -m worker.cli
    main()
