"""What every `worktask` command module shares: the options, how a job runs and reports, and the rule that a
flag beats its variable. It imports no command module, so command modules import it and nothing else of
the CLI (worker/cli.py gathers them on its group).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.markup import escape

from worker import commands
from worker.render import err, out, progress_bar

if TYPE_CHECKING:
    from worker.settings import Settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

T = TypeVar("T")


def settings() -> Settings:
    """The settings, read on first use (pydantic-settings is imported here, not for `--help`)."""
    from worker.settings import get_settings

    return get_settings()


def flag_or(flag: T | None, variable: T) -> T:
    """A flag beats its variable: the flag's value when it was given (not None), else the variable's."""
    return variable if flag is None else flag


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
        report = commands.wait(s, job_id, timeout, update, submitted=True)
    if as_json:
        emit_json(report)
    else:
        from worker.reports import JobReport

        if set(report) - set(JobReport.model_fields):  # a job that failed early has only the common fields
            render(report)
        if report.get("error"):
            err.print(f"[red]error:[/] {escape(report['error'])}", soft_wrap=True)
    return 0 if report.get("ok") else 1
