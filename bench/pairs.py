"""The pairs: each of our commands beside its reference, alternating runs (bench/README.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.lib import (
    ROOT,
    WORKTASK,
    drop_db,
    fresh_db,
    pair,
    pg_bin,
    pg_env,
    run,
    say,
    settings,
    source_db,
    stats,
    table_hashes,
    worktask,
)

TEST_TABLES = ["work_tasks", "todo_items", "todo_dependencies", "deliverables", "quality_checks"]
BIG = 7200  # seconds any one command may take at scale 10


def has_flag(command: list[str], flag: str) -> bool:
    return flag in run([WORKTASK, *command, "--help"], 60)["stdout"]


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


# backup -----------------------------------------------------------------------------------------------------

def chunk_results(job_id: str) -> list[dict[str, Any]]:
    """The chunk tasks' results of a backup (Celery's result backend: the chord keeps them), each with its
    `seconds` and `ended_at`."""
    from worker.connections import redis_client
    s = settings()
    r = redis_client(s, s.result_backend if hasattr(s, "result_backend") else s.celery_broker_url)
    out = []
    for key in r.scan_iter("celery-task-meta-*", count=1000):
        raw = r.get(key)
        try:
            res = json.loads(raw).get("result")
        except (TypeError, ValueError):
            continue
        if isinstance(res, dict) and "ended_at" in res and f"/{job_id}/" in str(res.get("key", "")):
            out.append(res)
    return out


def job_times(job_id: str) -> dict[str, Any]:
    from worker import jobs
    from worker.connections import redis_client
    h = redis_client(settings(), settings().celery_broker_url).hgetall(jobs.JOB_KEY.format(job_id=job_id))
    h = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in h.items()}
    return {k: _ts(h.get(k)) for k in ("created_at", "started_at", "finished_at")}


def breakdown(out: dict[str, Any], job_id: str, cli_start: float) -> dict[str, Any]:
    """Where the wall time of one backup went: CLI start, submit, planning and snapshot (job created -> planned),
    queueing (planned -> first chunk starts), chunks (first start -> last end), finalize (last end -> finished),
    waiting (finished -> the command returns)."""
    jt, chunks = job_times(job_id), chunk_results(job_id)
    if not chunks or not all(jt.values()):
        return {"note": "chunk results or job times not found"}
    first = min(c["ended_at"] - c["seconds"] for c in chunks)
    last = max(c["ended_at"] for c in chunks)
    tables: dict[str, list[Any]] = {}
    stores: dict[str, list[float]] = {}
    for c in chunks:
        w = tables.setdefault(c["table"], [c["ended_at"] - c["seconds"], c["ended_at"], 0, 0, c["store"]])
        w[0], w[1] = min(w[0], c["ended_at"] - c["seconds"]), max(w[1], c["ended_at"])
        w[2] += c["rows"]
        w[3] += 1
        sw = stores.setdefault(c["store"], [w[0], w[1], 0])
        sw[0], sw[1], sw[2] = min(sw[0], c["ended_at"] - c["seconds"]), max(sw[1], c["ended_at"]), sw[2] + 1
    parts = {"cli_start": cli_start, "submit": jt["created_at"] - out["began"] - cli_start,
             "planning_and_snapshot": jt["started_at"] - jt["created_at"], "queueing": first - jt["started_at"],
             "chunks": last - first, "finalize": jt["finished_at"] - last, "waiting": out["ended"] - jt["finished_at"]}
    return {"parts": {k: round(v, 3) for k, v in parts.items()}, "wall": round(out["seconds"], 3),
            "stores": {k: {"window_s": round(w[1] - w[0], 3), "chunks": w[2]} for k, w in stores.items()},
            "tables": {t: {"window_s": round(w[1] - w[0], 3), "rows": w[2], "chunks": w[3], "store": w[4]}
                       for t, w in tables.items()}}


def drop_backup(backup_id: str) -> None:
    s = settings()
    if not s.s3_bucket_name:
        shutil.rmtree(s.backup_folder / s.backup_prefix / backup_id, ignore_errors=True)


def backup(compress: bool, skip_dynamodb: bool, keep: bool = False, chunk_rows: int | None = None,
           cli_start: float = 0.0) -> dict[str, Any]:
    args = ["backup", "--no-encrypt", "--compress" if compress else "--no-compress", "--json", "--timeout", str(BIG)]
    args += ["--skip-dynamodb"] if skip_dynamodb else []
    args += ["--chunk-rows", str(chunk_rows)] if chunk_rows else []
    out = worktask(*args, timeout=BIG + 60)
    rep = out["json"]
    job_id = rep["backup_id"]
    got = {"seconds": out["seconds"], "backup_id": job_id, "bytes": rep["totals"].get("bytes_stored"),
           "totals": rep["totals"], "breakdown": breakdown(out, job_id, cli_start)}
    if not keep:
        drop_backup(job_id)
    return got


def pg_dump(target: Path, level: int, dbname: str | None = None, jobs: int = 2) -> dict[str, Any]:
    shutil.rmtree(target, ignore_errors=True)
    out = run([pg_bin("pg_dump"), "-Fd", f"-j{jobs}", f"-Z{level}", "-f", str(target), dbname or source_db()], BIG,
              env=pg_env())
    got = {"seconds": out["seconds"], "bytes": sum(f.stat().st_size for f in target.rglob("*") if f.is_file())}
    shutil.rmtree(target, ignore_errors=True)
    return got


def backup_pairs(runs: int, skip: bool, work: Path, cli_start: float) -> dict[str, Any]:
    from worker.archive import ZSTD_LEVEL
    note = "" if skip else " (no --skip-dynamodb yet: our command includes the DynamoDB table, pg_dump has none)"
    res = {}
    res["uncompressed"] = pair("backup uncompressed vs pg_dump -Fd -j2 -Z0" + note,
                               lambda: backup(False, skip, cli_start=cli_start),
                               lambda: pg_dump(work / "dump", 0), runs)
    res["compressed"] = pair(f"backup zstd level {ZSTD_LEVEL} vs pg_dump -Fd -j2 -Z1" + note,
                             lambda: backup(True, skip, cli_start=cli_start),
                             lambda: pg_dump(work / "dump", 1), runs)
    res["zstd_level"], res["includes_dynamodb"] = ZSTD_LEVEL, not skip
    return res


# restore ----------------------------------------------------------------------------------------------------

def restore_pair(runs: int, skip: bool, work: Path) -> dict[str, Any]:
    """`worktask restore ID` of every PostgreSQL table of a backup vs pg_restore -j2 of a dump of the same data
    into a fresh database; after each of ours the live tables must hash as the source did."""
    say("restore: taking the backup and the dump to restore (untimed)")
    b = backup(False, skip, keep=True)
    dump = work / "restore-dump"
    shutil.rmtree(dump, ignore_errors=True)
    run([pg_bin("pg_dump"), "-Fd", "-j2", "-Z0", "-f", str(dump), source_db()], BIG, env=pg_env())
    manifest = json.loads((settings().backup_folder / settings().backup_prefix / b["backup_id"] / "manifest.json")
                          .read_text()) if not settings().s3_bucket_name else None
    pg_tables = [t["name"] for t in manifest["tables"] if t["store"] == "postgres"] if manifest else None
    source = table_hashes(names=pg_tables)
    args = ["restore", b["backup_id"], "--json", "--timeout", str(BIG)]
    if not skip and pg_tables:
        args += ["--tables", ",".join(pg_tables)]
    if manifest and "auth" not in manifest:  # a stack started without the bench's key: its own backup, trusted
        args += ["--allow-unauthenticated"]

    def ours() -> dict[str, Any]:
        out = worktask(*args, timeout=BIG + 60)
        after = table_hashes(names=pg_tables)
        if after != source:
            bad = [t for t in source if source[t] != after.get(t)]
            raise SystemExit(f"bench: after restore {b['backup_id']} these tables differ from the source: {bad}")
        return {"seconds": out["seconds"], "hash_check": "identical", "tables": len(source)}

    def ref() -> dict[str, Any]:
        fresh_db("worktask_bench_pg_restore")
        out = run([pg_bin("pg_restore"), "-j2", "-d", "worktask_bench_pg_restore", str(dump)], BIG, env=pg_env())
        drop_db("worktask_bench_pg_restore")
        return {"seconds": out["seconds"]}

    res = pair("restore of every PostgreSQL table vs pg_restore -j2 into a fresh database", ours, ref, runs)
    res["tables"], res["rows"] = len(source), sum(v[0] for v in source.values())
    drop_backup(b["backup_id"])
    shutil.rmtree(dump, ignore_errors=True)
    return res


# DynamoDB -----------------------------------------------------------------------------------------------------

def scan_reference(target: Path, segments: int) -> dict[str, Any]:
    """A plain boto3 parallel Scan: one thread and client per segment, the same export JSON lines to files."""
    from worker import dynamo
    from worker.connections import aws_client
    s = settings()
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    counts = [0] * segments

    def segment(i: int) -> None:
        client = aws_client(s, "dynamodb")
        with open(target / f"segment-{i}.json", "wb") as f:
            for page in client.get_paginator("scan").paginate(TableName=s.dynamo_table_name, Segment=i,
                                                              TotalSegments=segments, ConsistentRead=True):
                for item in page.get("Items", []):
                    f.write(dynamo.export_line(item))
                    counts[i] += 1

    began = time.monotonic()
    threads = [threading.Thread(target=segment, args=(i,)) for i in range(segments)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BIG)
    seconds = time.monotonic() - began
    got = {"seconds": seconds, "items": sum(counts), "bytes": sum(f.stat().st_size for f in target.iterdir())}
    shutil.rmtree(target, ignore_errors=True)
    return got


def dynamodb_pair(runs: int, work: Path, earlier: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Our DynamoDB part is the scan window of a full backup (totals.dynamodb_wall_s: first segment's start to
    the last one's end); reused from the full backups already run when there are any."""
    segments = settings().dynamo_segments
    if earlier:
        say("DynamoDB: our figures from the full backups already run; the boto3 scans now")
        ours = [e["totals"].get("dynamodb_wall_s", 0.0) for e in earlier]
        refs = [scan_reference(work / "scan", segments) for _ in range(runs)]
        res = {"ours": stats(ours), "reference": stats([r["seconds"] for r in refs]),
               "reference_detail": [{"items": r["items"], "bytes": r["bytes"]} for r in refs]}
    else:
        def ours_one() -> dict[str, Any]:
            b = backup(False, False)
            return {"seconds": b["totals"].get("dynamodb_wall_s", 0.0), "whole_backup_s": round(b["seconds"], 3)}
        res = pair("DynamoDB part of a full backup vs boto3 parallel scan", ours_one,
                   lambda: scan_reference(work / "scan", segments), runs)
    res["ratio"] = round(res["ours"]["median"] / res["reference"]["median"], 3)
    res["segments"] = segments
    return res


