"""How the CLI shows things: the progress bar (stderr) and one renderer per report kind (stdout)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from worker.reports import Progress as JobProgress

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    out = Console(highlight=False, soft_wrap=True, width=160)
err = Console(stderr=True, highlight=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# kind -> a line that replaces the progress detail while the job runs (a pipeline names its running step)
STEP_DETAIL: dict[str, Callable[[JobProgress], str | None]] = {}


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
        if kind in STEP_DETAIL and not p.finished:
            detail = STEP_DETAIL[kind](p) or detail
        bar.update(task, total=p.chunks_total or None, completed=p.chunks_done, detail=detail)
    return bar, update


def render_health(report: dict[str, Any]) -> None:
    """One screen: a line per check, then what to do for each failing one."""
    colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}.get(report["status"], "red")
    table = Table(title=f"health: [{colour}]{report['status']}[/]  (job {report['job_id']})")
    for col in ("check", "ok", "detail", "s"):
        table.add_column(col)
    for c in report["checks"]:
        table.add_row(c["name"], "[green]ok[/]" if c["ok"] else "[red]FAIL[/]", escape(c["detail"]),
                      f"{c['seconds']:.2f}")
    out.print(table)
    failing = [c for c in report["checks"] if not c["ok"]]
    if failing:
        out.print("what to do:")
        for c in failing:
            out.print(f"  {c['name']}: {escape(c.get('hint') or 'see the detail above')}")


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
    for t in report["tables"]:
        if t.get("capture"):
            out.print(f"{t['name']}: {describe_capture(t['capture'])}", markup=False)


def describe_capture(c: dict[str, Any]) -> str:
    """At which instant a DynamoDB part was taken, in a line."""
    if c["method"] == "export":
        return f"exported as of {c['at']}, the PostgreSQL snapshot's time"
    window = f"scanned between {c['window'][0]} and {c['window'][1]}" if c.get("window") else "scanned"
    return (f"{window}, after the PostgreSQL snapshot ({c.get('snapshot_at')}): items written meanwhile may be in "
            f"it while their PostgreSQL rows are not" + (f"; {c['reason']}" if c.get("reason") else ""))


def render_backup_validate(report: dict[str, Any]) -> None:
    out.print(f"backup {report['backup_id']}: {report['chunks_checked']} chunks checked, "
              f"{report['rows_checked']:,} rows, {len(report['bad_chunks'])} bad", markup=False)
    if report["bad_chunks"]:
        table = Table("table", "chunk", "path", "reason", title="bad chunks")
        for b in report["bad_chunks"]:
            table.add_row(b["table"], str(b["chunk"]), escape(b["path"]), escape(b["reason"]))
        out.print(table)


def render_drill(report: dict[str, Any]) -> None:
    if report.get("skipped"):
        out.print(f"drill skipped: {report['skipped']}", markup=False)
        return
    table = Table("table", "store", "rows expected", "rows found", "outcome", "reason",
                  title=f"restore drill of {report['backup_id']}")
    colours = {"match": "green", "hash not recorded": "yellow"}
    for t in report["tables"]:
        found = "-" if t["rows_found"] is None else f"{t['rows_found']:,}"
        table.add_row(escape(t["name"]), t["store"], f"{t['rows_expected']:,}", found,
                      f"[{colours.get(t['outcome'], 'red')}]{t['outcome']}[/]", escape(t["reason"] or ""))
    out.print(table)


def render_cleanup(report: dict[str, Any]) -> None:
    """What the policy decided for every backup (a dry run: would), with its reasons; then the uploads aborted."""
    verb = "would delete" if report["dry_run"] else "deleted"
    policy = report.get("policy") or {"retention_days": report["retention_days"]}
    rules = [f"{policy['retention_days']} days"] + [f"{k.replace('_', '-')} {v}" for k, v in policy.items()
                                                    if k != "retention_days" and v]
    out.print(f"{verb} {len(report['deleted'])} backup(s), kept {report['kept']} "
              f"(retention: {', '.join(rules)}; always the newest complete, validated and drilled)", markup=False)
    decisions = report.get("decisions")
    if decisions:
        table = Table("backup id", "state", "size", "action", "reasons",
                      title="dry run: nothing deleted" if report["dry_run"] else None)
        for d in decisions:
            action = ("[red]would delete[/]" if report["dry_run"] else "[red]deleted[/]") \
                if d["action"] == "delete" else "[green]keep[/]"
            table.add_row(d["backup_id"], d["state"], human_bytes(d["bytes_stored"]), action,
                          escape("; ".join(d["reasons"])))
        out.print(table)
    else:  # a report from before decisions were recorded
        for b in report["deleted"]:
            out.print(f"  {b['backup_id']}  {b['state']}  {human_bytes(b['bytes_stored'])}  {b['reason']}",
                      markup=False)
    _render_cleanup_quarantines(report)
    if report.get("aborted_uploads"):
        out.print(f"{'would abort' if report['dry_run'] else 'aborted'} {len(report['aborted_uploads'])} unfinished "
                  "upload(s) of backups whose job is not running:", markup=False)
        for key in report["aborted_uploads"]:
            out.print(f"  {key}", markup=False)


def _render_cleanup_quarantines(report: dict[str, Any]) -> None:
    """The quarantines of fixes under the same age rule: a line per quarantine, and the ones not deleted."""
    held = report.get("quarantines") or []
    if not held:
        return
    gone = [q for q in held if q["action"] == "delete" and not q.get("error")]
    verb = "would delete" if report["dry_run"] else "deleted"
    out.print(f"{verb} {len(gone)} quarantine(s) of fixes, kept {sum(q['action'] == 'keep' for q in held)} "
              f"(older than {report['retention_days']} days go; worktask validate undo JOB_ID puts one back)",
              markup=False)
    table = Table("quarantine (validation job)", "objects", "size", "last write (UTC)", "action", "reason")
    for q in held:
        if q.get("error"):
            action = "[red]NOT deleted[/]"
        elif q["action"] == "delete":
            action = "[red]would delete[/]" if report["dry_run"] else "[red]deleted[/]"
        else:
            action = "[green]keep[/]"
        table.add_row(escape(q["job_id"]), str(q["objects"]), human_bytes(q["bytes"]),
                      q["last_write"][:19].replace("T", " "), action, escape(q.get("error") or q["reason"]))
    out.print(table)


def render_restore(report: dict[str, Any]) -> None:
    title = f"restore of {report['backup_id']}" + (" (dry run: nothing changed)" if report["dry_run"] else "")
    verb = "would write" if report["dry_run"] else "rows restored"
    table = Table("table", "store", verb, "chunks", "removed" if report["dry_run"] else "deleted", "s", title=title)
    for t in report["tables"]:
        table.add_row(t["name"], t["store"], f"{t['rows']:,}", str(t["chunks"]), f"{t['removed']:,}",
                      f"{t['seconds']:.1f}")
    out.print(table)
    for sk in report["skipped"]:
        out.print(f"skipped {sk['name']}: {sk['reason']}", markup=False)
    if report.get("unlisted"):
        extra = report["unlisted"]
        out.print(f"not read: {len(extra)} object(s) in the backup's folder not in the manifest: "
                  f"{', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}; "
                  f"worktask backup validate {report['backup_id']} names them", markup=False, soft_wrap=True)


def render_validate(report: dict[str, Any]) -> None:
    out.print(f"Validation Output: {report['records_checked']:,} records checked, {report['records_valid']:,} valid, "
              f"{len(report['issues'])} issue(s) {report['by_severity']}, {report['fixed']} fixed", markup=False)
    if report["issues"]:
        table = Table("severity", "category", "table", "key", "message", "fixed")
        colour = {"error": "red", "warning": "yellow", "info": "blue"}
        for i in report["issues"][:200]:
            state = ("yes" if i["fixed"] else "pending" if i.get("pending") else
                     f"fixable ({i['kind']})" if i["fixable"] and i.get("kind") else "fixable" if i["fixable"] else "-")
            message = i["message"] + (f" [{i['note']}]" if i.get("note") and not i["fixed"] else "")
            table.add_row(f"[{colour[i['severity']]}]{i['severity']}[/]", i["category"], i["table"], escape(i["key"]),
                          escape(message), state)
        out.print(table)
        if len(report["issues"]) > 200:
            out.print(f"… and {len(report['issues']) - 200} more (--json has them all)")
    out.print(f"by category: {report['by_category']}; by table: {report['by_table']}", markup=False)
    if report.get("fix"):
        out.print(f"fix kinds applied: {', '.join(report.get('fix_kinds') or []) or 'none'}; {report['fixed']} fixed, "
                  f"{report.get('pending', 0)} pending (younger than FIX_MIN_AGE_MINUTES or first seen too recently)",
                  markup=False)
    if report.get("quarantine"):
        out.print(f"kept before the fixes ({report['quarantined']} row(s)/item(s)): {report['quarantine']}; "
                  f"put back with: worktask validate undo {report['job_id']}", markup=False)


def render_testdata(report: dict[str, Any]) -> None:
    verb = "removed" if report["kind"] == "testdata_cleanup" else "generated"
    out.print(f"{verb}: {report['tasks']:,} work tasks, {report['todos']:,} todos, {report['deliverables']:,} "
              f"deliverables, {report['quality_checks']:,} quality checks, "
              f"{report['analysis_items']:,} analysis items, {report['files']:,} files"
              + (f" (seed {report['seed']})" if report.get("seed") is not None and verb == "generated" else ""),
              markup=False)


RENDERERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "restore": render_restore, "validate": render_validate, "testdata_generate": render_testdata,
    "testdata_cleanup": render_testdata,
    "health": render_health, "migrate": render_migrate, "seed": render_seed, "backup": render_backup,
    "backup_validate": render_backup_validate, "backup_cleanup": render_cleanup}


def render_services(services: list[dict[str, Any]]) -> None:
    table = Table("service", "ok", "pid", "url")
    for s in services:
        table.add_row(s["name"], "[green]ok[/]" if s["ok"] else "[red]down[/]", str(s["pid"] or "-"), escape(s["url"]))
    out.print(table)




def step_summary(step: dict[str, Any]) -> str:
    rep = step.get("report") or {}
    if step["state"] == "skipped" or "kind" not in rep:
        return rep.get("reason") or rep.get("error") or ""
    if rep.get("error"):
        return rep["error"]
    if rep["kind"] == "optimize":
        acts = [t["action"] for t in rep["tables"]]
        return (", ".join(f"{acts.count(a)} {a}" for a in dict.fromkeys(acts))
                or f"{rep['checked']} tables, none needs it")
    if rep["kind"] == "validate":
        return f"{rep['records_checked']:,} records, issues {rep['by_severity'] or 'none'}, {rep['fixed']} fixed"
    if rep["kind"] == "seed":
        return ", ".join(f"{s['name']} +{s['created']}" for s in rep["sets"])
    if rep["kind"] == "migrate":
        return f"applied {', '.join(rep['versions']) or 'nothing'}; at {rep['after'] or 'base'}"
    if rep["kind"] == "backup":
        return f"backup {rep['backup_id']}"
    if rep["kind"] == "backup_cleanup":
        return f"{len(rep['deleted'])} deleted, {rep['kept']} kept"
    if rep["kind"].startswith("testdata"):
        return f"{rep['tasks']:,} work tasks"
    return "ok"


def render_optimize(report: dict[str, Any]) -> None:
    table = Table("table", "action", "why", "live", "dead before", "dead after", "last vacuum", "last analyze",
                  title=f"optimize: VACUUM (ANALYZE), lock_timeout {report['lock_timeout']:g} s")
    for t in report["tables"]:
        b, a = t["before"], t["after"]
        vac = a.get("last_vacuum") or a.get("last_autovacuum") or b.get("last_vacuum") or b.get("last_autovacuum")
        ana = a.get("last_analyze") or a.get("last_autoanalyze") or b.get("last_analyze") or b.get("last_autoanalyze")
        action = t["action"] if not t["reason"] else f"[yellow]skipped[/]: {escape(t['reason'])}"
        table.add_row(escape(t["name"]), action,
                      escape(t["why"]), f"{b.get('n_live_tup', 0):,}", f"{b.get('n_dead_tup', 0):,}",
                      f"{a['n_dead_tup']:,}" if a else "-", str(vac or "-")[:19], str(ana or "-")[:19])
    out.print(table)


def render_pipeline(report: dict[str, Any]) -> None:
    title = f"{report['kind']} (job {report['job_id']})" + (" (dry run)" if report.get("dry_run") else "")
    table = Table("step", "state", "job", "result", title=title)
    colour = {"succeeded": "green", "failed": "red", "skipped": "yellow"}
    for st in report["steps"]:
        table.add_row(st["name"], f"[{colour[st['state']]}]{st['state']}[/]", st.get("job_id") or "-",
                      escape(step_summary(st)))
    out.print(table)
    for st in report["steps"]:
        if st["name"] == "optimize" and (st.get("report") or {}).get("tables"):
            render_optimize(st["report"])


def render_job_list(rows: list[dict[str, Any]]) -> None:
    """`jobs list`: newest first; a skipped scheduled run says why, a failed one its first error."""
    if not rows:
        out.print("no jobs yet (jobs are kept 14 days)")
        return
    table = Table("job", "kind", "trigger", "state", "started (UTC)", "duration", "note")
    for j in rows:
        state = {"succeeded": "[green]succeeded[/]", "failed": "[red]failed[/]"}.get(j["state"], j["state"] or "?")
        duration = "" if j["duration_s"] is None else f"{j['duration_s']:.1f} s"
        started = (j["started_at"] or "")[:19].replace("T", " ")
        note = f"skipped: {j['skipped']}" if j.get("skipped") else (j.get("error") or "")
        table.add_row(j["job_id"], j["kind"], j["trigger"], state, started, duration, escape(note))
    out.print(table)


REKEY_COLOUR = {"rekeyed": "green", "already": "cyan", "failed": "red"}


def render_rekey_line(row: dict[str, Any], console: Console) -> None:
    """One line per backup as `backup rekey` goes (stdout; stderr with --json)."""
    colour = REKEY_COLOUR.get(row["outcome"], "red")
    console.print(f"{row['backup_id']}  [{colour}]{row['outcome']}[/]  {escape(row['reason'])}", soft_wrap=True)


def render_rekey(report: dict[str, Any]) -> None:
    """The tally after the lines (the lines themselves were printed as each backup was done)."""
    counts = {o: sum(1 for b in report["backups"] if b["outcome"] == o) for o in ("rekeyed", "already", "failed")}
    out.print(f"{len(report['backups'])} backup(s) under the {escape(report['new_key'])}: "
              f"{counts['rekeyed']} rekeyed, {counts['already']} already, {counts['failed']} failed")


def render_undo(report: dict[str, Any]) -> None:
    """`validate undo`: per table what was (a dry run: would be) put back, then the rows that refused it."""
    refused = (report.get("error") or "").startswith("undo refused")
    verb = "would restore" if report["dry_run"] or refused else "restored"
    title = f"undo of {report['job_id']}" + (" (dry run: nothing changed)" if report["dry_run"] else "")
    table = Table("store", "table", verb, "already there", "conflicts", title=title)
    for t in report["tables"]:
        table.add_row(t["store"], escape(t["table"]), str(t["restored"]), str(t["already"]),
                      f"[red]{t['conflicts']}[/]" if t["conflicts"] else "0")
    out.print(table)
    for s in report["skipped"]:
        out.print(f"skipped {escape(s['object'])}: {escape(s['why'])}")
    if report["conflicts"]:
        rows = Table("store", "table", "key", "why", title="changed since the fix")
        for c in report["conflicts"][:200]:
            rows.add_row(c["store"], escape(c["table"]), escape(c["key"]), escape(c["why"]))
        out.print(rows)
    out.print(f"quarantine objects read: {len(report['objects'])}", markup=False)



RENDERERS["validate_undo"] = render_undo  # `worktask jobs show` of an undo
