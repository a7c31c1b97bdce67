"""Backups on real PostgreSQL, moto (S3, DynamoDB, KMS) and two real worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from conftest import cli_json, run_cli, run_job
from worker import backups, commands, jobs, retention
from worker.archive import read_chunk
from worker.connections import aws_client, pg_connect, redis_client
from worker.dynamo import to_item

TASKS = 3000  # work tasks made by the test: several 1000-row chunks per table
ODD = "tab\there, newline\nthere, back\\slash, ünïcode ✓"


def make_data(settings: Any) -> None:
    """Rows in every table of the model (odd characters included), once per database."""
    with pg_connect(settings, autocommit=True) as pg:
        if pg.execute("select count(*) from work_tasks").fetchone()[0]:
            return  # made already (perhaps changed by a test since: every test backs up what it finds)
        wg = pg.execute("select id from workgroup_skills order by id limit 1").fetchone()[0]
        art, std = pg.execute("select id, standard_id from artifact_types order by id limit 1").fetchone()
        pg.execute("insert into services (name, owner_workgroup_id, tier) values ('billing', %s, 1), "
                   "('search', %s, 2), ('auth', %s, 1) on conflict do nothing", (wg, wg, wg))
        pg.execute("""insert into dependencies (service_id, depends_on_service_id)
                      select a.id, b.id from services a, services b where a.id < b.id on conflict do nothing""")
        pg.execute("""insert into work_tasks (title, description, priority, status, service_id, workgroup_id)
                      select 'task ' || g, %s || g,
                             (array['low','medium','high','critical'])[1 + g %% 4]::task_priority,
                             'pending', (select min(id) from services), %s from generate_series(1, %s) g""",
                   (ODD, wg, TASKS))
        pg.execute("""insert into todo_items (work_task_id, title, position)
                      select t.id, 'todo ' || p, p from work_tasks t, generate_series(0, 2) p""")
        pg.execute("""insert into todo_dependencies (todo_id, depends_on_todo_id)
                      select b.id, a.id from todo_items a join todo_items b
                      on a.work_task_id = b.work_task_id and b.position = a.position + 1""")
        pg.execute("""insert into deliverables (work_task_id, artifact_type_id, name, file_key)
                      select id, %s, 'deliverable of ' || id, 'files/' || id
                      from work_tasks where id %% 10 = 0""", (art,))
        pg.execute("""insert into quality_checks (deliverable_id, standard_id, score, passed, details)
                      select id, %s, 81.5, true, '{"by": "test"}' from deliverables""", (std,))
        task_ids = [r[0] for r in pg.execute("select id from work_tasks order by id limit 40")]
    client = aws_client(settings, "dynamodb")
    for i, tid in enumerate(task_ids):  # valid analysis items (worktask validate checks them)
        client.put_item(TableName=settings.dynamo_table_name, Item=to_item({
            "PK": f"TASK#{tid}", "SK": "ANALYSIS", "type": "analysis", "work_task_id": tid, "complexity": 1 + i % 13,
            "risk": "low", "summary": ODD, "estimated_hours": i / 4}))


@pytest.fixture()
def data(migrated: Any) -> Any:
    make_data(migrated)
    return migrated


def backup(settings: Any, **overrides: Any) -> dict[str, Any]:
    s = settings.model_copy(update=overrides) if overrides else settings
    return run_job(settings, lambda: commands.backup(s, s.compression_enabled, s.encryption_enabled, 1000), 300)


def validate(settings: Any, backup_id: str) -> dict[str, Any]:
    return run_job(settings, lambda: commands.backup_validate(settings, backup_id), 300)


def decode(settings: Any, manifest: dict[str, Any], table: str) -> list[bytes]:
    """Every line of a table's chunks, decrypted and decompressed: what a restore would load."""
    opts = backups.store_options(settings)
    store = backups.store_for(settings, opts)
    key = backups.data_key(settings, manifest["backup_id"], manifest["encryption"])
    t = next(t for t in manifest["tables"] if t["name"] == table)
    lines: list[bytes] = []
    for c in t["chunks"]:
        with store.open(c["key"]) as f:
            blocks, _ = read_chunk(f, backups.chunk_aad(manifest["backup_id"], t["store"], table, c["n"]),
                                   manifest["options"]["compress"], key)
            lines += b"".join(blocks).splitlines()
    return lines