# test data ----------------------------------------------------------------------------------------------------

class CopyReference:
    """One client COPY of the same rows into a fresh database with the same schema (and the seed rows the
    foreign keys need): the five tables dumped once with \\copy to, loaded with \\copy from per run."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "copy"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.schema = self.dir / "schema.dump"
        run([pg_bin("pg_dump"), "-Fc", "-Z0", "-f", str(self.schema), *[f"--exclude-table-data={t}" for t in
                                                                          TEST_TABLES], source_db()], BIG, env=pg_env())
        script = "".join(f"\\copy {t} to '{self.dir / t}.copy'\n" for t in TEST_TABLES)
        run([pg_bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", source_db(), "-c", "select 1"], 60, env=pg_env())
        self._psql(source_db(), script)
        self.rows = sum(1 for t in TEST_TABLES for _ in open(self.dir / f"{t}.copy", "rb"))

    def _psql(self, db: str, script: str) -> dict[str, Any]:
        path = self.dir / "script.sql"
        path.write_text(script)
        return run([pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", str(path)], BIG,
                   env=pg_env())

    def __call__(self) -> dict[str, Any]:
        db = "worktask_bench_copy"
        fresh_db(db)
        run([pg_bin("pg_restore"), "-d", db, str(self.schema)], BIG, env=pg_env())
        out = self._psql(db, "".join(f"\\copy {t} from '{self.dir / t}.copy'\n" for t in TEST_TABLES))
        drop_db(db)
        return {"seconds": out["seconds"], "rows": self.rows}


class BatchWriterReference:
    """A plain boto3 batch writer putting the same DynamoDB items into a fresh table with the same keys."""

    def __init__(self, work: Path) -> None:
        from worker import dynamo
        from worker.connections import aws_client
        s = settings()
        self.client = aws_client(s, "dynamodb")
        desc = self.client.describe_table(TableName=s.dynamo_table_name)["Table"]
        self.keys, self.attrs = desc["KeySchema"], desc["AttributeDefinitions"]
        self.file = work / "items.json"  # on disk, not in memory: a million items at scale 10
        with open(self.file, "wb") as f:
            for page in self.client.get_paginator("scan").paginate(TableName=s.dynamo_table_name):
                for it in page.get("Items", []):
                    f.write(dynamo.export_line(it))

    def __call__(self) -> dict[str, Any]:
        import boto3
        from boto3.dynamodb.types import TypeDeserializer
        name = "worktask-bench-batch-writer"
        try:
            self.client.delete_table(TableName=name)
            self.client.get_waiter("table_not_exists").wait(TableName=name)
        except self.client.exceptions.ResourceNotFoundException:
            pass
        self.client.create_table(TableName=name, KeySchema=self.keys, AttributeDefinitions=self.attrs,
                                 BillingMode="PAY_PER_REQUEST")
        self.client.get_waiter("table_exists").wait(TableName=name)
        from worker import dynamo
        des, items = TypeDeserializer(), 0
        meta = self.client.meta
        began = time.monotonic()
        table = boto3.resource("dynamodb", endpoint_url=meta.endpoint_url, region_name=meta.region_name).Table(name)
        with table.batch_writer() as w, open(self.file, "rb") as f:
            for line in f:
                w.put_item(Item={k: des.deserialize(v) for k, v in dynamo.from_export_line(line).items()})
                items += 1
        seconds = time.monotonic() - began
        self.client.delete_table(TableName=name)
        return {"seconds": seconds, "items": items}


def generate(count: int, no_dynamodb: bool) -> dict[str, Any]:
    worktask("testdata", "cleanup", "--json", timeout=BIG)
    args = ["testdata", "generate", str(count), "--no-files", "--seed", "1", "--json", "--timeout", str(BIG)]
    out = worktask(*args + (["--no-dynamodb"] if no_dynamodb else []), timeout=BIG + 60)
    rep = out["json"]
    return {"seconds": out["seconds"], "rows": rep["tasks"] + rep["todos"] + rep["deliverables"]
            + rep["quality_checks"], "items": rep["analysis_items"]}


def generate_pairs(count: int, runs: int, work: Path, no_dyn: bool) -> dict[str, Any]:
    """Ours first in each pair, so the data the references copy exists; the last run leaves a full generation
    (the source the backups read)."""
    res: dict[str, Any] = {"no_dynamodb_flag": no_dyn}
    state: dict[str, Any] = {}

    def copy_ref() -> dict[str, Any]:
        if "copy" not in state:
            say("generate: dumping the rows for the COPY reference (untimed)")
            state["copy"] = CopyReference(work)
        return state["copy"]()

    if no_dyn:
        res["postgres_only"] = pair("testdata generate --no-dynamodb vs one-client COPY",
                                    lambda: generate(count, True), copy_ref, runs)

    def full_ref() -> dict[str, Any]:
        c = copy_ref()
        if "bw" not in state:
            say("generate: reading the DynamoDB items for the batch-writer reference (untimed)")
            state["bw"] = BatchWriterReference(work)
        b = state["bw"]()
        return {"seconds": c["seconds"] + b["seconds"], "copy_s": round(c["seconds"], 3),
                "batch_writer_s": round(b["seconds"], 3), "items": b["items"]}

    res["full"] = pair("testdata generate (full) vs COPY + boto3 batch writer", lambda: generate(count, False),
                       full_ref, runs)
    if not no_dyn:  # the full runs' COPY part is the PostgreSQL reference
        res["postgres_only"] = {"ours": res["full"]["ours"], "reference": stats(
            [d["copy_s"] for d in res["full"]["reference_detail"]]), "note": "no --no-dynamodb yet: ours includes "
            "the DynamoDB items"}
        res["postgres_only"]["ratio"] = round(res["full"]["ours"]["median"]
                                              / res["postgres_only"]["reference"]["median"], 3)
    if "copy" in state:
        shutil.rmtree(state["copy"].dir, ignore_errors=True)
    return res


# small commands --------------------------------------------------------------------------------------------------

def small_commands(runs: int, work: Path, skip: bool) -> dict[str, Any]:
    """On the migrated and seeded database without test data: --help, health and a backup of it, beside
    pg_dump of the same (empty) database."""
    res = {}
    helps, imports, healths, backups, dumps = [], [], [], [], []
    for i in range(runs):
        say(f"small commands: run {i + 1}/{runs}")
        helps.append(run([WORKTASK, "--help"], 60)["seconds"])
        imports.append(run([str(Path(os.sys.executable)), "-c", "import worker.cli"], 60)["seconds"])
        out = run([WORKTASK, "health", "--json"], 300, check=False)
        healths.append(out["seconds"])
        res["health_status"] = json.loads(out["stdout"]).get("status") if out["stdout"].strip() else out["rc"]
        backups.append(backup(False, skip)["seconds"])
        dumps.append(pg_dump(work / "empty-dump", 0)["seconds"])
    res["help"], res["import_cli"], res["health"] = stats(helps), stats(imports), stats(healths)
    res["empty_backup"], res["empty_pg_dump"] = stats(backups), stats(dumps)
    res["empty_backup_vs_pg_dump"] = round(res["empty_backup"]["median"] / res["empty_pg_dump"]["median"], 3)
    return res


# workers ------------------------------------------------------------------------------------------------------

def _control() -> Any:
    from worker.app import app
    return app.control


def worker_names() -> list[str]:
    replies = _control().ping(timeout=5.0) or []
    return sorted(n for r in replies for n in r)


def worker_scaling(runs: int, skip: bool) -> dict[str, Any]:
    """Backups with one worker process against two: each worker's pool shrunk to one process, and for the
    one-process runs the second worker stops consuming the `bulk` queue (chunks) with Celery's control API."""
    from worker.constants import QUEUE_BULK
    ctl, names = _control(), worker_names()
    if len(names) < 2:
        return {"note": f"needs two workers, found {names}"}
    ctl.pool_shrink(1, destination=names, reply=True, timeout=10)
    try:
        def one() -> dict[str, Any]:
            ctl.cancel_consumer(QUEUE_BULK, destination=names[1:2], reply=True, timeout=10)
            try:
                return backup(False, skip)
            finally:
                ctl.add_consumer(QUEUE_BULK, destination=names[1:2], reply=True, timeout=10)

        res = pair("backup with 1 worker process vs 2", lambda: backup(False, skip), one, runs)
    finally:
        ctl.pool_grow(1, destination=names, reply=True, timeout=10)
    two, one_ = res["ours_detail"], res["reference_detail"]
    pg = {t: v for t, v in two[0]["breakdown"].get("tables", {}).items() if v["store"] == "postgres"}
    dominant = max(pg.items(), key=lambda kv: kv[1]["rows"])[0] if pg else "-"

    def windows(detail: list[dict[str, Any]]) -> list[float]:
        return [d["breakdown"]["tables"][dominant]["window_s"] for d in detail if "tables" in d["breakdown"]]

    out = {"two_workers": res["ours"], "one_worker": res["reference"], "dominant_table": dominant,
           "dominant_two": stats(windows(two)), "dominant_one": stats(windows(one_)),
           "chunks_window_two": stats([d["breakdown"]["parts"]["chunks"] for d in two if "parts" in d["breakdown"]]),
           "chunks_window_one": stats([d["breakdown"]["parts"]["chunks"] for d in one_ if "parts" in d["breakdown"]]),
           "dominant_chunks": two[0]["breakdown"]["tables"][dominant]["chunks"], "includes_dynamodb": not skip}
    out["speedup_whole"] = round(out["one_worker"]["median"] / out["two_workers"]["median"], 3)
    out["speedup_dominant"] = round(out["dominant_one"]["median"] / out["dominant_two"]["median"], 3)
    return out


