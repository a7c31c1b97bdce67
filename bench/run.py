"""`make bench`: whole commands timed from the shell beside their references (never run by the tests).

    .venv/bin/python -m bench.run [--scales 1 10] [--runs 3] [--before bench/results/x.json] [--name NAME]

Starts the stack in its own state folder, database and Redis db when it is not up (and stops it at the end),
builds the data with `worktask testdata generate` per scale (100,000 work tasks per unit), runs the pairs of
bench/pairs.py, and writes bench/results/<UTC date>.json, then docs/BENCHMARKS.md, its charts and the
scaling model (bench/report.py, bench/scaling.py). bench/README.md says what each pair is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import lib, pairs  # noqa: E402

PER_SCALE = int(os.environ.get("BENCH_PER_SCALE") or 100_000)  # smaller only to try the bench out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default=os.environ.get("SCALES") or "1 10",
                    help="scales to run, 1 = 100,000 work tasks (default: '1 10')")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RUNS") or 3), help="runs per pair (>= 3)")
    ap.add_argument("--before", default=os.environ.get("BEFORE") or None, help="an earlier results JSON to compare")
    ap.add_argument("--generate-pair-scales", default=os.environ.get("GENERATE_PAIR_SCALES") or "1",
                    help="scales at which the test-data generation is timed as a pair (default: '1'; elsewhere the "
                         "data is generated once, without DynamoDB items: a million items on moto take hours)")
    ap.add_argument("--name", default=None, help="results file name (default: the UTC date)")
    a = ap.parse_args()
    try:
        scales = [int(x) for x in a.scales.replace(",", " ").split()]
    except ValueError:
        print("bench: SCALES must be whole numbers, e.g. SCALES=\"1 10\"", file=sys.stderr)
        sys.exit(2)
    if a.runs < 1 or not scales or min(scales) < 1:
        print("bench: RUNS and SCALES must be at least 1", file=sys.stderr)
        sys.exit(2)

    lib.setup_env()
    started = lib.stack_up()
    rss = lib.PeakRss()
    rss.start()
    work = pairs.tempdir()
    result: dict = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": a.runs,
                    "scales": scales, "scale": {}}
    try:
        result["machine"], result["versions"] = pairs.machine(), pairs.versions()
        skip = pairs.has_flag(["backup"], "--skip-dynamodb")
        no_dyn = pairs.has_flag(["testdata", "generate"], "--no-dynamodb")
        result["flags"] = {"backup --skip-dynamodb": skip, "testdata generate --no-dynamodb": no_dyn}
        lib.say(f"flags: {result['flags']}")
        lib.say("an empty database: migrate, testdata cleanup, seed")
        lib.worktask("migrate", "--json", timeout=600)
        lib.worktask("testdata", "cleanup", "--json", timeout=pairs.BIG)
        lib.worktask("seed", "--skip-existing", "--json", timeout=600)
        result["small"] = pairs.small_commands(a.runs, work, skip)
        _partial(result, a.name)
        cli_start = result["small"]["import_cli"]["median"]
        for scale in scales:
            count = scale * PER_SCALE
            r: dict = result["scale"].setdefault(str(scale), {"work_tasks": count})
            rss.label = f"scale {scale}"
            lib.say(f"=== scale {scale}: {count:,} work tasks")
            if str(scale) in a.generate_pair_scales.replace(",", " ").split():
                r["generate"] = pairs.generate_pairs(count, a.runs, work, no_dyn)
            else:
                lib.say(f"generate: {count:,} work tasks once (no pair at this scale)")
                r["generate"] = {"once": pairs.generate(count, no_dyn), "no_dynamodb_flag": no_dyn,
                                 "note": "generated once, not timed as a pair (GENERATE_PAIR_SCALES)"}
            _partial(result, a.name)
            src = lib.table_hashes()
            r["source"] = {"tables": len(src), "rows": sum(v[0] for v in src.values()),
                           "database_bytes": _db_size()}
            r["backup"] = pairs.backup_pairs(a.runs, skip, work, cli_start)
            _partial(result, a.name)
            r["restore"] = pairs.restore_pair(a.runs, skip, work)
            _partial(result, a.name)
            if scale == 1:
                earlier = None if skip else r["backup"]["uncompressed"]["ours_detail"]
                r["dynamodb"] = pairs.dynamodb_pair(a.runs, work, earlier)
                r["dynamodb"]["note"] = "moto's Scan is an emulator's (slow, one process): says little about AWS"
                lib.say("chunk rate: a backup of 1,000-row chunks")
                r["chunk_rate"] = pairs.chunk_rate(skip)
                _partial(result, a.name)
            r["workers"] = pairs.worker_scaling(a.runs, skip)
            _partial(result, a.name)
            r["rss"] = rss.result(f"scale {scale}")
            if lib.table_hashes() != src:
                raise SystemExit("bench: the source data changed during the bench")
            _partial(result, a.name)
        result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    finally:
        rss.stop.set()
        shutil.rmtree(work, ignore_errors=True)
        if started:
            lib.stack_down()
    path = _partial(result, a.name)
    lib.say(f"wrote {path.relative_to(lib.ROOT)}")
    from bench import report, scaling
    scaling.write(path)
    report.write(path, Path(a.before) if a.before else None)
    lib.say("wrote docs/BENCHMARKS.md, docs/SCALING.md and the charts in docs/")


def _db_size() -> int:
    with lib.connect() as conn:
        return int(conn.execute("select pg_database_size(current_database())").fetchone()[0])


def _partial(result: dict, name: str | None) -> Path:
    """The results so far, written after every step (a crash keeps what was measured)."""
    out = lib.ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name or time.strftime('%Y-%m-%d', time.gmtime())}.json"
    result["ratios"] = ratios(result)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def ratios(result: dict) -> dict:
    out = {}
    for scale, r in result.get("scale", {}).items():
        def put(name: str, value: float | None, scale: str = scale) -> None:
            if value is not None:
                out[f"{name}@{scale}"] = value
        put("backup_vs_pg_dump", r.get("backup", {}).get("uncompressed", {}).get("ratio"))
        put("backup_compressed_vs_pg_dump_z1", r.get("backup", {}).get("compressed", {}).get("ratio"))
        put("restore_vs_pg_restore", r.get("restore", {}).get("ratio"))
        put("dynamodb_vs_scan", r.get("dynamodb", {}).get("ratio"))
        put("generate_vs_copy", r.get("generate", {}).get("postgres_only", {}).get("ratio"))
        put("generate_full_vs_copy_and_batch_writer", r.get("generate", {}).get("full", {}).get("ratio"))
        put("workers_2_vs_1_dominant_speedup", r.get("workers", {}).get("speedup_dominant"))
        put("workers_2_vs_1_whole_speedup", r.get("workers", {}).get("speedup_whole"))
    if "small" in result:
        out["empty_backup_vs_pg_dump"] = result["small"]["empty_backup_vs_pg_dump"]
    return out


if __name__ == "__main__":
    main()