def table_copy(settings: Any, table: str, columns: list[str]) -> list[bytes]:
    with pg_connect(settings) as conn, conn.cursor() as cur:
        cols = psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns))
        with cur.copy(psycopg.sql.SQL("copy (select {} from {}) to stdout").format(
                cols, psycopg.sql.Identifier(table))) as copy:
            return b"".join(bytes(b) for b in copy).splitlines()


def manifest_of(settings: Any, backup_id: str) -> dict[str, Any]:
    opts = backups.store_options(settings)
    return backups.read_manifest(backups.store_for(settings, opts), opts, backup_id)


def test_backup_splits_tables_into_chunks_validates_and_decodes_to_the_exact_rows(data: Any) -> None:
    code, report = cli_json("backup", "--chunk-rows", "1000", timeout=300)
    assert code == 0 and report["ok"], report
    tables = {t["name"]: t for t in report["tables"]}
    # about CHUNK_ROWS rows a chunk (sized from a sample of each table's pages): 3,000 and 9,000 rows here
    assert tables["work_tasks"]["chunks"] >= 2 and tables["todo_items"]["chunks"] >= 6, report["tables"]
    assert tables[data.dynamo_table_name]["store"] == "dynamodb"
    assert tables[data.dynamo_table_name]["chunks"] == data.dynamo_segments
    manifest = manifest_of(data, report["backup_id"])
    assert manifest["encryption"]["wrapping"] == "key" and "wrapped_key" in manifest["encryption"]
    assert manifest["source"]["migration_head"] and "alembic_version" not in tables
    for t in manifest["tables"]:
        if t["store"] == "postgres":
            assert sorted(decode(data, manifest, t["name"])) == \
                sorted(table_copy(data, t["name"], [c["name"] for c in t["columns"]])), t["name"]
    items = [json.loads(line)["Item"] for line in decode(data, manifest, data.dynamo_table_name)]
    scanned = aws_client(data, "dynamodb").scan(TableName=data.dynamo_table_name)["Items"]
    assert sorted(map(json.dumps, items)) == sorted(map(json.dumps, scanned))
    code, checked = cli_json("backup", "validate", report["backup_id"])
    assert code == 0 and checked["bad_chunks"] == [] and checked["chunks_checked"] == report["totals"]["chunks"]


def test_skip_dynamodb_backs_up_the_postgresql_tables_only_and_says_so(data: Any) -> None:
    code, report = cli_json("backup", "--skip-dynamodb", "--chunk-rows", "1000", timeout=300)
    assert code == 0 and report["ok"], report
    stores = {t["name"]: t["store"] for t in report["tables"]}
    assert "work_tasks" in stores and set(stores.values()) == {"postgres"}, stores
    manifest = manifest_of(data, report["backup_id"])
    assert manifest["options"]["skip_dynamodb"] is True and manifest["source"]["dynamodb"] is None
    for t in manifest["tables"]:  # every table's chunks are page ranges tiling it, planned without a scan
        if len(t["chunks"]) > 1:
            assert t["chunks"][0]["ctid"][0] == 0 and t["chunks"][-1]["ctid"][1] is None, t["name"]


