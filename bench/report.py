"""docs/BENCHMARKS.md and docs/benchmarks.png from a results JSON (and an earlier one for before/after).

    .venv/bin/python -m bench.report bench/results/<file>.json [--before bench/results/<earlier>.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHART = "benchmarks.png"


def _g(d: Any, *path: Any) -> Any:
    for p in path:
        if isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        elif isinstance(d, dict) and p in d:
            d = d[p]
        else:
            return None
    return d


def _s(st: dict[str, Any] | None) -> str:
    if not st:
        return "—"
    return f"{st['median']:.2f} s ({st['min']:.2f}–{st['max']:.2f})"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _mb(b: int | None) -> str:
    return "—" if not b else f"{b / 2**20:,.0f} MiB"


def pairs(res: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None, str]]:
    """(scale, label, pair, reference label) of every timed pair."""
    out = []
    for scale, r in res.get("scale", {}).items():
        b = r.get("backup", {})
        lvl = b.get("zstd_level", "?")
        dyn = " (incl. DynamoDB)" if b.get("includes_dynamodb") else ""
        out += [(scale, f"`worktask backup --no-compress`{dyn}", b.get("uncompressed"), "`pg_dump -Fd -j2 -Z0`"),
                (scale, f"`worktask backup --compress` (zstd {lvl}){dyn}", b.get("compressed"),
                 "`pg_dump -Fd -j2 -Z1` (gzip)"),
                (scale, "`worktask restore ID` (every PostgreSQL table)", r.get("restore"),
                 "`pg_restore -j2` into a fresh database"),
                (scale, "DynamoDB part of a full backup (`dynamodb_wall_s`)", r.get("dynamodb"),
                 f"boto3 parallel Scan, {_g(r, 'dynamodb', 'segments')} threads"),
                (scale, "`worktask testdata generate N --no-files" + ("" if _g(r, "generate", "no_dynamodb_flag")
                                                                     else "` (incl. DynamoDB: no --no-dynamodb yet)")
                 + (" --no-dynamodb`" if _g(r, "generate", "no_dynamodb_flag") else ""),
                 _g(r, "generate", "postgres_only"), "one-client `\\copy` of the same rows"),
                (scale, "`worktask testdata generate N --no-files` (full)", _g(r, "generate", "full"),
                 "`\\copy` + boto3 batch writer"),
                (scale, "backup, 2 worker processes (whole command)",
                 {"ours": _g(r, "workers", "two_workers"), "reference": _g(r, "workers", "one_worker"),
                  "ratio": None} if _g(r, "workers", "two_workers") else None, "the same with 1 worker process")]
    return [p for p in out if p[2]]


def targets(res: dict[str, Any]) -> list[list[str]]:
    rows = []

    def add(figure: str, target: str, value: float | None, shown: str, ok: bool | None) -> None:
        rows.append([figure, target, shown if value is not None else "not measured",
                     "—" if value is None or ok is None else ("met" if ok else "**not met**")])

    for scale, r in res.get("scale", {}).items():
        for key, name in (("uncompressed", "uncompressed (-Z0)"), ("compressed", "fast setting (zstd vs -Z1)")):
            v = _g(r, "backup", key, "ratio")
            add(f"backup vs `pg_dump -Fd -j2`, {name}, scale {scale}", "≤ 0.75×", v, _x(v), v is not None and v <= 0.75)
        v = _g(r, "restore", "ratio")
        add(f"restore vs `pg_restore -j2`, scale {scale}", "≤ 0.8×", v, _x(v), v is not None and v <= 0.8)
        v = _g(r, "dynamodb", "ratio")
        if v is not None:
            add(f"DynamoDB backup vs plain parallel scan, scale {scale} (moto)", "≤ 1.2×", v, _x(v), v <= 1.2)
        v = _g(r, "generate", "postgres_only", "ratio")
        add(f"`testdata generate` vs one-client COPY, scale {scale}", "≤ 3× (15.6× at filing)", v, _x(v),
            v is not None and v <= 3)
        v = _g(r, "rss", "peak_rss_mb_max")
        add(f"peak RSS per worker process, scale {scale}", "≤ 200 MB", v, f"{v:.0f} MiB" if v else "", v is not None
            and v * 2**20 <= 200 * 10**6)
        v = _g(r, "workers", "speedup_dominant")
        add(f"backup, 2 workers vs 1 on the dominant table ({_g(r, 'workers', 'dominant_table')}), scale {scale}",
            "≥ 1.7× faster", v, _x(v), v is not None and v >= 1.7)
    small = res.get("small", {})
    for key, name, limit in (("empty_backup", "empty-database backup", 1.0), ("health", "`worktask health`", 1.0),
                             ("help", "`worktask --help`", 0.3)):
        v = _g(small, key, "median")
        add(f"{name}, wall time", f"≤ {limit} s", v, _s(small.get(key)), v is not None and v <= limit)
    return rows


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ps = [p for p in pairs(res) if "worker process" not in p[1]]  # the 1 -> 2 panel shows those
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.55 * max(len(ps), 6) + 1.5),
                               gridspec_kw={"width_ratios": [3, 1]})
    labels = [f"s{s}: {lbl.replace('`', '')[:48]}" for s, lbl, _, _ in ps]
    y = range(len(ps))
    ours = [p["ours"]["median"] for _, _, p, _ in ps]
    refs = [p["reference"]["median"] for _, _, p, _ in ps]
    a.barh([i + 0.2 for i in y], ours, height=0.4, label="worktask", color="#d62728")
    a.barh([i - 0.2 for i in y], refs, height=0.4, label="reference", color="#1f77b4")
    a.set_yticks(list(y), labels, fontsize=8)
    a.invert_yaxis()
    a.set_xscale("log")
    a.set_xlabel("seconds, median (log scale)")
    a.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.set_title("whole commands beside their references")
    a.legend()
    scales = [s for s, r in res.get("scale", {}).items() if _g(r, "workers", "dominant_one")]
    for s in scales:
        w = res["scale"][s]["workers"]
        d1, t1 = w["dominant_one"]["median"], w["one_worker"]["median"]
        b.plot([1, 2], [1.0, w["dominant_two"]["median"] / d1], "o-",
               label=f"scale {s}: {w['dominant_table']} chunk window ({d1:.1f} s at 1)")
        b.plot([1, 2], [1.0, w["two_workers"]["median"] / t1], "s--",
               label=f"scale {s}: whole backup ({t1:.1f} s at 1)")
    b.plot([1, 2], [1.0, 0.5], ":", color="grey", label="ideal (2x faster)")
    b.set_ylim(0, 1.1)
    b.set_xticks([1, 2])
    b.set_xlabel("worker processes")
    b.set_ylabel("time relative to 1 worker (median)")
    b.set_title("1 → 2 workers")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def before_after(before: dict[str, Any], after: dict[str, Any], bname: str) -> list[str]:
    lines = [f"Before: `{bname}` ({before.get('started_at')}); after: this run ({after.get('started_at')}).", "",
             "| figure | before | after |", "|---|---|---|"]
    keys = sorted(set(before.get("ratios", {})) | set(after.get("ratios", {})))
    for k in keys:
        lines.append(f"| `{k}` | {_x(before.get('ratios', {}).get(k))} | {_x(after.get('ratios', {}).get(k))} |")
    for key, name in (("help", "`worktask --help`"), ("import_cli", "import worker.cli"),
                      ("health", "`worktask health`"), ("empty_backup", "empty-database backup")):
        lines.append(f"| {name} | {_s(_g(before, 'small', key))} | {_s(_g(after, 'small', key))} |")
    bp, ap = {(s, lbl): p for s, lbl, p, _ in pairs(before)}, {(s, lbl): p for s, lbl, p, _ in pairs(after)}
    for key in [k for k in ap if k in bp]:
        lines.append(f"| scale {key[0]}: {key[1]}, ours | {_s(bp[key]['ours'])} | {_s(ap[key]['ours'])} |")
    return lines


def page(res: dict[str, Any], source: str, before: dict[str, Any] | None, bname: str | None) -> str:
    m, v = res.get("machine", {}), res.get("versions", {})
    flags = res.get("flags", {})
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/report.py`) from `{source}`. Run of {res.get('started_at')}, "
        f"{res.get('runs')} alternating runs per pair (ours, reference, ours, …), median with min–max; every "
        "figure is a whole command timed from the shell as a user waits for it.",
        "",
        f"Machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory_gb')} GB; {m.get('platform')}. "
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "pg_dump") + ".",
        "",
    ]
    missing = [f"`{k}`" for k, ok in flags.items() if not ok]
    if missing:
        lines += [f"Not available in the code measured: {', '.join(missing)}. Without `backup --skip-dynamodb` our "
                  "backups include the DynamoDB table (on moto, the larger part of their time) while pg_dump has "
                  "none; without `--no-dynamodb` the generation pair includes the DynamoDB items.", ""]
    lines += ["## Targets (issue 13)", "", "| figure | target | measured | |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in targets(res)]
    lines += ["", "## Every pair", "", f"![times and the 1→2 worker scaling]({CHART})", "",
              "| scale | ours | time | reference | time | ratio | bytes ours / reference |",
              "|---|---|---|---|---|---|---|"]
    for s, lbl, p, ref in pairs(res):
        ob = _g(p, "ours_detail", 0, "bytes")
        rb = _g(p, "reference_detail", 0, "bytes")
        lines.append(f"| {s} | {lbl} | {_s(p['ours'])} | {ref} | {_s(p['reference'])} | {_x(p.get('ratio'))} | "
                     f"{_mb(ob)} / {_mb(rb)} |")
    small = res.get("small", {})
    lines += ["", "On the migrated and seeded database without test data:", "",
              "| command | time |", "|---|---|",
              f"| `worktask --help` | {_s(small.get('help'))} |",
              f"| `python -c 'import worker.cli'` (CLI start) | {_s(small.get('import_cli'))} |",
              f"| `worktask health` (status {small.get('health_status')}) | {_s(small.get('health'))} |",
              f"| `worktask backup --no-compress` of the empty database | {_s(small.get('empty_backup'))} |",
              f"| `pg_dump -Fd -j2 -Z0` of the same | {_s(small.get('empty_pg_dump'))} |", ""]
    lines += ["## Where our backup's time goes", "",
              "The uncompressed backup runs (median run by wall time), from the job's own timestamps (Redis) and "
              "its chunks' results: CLI start = `import worker.cli`; submit = until the job is created; planning "
              "and snapshot = created → planned (snapshot holder, lock, catalog, plan); queueing = planned → first "
              "chunk starts; chunks = first chunk start → last chunk end; finalize = last end → finished "
              "(manifest); waiting = finished → the command returns.", "",
              "| scale | CLI start | submit | planning + snapshot | queueing | chunks (PostgreSQL / DynamoDB) | "
              "finalize | waiting | wall |", "|---|---|---|---|---|---|---|---|---|"]
    for s, r in res.get("scale", {}).items():
        det = _g(r, "backup", "uncompressed", "ours_detail") or []
        det = [d for d in det if "parts" in d.get("breakdown", {})]
        if not det:
            continue
        d = sorted(det, key=lambda d: d["breakdown"]["wall"])[len(det) // 2]["breakdown"]
        p, st = d["parts"], d.get("stores", {})
        lines.append(f"| {s} | {p['cli_start']:.2f} | {p['submit']:.2f} | {p['planning_and_snapshot']:.2f} | "
                     f"{p['queueing']:.2f} | {p['chunks']:.2f} ({_g(st, 'postgres', 'window_s')} / "
                     f"{_g(st, 'dynamodb', 'window_s')}) | {p['finalize']:.2f} | {p['waiting']:.2f} | "
                     f"{d['wall']:.2f} |")
    lines += ["", "## Workers, memory, task rate", ""]
    for s, r in res.get("scale", {}).items():
        w = r.get("workers", {})
        if "dominant_one" in w:
            lines.append(f"- Scale {s}: `{w['dominant_table']}` ({w['dominant_chunks']} chunks) takes "
                         f"{_s(w['dominant_one'])} with 1 worker process and {_s(w['dominant_two'])} with 2 "
                         f"(**{_x(w['speedup_dominant'])}**); the whole backup {_s(w['one_worker'])} → "
                         f"{_s(w['two_workers'])} ({_x(w['speedup_whole'])}). Each worker's pool is shrunk to one "
                         "process; for the 1-process runs the second worker stops consuming `bulk` (Celery's "
                         "`cancel_consumer`).")
        if r.get("rss"):
            lines.append(f"- Scale {s}: peak RSS of the worker processes (the stack's workers and all their "
                         f"children, {r['rss']['processes']} processes): max {r['rss']['peak_rss_mb_max']:.0f} MiB; "
                         f"all: {r['rss']['peak_rss_mb']}.")
        if r.get("chunk_rate"):
            c = r["chunk_rate"]
            lines.append(f"- Scale {s}: job machinery, a backup of {c['chunks']:,} chunks of {c['chunk_rows']:,} "
                         f"rows: **{c['chunks_per_s']} chunks/s** over {c['window_s']} s (whole command "
                         f"{c['whole_s']} s).")
        if r.get("dynamodb"):
            lines.append(f"- Scale {s}: {r['dynamodb'].get('note')}.")
        if r.get("source"):
            lines.append(f"- Scale {s}: source {r['source']['rows']:,} rows in {r['source']['tables']} tables, "
                         f"database {_mb(r['source']['database_bytes'])}; every restore was hash-checked "
                         "identical to it (count and sum of `hashtext(row::text)` per table).")
    lines += ["", "## Before / after", ""]
    if before is not None:
        lines += before_after(before, res, bname or "?")
    else:
        lines.append("No earlier results given: `make bench BEFORE=bench/results/<earlier>.json` fills this "
                     "section from both files.")
    analysis = Path(__file__).with_name("analysis.md")  # written by hand from profiles: what the figures mean
    if analysis.exists():
        lines += ["", analysis.read_text().strip()]
    lines += ["", "Beyond one machine: [SCALING.md](SCALING.md).", "", "## Reproduce", "",
              "```sh", "make bench                      # scales 1 and 10, 3 runs each",
              "make bench SCALES=1 RUNS=5       # scale 1 only",
              "make bench BEFORE=bench/results/2026-11-24-before.json   # fills Before / after",
              "```", "",
              "`make bench` installs the `bench` extra (matplotlib, psutil), starts the stack in `.worktask/bench` "
              "with its own database (`worktask_bench`) and Redis db (12) unless WORKTASK_STATE_DIR, "
              "POSTGRES_DATABASE and CELERY_BROKER_URL name others (and the stack there is not already up), "
              "generates the data, runs the pairs and stops what it started. It writes `bench/results/<UTC "
              "date>.json`, this page, `docs/benchmarks.png` and `docs/SCALING.md`. `bench/README.md` says "
              "what each pair measures.", ""]
    return "\n".join(lines)


def write(results: Path, before: Path | None = None) -> Path:
    res = json.loads(Path(results).read_text())
    prev = json.loads(Path(before).read_text()) if before else None
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    chart(res, docs / CHART)

    def rel(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(ROOT))
        except ValueError:
            return str(p)
    out = docs / "BENCHMARKS.md"
    out.write_text(page(res, rel(results), prev, rel(before) if before else None))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="docs/BENCHMARKS.md from a bench results JSON")
    ap.add_argument("results")
    ap.add_argument("--before")
    a = ap.parse_args()
    print(write(Path(a.results), Path(a.before) if a.before else None))
