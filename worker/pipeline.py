"""Pipelines: a job whose steps are other jobs, run one after another (`worktask init`, `worktask maintenance`).

The steps are planned where the command runs: each is the kind, task name and options that the step's own
command function in worker/commands.py would submit (commands.plan_step runs its checks and builds its options
without submitting), so no step's logic is written twice. The pipeline's start task calls `begin`, which submits
the first step's job with options["parent"] = the pipeline's job id. When that job ends, finished or failed, the
hook in JobTask's end handlers (worker/taskbase.py notify_parent) sends `worktask.<kind>.advance(job_id=parent,
child=…)` to `control`, once; `advance` records the step (state and report, as a job value) and submits the next
step, or finishes the pipeline with its report. No task ever waits for another job.

The pipeline's counters: chunks_total = its steps, chunks_done = steps ended; the value `current` names the
running step and its job (the CLI shows that job's own progress).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from worker import jobs
from worker.app import app
from worker.reports import InitReport, JobReport, MaintenanceReport, PipelineStep
from worker.settings import Settings

log = logging.getLogger(__name__)

# a reason to skip a step when its turn comes (e.g. test data exists already), or None to run it
Precheck = Callable[[Settings, dict[str, Any]], str | None]
REPORTS: dict[str, type[JobReport]] = {"init": InitReport, "maintenance": MaintenanceReport}


def _record(r: redis.Redis, job_id: str, step: PipelineStep) -> None:
    done = jobs.value(r, job_id, "steps", [])
    if any(s["name"] == step.name for s in done):
        return
    jobs.put_value(r, job_id, "steps", [*done, step.model_dump(mode="json")])
    jobs.add(r, job_id, failed=int(step.state == "failed"))


def _finish(r: redis.Redis, job_id: str, failed: PipelineStep | None = None) -> None:
    plan = jobs.options(r, job_id)["steps"]
    recorded = {s["name"]: s for s in jobs.value(r, job_id, "steps", [])}
    steps = [PipelineStep(**recorded[p["name"]]) if p["name"] in recorded else
             PipelineStep(name=p["name"], state="skipped", report={"reason": f"not run: step {failed.name} failed"
                                                                   if failed else "not run"})
             for p in plan]
    error = None
    if failed:
        why = (failed.report or {}).get("error") or (failed.report or {}).get("reason") or "its report says not ok"
        error = f"step {failed.name} failed: {why}"
    kind = jobs.job_kind(r, job_id) or "init"
    report = REPORTS[kind](job_id=job_id, state="failed" if failed else "succeeded", ok=failed is None,
                           dry_run=bool(jobs.options(r, job_id).get("dry_run")), steps=steps, error=error)
    jobs.put_value(r, job_id, "current", None)
    jobs.finish(r, job_id, report)


def _run_from(settings: Settings, r: redis.Redis, job_id: str, index: int, prechecks: dict[str, Precheck]) -> None:
    """Skip what is to be skipped from step `index` on, submit the first step that runs, or finish."""
    plan = jobs.options(r, job_id)["steps"]
    for i in range(index, len(plan)):
        step = plan[i]
        name = step["name"]
        try:
            check = prechecks.get(name)
            reason = step.get("skip") or (check(settings, step) if check else None)
        except Exception as err:  # noqa: BLE001 - the step fails with its reason; the pipeline reports it
            reason, failed = None, PipelineStep(name=name, state="failed", report={"error": f"{name}: {err}"})
            _record(r, job_id, failed)
            _finish(r, job_id, failed)
            return
        if reason:
            _record(r, job_id, PipelineStep(name=name, state="skipped", report={"reason": reason}))
            continue
        if not jobs.mark(r, job_id, f"submitted:{name}"):
            return  # a redelivered start or advance: the step was submitted already
        opts = {**step["options"], "parent": job_id}
        child = jobs.create(r, step["kind"], opts)
        jobs.put_value(r, job_id, "current", {"step": name, "index": i, "child": child})
        app.send_task(step["task"], kwargs={"job_id": child, "options": opts})
        log.info("pipeline %s: step %s is job %s", job_id, name, child)
        return
    _finish(r, job_id)


def begin(settings: Settings, r: redis.Redis, job_id: str, prechecks: dict[str, Precheck]) -> bool:
    """Start the pipeline: its first step that runs is submitted. False for a redelivered start."""
    if not jobs.start(r, job_id, len(jobs.options(r, job_id)["steps"])):
        return False
    _run_from(settings, r, job_id, 0, prechecks)
    return True


def advance(settings: Settings, r: redis.Redis, job_id: str, child: str, prechecks: dict[str, Precheck]) -> None:
    """The step's job `child` ended: record it, then run the next step, or finish (a failed step stops it)."""
    current = jobs.value(r, job_id, "current")
    if not current or current["child"] != child or not jobs.mark(r, job_id, f"advanced:{child}"):
        return  # a duplicate notice, or a job that is not the running step
    report = jobs.report(r, child) or jobs.failed_report(r, child)
    ok = bool(report.get("ok"))
    step = PipelineStep(name=current["step"], state="succeeded" if ok else "failed", job_id=child, report=report)
    _record(r, job_id, step)
    if not ok:
        _finish(r, job_id, step)
    else:
        _run_from(settings, r, job_id, current["index"] + 1, prechecks)