@pytest.mark.parametrize("compress,encrypt", [(True, False), (False, False), (False, True)])
def test_compression_and_encryption_each_on_and_off(data: Any, compress: bool, encrypt: bool) -> None:
    report = backup(data, compression_enabled=compress, encryption_enabled=encrypt)
    assert report["ok"], report
    manifest = manifest_of(data, report["backup_id"])
    assert manifest["options"] == {"compress": compress, "encrypt": encrypt, "chunk_rows": 1000}
    assert (manifest["encryption"] is not None) == encrypt
    t = next(t for t in manifest["tables"] if t["name"] == "work_tasks")
    raw = Path(backups.store_options(data)["backup_dir"], t["chunks"][0]["key"]).read_bytes()
    if not encrypt:  # no lock-in: a plain zstd frame of a COPY stream, or the COPY stream itself
        text = zstandard.ZstdDecompressor().stream_reader(raw).read() if compress else raw
        assert text.count(b"\n") == t["chunks"][0]["rows"] and b"task " in text
    else:
        assert b"task " not in raw
    assert validate(data, report["backup_id"])["ok"]


def test_s3_store_with_kms_wrapped_keys(data: Any, bucket: str) -> None:
    kms_key = aws_client(data, "kms").create_key()["KeyMetadata"]["KeyId"]
    env = {"S3_BUCKET_NAME": bucket, "BACKUP_KMS_KEY_ID": kms_key}
    code, report = cli_json("backup", "--chunk-rows", "1000", env=env, timeout=300)
    assert code == 0 and report["ok"], report
    s3 = aws_client(data, "s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"backups/{report['backup_id']}/")["Contents"]]
    assert f"backups/{report['backup_id']}/manifest.json" in keys
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=f"backups/{report['backup_id']}/manifest.json")["Body"].read())
    assert manifest["encryption"]["wrapping"] == "kms" and manifest["encryption"]["kms_key_id"] == kms_key
    assert len(keys) == report["totals"]["chunks"] + 1
    code, checked = cli_json("backup", "validate", report["backup_id"], env=env)
    assert code == 0 and checked["ok"], checked
    code, listed = cli_json("backup", "list", env=env)
    assert listed[0]["backup_id"] == report["backup_id"] and listed[0]["state"] == "complete"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_chunk_is_named_exactly_by_validate(data: Any, damage: str) -> None:
    report = backup(data)
    manifest = manifest_of(data, report["backup_id"])
    t = next(t for t in manifest["tables"] if t["name"] == "todo_items")
    victim = t["chunks"][2]
    path = Path(backups.store_options(data)["backup_dir"], victim["key"])
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    else:
        raw = raw[: len(raw) - 20]
    path.write_bytes(bytes(raw))
    code, checked = cli_json("backup", "validate", report["backup_id"])
    assert code == 1 and not checked["ok"]
    assert [(b["table"], b["chunk"], b["path"]) for b in checked["bad_chunks"]] == [("todo_items", 2, victim["key"])]
    assert "checksum mismatch" in checked["bad_chunks"][0]["reason"]


@pytest.mark.parametrize("backup_id", ["../../etc", "20990101T000000Z-backup-000000"])
def test_malformed_or_unknown_id_exits_2_before_anything_is_read(data: Any, backup_id: str) -> None:
    proc = run_cli("backup", "validate", backup_id)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "malformed" in proc.stderr or "not found" in proc.stderr


def test_encryption_without_a_key_exits_2_naming_both_variables(data: Any) -> None:
    before = len(commands.backup_list(data))
    proc = run_cli("backup", env={"BACKUP_ENCRYPTION_KEY": "", "ENCRYPTION_ENABLED": "true"})
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "BACKUP_ENCRYPTION_KEY" in line and "BACKUP_KMS_KEY_ID" in line and "worktask keygen" in line
    assert len(commands.backup_list(data)) == before