def chunk_rate(skip: bool, chunk_rows: int = 1000) -> dict[str, Any]:
    """Chunks per second of the job machinery: a backup of many tiny chunks."""
    b = backup(False, skip, chunk_rows=chunk_rows)
    pg = b["breakdown"].get("stores", {}).get("postgres") or {}
    chunks = pg.get("chunks") or b["totals"]["chunks"]
    window = pg.get("window_s") or b["totals"].get("postgres_wall_s")
    return {"chunk_rows": chunk_rows, "chunks": chunks, "window_s": window,
            "chunks_per_s": round(chunks / window, 2) if window else None, "whole_s": round(b["seconds"], 3),
            "note": "PostgreSQL chunks over their window (first start to last end)"}


def machine() -> dict[str, Any]:
    import platform

    import psutil
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return {"cores": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": model, "platform": platform.platform()}


def versions() -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("celery", "asyncpg", "psycopg", "moto", "boto3", "zstandard"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    from bench.lib import connect
    with connect() as conn:
        out["postgresql"] = conn.execute("show server_version").fetchone()[0]
    out["pg_dump"] = subprocess.run([pg_bin("pg_dump"), "--version"], capture_output=True, text=True,
                                    timeout=30).stdout.strip()
    return out


def tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="worktask-bench-", dir=os.environ.get("BENCH_TMP") or None))


__all__ = ["ROOT"]