def test_a_backup_is_one_point_in_time_across_tables_and_chunks(data: Any) -> None:
    """Transactions that each touch rows in several chunks of two tables are, in the backup, all in or all out."""
    with pg_connect(data, autocommit=True) as pg:
        tasks = [r[0] for r in pg.execute("select id from work_tasks order by id")]
        todos = [r[0] for r in pg.execute("select id from todo_items order by id")]
    spread = lambda ids, n, k: [ids[(n + i * len(ids) // k) % len(ids)] for i in range(k)]  # noqa: E731
    stop, committed = threading.Event(), []

    def writer() -> None:
        with pg_connect(data) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("update work_tasks set title = %s where id = any(%s)", (f"batch-{n}", spread(tasks, n, 3)))
                conn.execute("update todo_items set title = %s where id = any(%s)", (f"batch-{n}", spread(todos, n, 9)))
                conn.commit()
                committed.append(n)
                time.sleep(0.005)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        report = backup(data, backup_rate_limit=150_000)  # slow chunks: the writer commits during them
    finally:
        stop.set()
        thread.join(timeout=30)
    assert report["ok"], report
    manifest = manifest_of(data, report["backup_id"])
    seen: dict[str, int] = {}
    for table in ("work_tasks", "todo_items"):
        columns = [c["name"] for c in next(t for t in manifest["tables"] if t["name"] == table)["columns"]]
        for line in decode(data, manifest, table):
            title = line.split(b"\t")[columns.index("title")].decode()
            if title.startswith("batch-"):
                seen[title] = seen.get(title, 0) + 1
    # a later batch may overwrite rows of an earlier one, so look at the newest batch in the backup
    newest = max(int(t.split("-")[1]) for t in seen)
    assert seen[f"batch-{newest}"] == 12, seen  # 3 work tasks + 9 todos, in several chunks each
    assert newest < committed[-1]  # batches committed after the snapshot are out, whole


def test_killing_a_worker_process_mid_backup_still_completes_and_validates(data: Any) -> None:
    from worker.app import app

    # ~2 s a chunk: the one seen running is still running when it is killed (at 1 s it could end in between)
    s = data.model_copy(update={"backup_rate_limit": 50_000})
    job_id = commands.backup(s, True, True, 1000)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        for tasks in (app.control.inspect(timeout=0.5).active() or {}).values():
            for t in tasks:
                if t["name"] == "worktask.backup.dump_chunk":
                    victim = t["worker_pid"]
                    break
    assert victim, "no chunk was seen running"
    os.kill(victim, signal.SIGKILL)
    report = jobs.wait(redis_client(data), job_id, timeout=300)
    assert report["ok"], report
    assert max(jobs.deliveries(redis_client(data), job_id).values()) >= 2  # the killed chunk ran again
    assert validate(data, job_id)["ok"]
    manifest = manifest_of(data, job_id)
    assert len(decode(data, manifest, "todo_items")) == \
        next(t for t in manifest["tables"] if t["name"] == "todo_items")["rows"]
    from test_fault_workers import nothing_left  # it imports this module

    nothing_left(data, job_id)  # no snapshot lease, lock or replacement left
    assert backup(data)["ok"]  # the next run succeeds


def test_list_states_and_cleanup_by_retention(data: Any, tmp_path: Path) -> None:
    s = data.model_copy(update={"backup_dir": tmp_path / "store"})
    report = backup(s)
    opts = backups.store_options(s)
    store = backups.store_for(s, opts)
    manifest = backups.read_manifest(store, opts, report["backup_id"])
    old = datetime.now(UTC) - timedelta(days=45)
    ids = {}
    for name, age in (("old1", 45), ("old2", 40)):  # complete and old: the retention removes them
        bid = f"{(datetime.now(UTC) - timedelta(days=age)):%Y%m%dT%H%M%SZ}-backup-{name}"
        backups.write_manifest(store, opts, {**{k: v for k, v in manifest.items() if k not in ("checksum", "auth")},
                                             "backup_id": bid}, sign_with=s)
        ids[name] = bid
    failed = f"{old:%Y%m%dT%H%M%SZ}-backup-failed"
    store.put(f"backups/{failed}/failed.json", b"{}")
    os.utime(Path(opts["backup_dir"], f"backups/{failed}/failed.json"), (old.timestamp(), old.timestamp()))
    young = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-backup-running"
    store.put(f"backups/{young}/postgres/x/00000.aaaaaa.data", b"partial")
    states = {b["backup_id"]: b["state"] for b in commands.backup_list(s)}
    assert states == {report["backup_id"]: "complete", ids["old1"]: "complete", ids["old2"]: "complete",
                      failed: "failed", young: "incomplete"}
    dry = run_job(s, lambda: commands.backup_cleanup(s, 30, True))
    assert sorted(b["backup_id"] for b in dry["deleted"]) == sorted([ids["old1"], ids["old2"], failed])
    assert len(commands.backup_list(s)) == 5  # a dry run deletes nothing
    done = run_job(s, lambda: commands.backup_cleanup(s, 30, False))
    assert len(done["deleted"]) == 3
    assert {b["backup_id"] for b in commands.backup_list(s)} == {report["backup_id"], young}
    # the newest complete backup stays whatever its age
    assert [d["backup_id"] for d in retention.decide(commands.backup_list(s), retention.Policy(1),
                                                     now=datetime.now(UTC) + timedelta(days=90))
            if d["action"] == "delete"] == [young]


def test_losing_the_snapshot_holder_starts_the_backup_over_from_a_fresh_snapshot(data: Any) -> None:

    r = redis_client(data)
    s = data.model_copy(update={"backup_rate_limit": 100_000})
    job_id = commands.backup(s, True, True, 1000)
    deadline, pid = time.monotonic() + 60, None
    while pid is None and time.monotonic() < deadline:
        pid = r.hget(jobs.snapshot_keys(job_id, 0)[0], "pid")
        time.sleep(0.05)
    assert pid, "no snapshot holder was seen"
    time.sleep(0.5)  # some chunks are running through the snapshot
    os.kill(int(pid), signal.SIGKILL)  # its session ends: the snapshot is gone
    report = jobs.wait(r, job_id, timeout=300)
    assert report["ok"] and report["restarts"] == 1, report.get("error")
    assert validate(data, job_id)["ok"]
    manifest = manifest_of(data, job_id)
    keys = {c["key"] for t in manifest["tables"] for c in t["chunks"]}
    stored = {o.key for o in backups.store_for(data, backups.store_options(data)).list(f"backups/{job_id}/")}
    # no object of the lost generation is left (validated.json is the validation's record, just written)
    assert stored == keys | {f"backups/{job_id}/manifest.json", f"backups/{job_id}/validated.json"}


def test_a_chunk_that_keeps_failing_fails_the_backup_naming_it_and_releases_the_snapshot(data: Any) -> None:

    name = f"worktask-vanishing-{time.time_ns()}"
    s3 = aws_client(data, "s3")
    s3.create_bucket(Bucket=name)
    s = data.model_copy(update={"s3_bucket_name": name, "backup_rate_limit": 0})
    job_id = commands.backup(s, True, True, 1000)  # the CLI's checks pass: the bucket exists
    s3.delete_bucket(Bucket=name)  # then it goes: every chunk's upload fails (NoSuchBucket, not transient)
    report = jobs.wait(redis_client(data), job_id, timeout=120)
    assert report["state"] == "failed" and not report["ok"]
    assert "worktask.backup.dump_" in report["error"] and "chunk=" in report["error"] and "table=" in report["error"]
    assert "NoSuchBucket" in report["error"] or "bucket" in report["error"].lower()
    # the snapshot is let go: by the call that failed the job, right after it did (the waiting CLI can wake
    # in between, so give it a few seconds)
    deadline = time.monotonic() + 10
    while redis_client(data).exists(jobs.snapshot_keys(job_id, 0)[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not redis_client(data).exists(jobs.snapshot_keys(job_id, 0)[1])
    assert jobs.read(redis_client(data), job_id).chunks_failed >= 1
