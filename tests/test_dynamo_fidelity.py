"""DynamoDB in backups, on moto, real PostgreSQL and real workers: binary attributes round-trip exactly,
the DynamoDB part says at which instant it was taken (export at the snapshot's time, or a scan window),
restore verifies checksums and `--exact` stays bounded in memory, and `validate --fix` keeps the items
a scan window may have caught ahead of the PostgreSQL snapshot."""

from __future__ import annotations

import json
import secrets
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from conftest import cli_json, run_cli, run_job
from test_backup import backup, make_data, manifest_of
from worker import backups, commands
from worker.archive import ChunkWriter, read_chunk
from worker.connections import aws_client, pg_connect
from worker.dynamo import KEY_SCHEMA, batch_write, drop_table, ensure_table, to_item
from worker.errors import JobFailed
from worker.plans import RestorePlan

# Fidelity cases: run once, on the local services path (.ci/run), not again on the embedded path.
pytestmark = pytest.mark.slow

ser, de = TypeSerializer(), TypeDeserializer()
BINARY_ITEMS = [
    {"PK": "BIN#1", "SK": "A", "blob": b"\x00\xff\x10binary\nwith a newline",
     "blobs": {b"a", b"\x00\x01", b"\xff" * 40}, "text": "plain", "n": 3},
    {"PK": "BIN#2", "SK": "B", "nested": {"m": {"inner": b"\x01\x02", "list": [b"\x03", {"deep": b"\x04\x00"}, "text"]},
                                        "bs": {b"x", b"y"}},
     "list": [b"\x05", [b"\x06", {b"\x07"}]], "empty_map": {}},
]


def plain(value: Any) -> Any:
    """A deserialized value with Binary as bytes and sets as frozensets, for exact comparison."""
    if isinstance(value, Binary):
        return bytes(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return frozenset(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def live_binary_items(settings: Any) -> dict[str, Any]:
    pages = aws_client(settings, "dynamodb").get_paginator("scan").paginate(TableName=settings.dynamo_table_name,
                                                                             ConsistentRead=True)
    items = [i for p in pages for i in p["Items"] if i["PK"]["S"].startswith("BIN#")]
    return {i["PK"]["S"]: plain({k: de.deserialize(v) for k, v in i.items()}) for i in items}


def put_binary_items(settings: Any) -> None:
    client = aws_client(settings, "dynamodb")
    for item in BINARY_ITEMS:
        client.put_item(TableName=settings.dynamo_table_name, Item={k: ser.serialize(v) for k, v in item.items()})


def expected_binary_items() -> dict[str, Any]:
    return {i["PK"]: plain({k: de.deserialize(ser.serialize(v)) for k, v in i.items()}) for i in BINARY_ITEMS}


def scramble_binary_items(settings: Any) -> None:
    client = aws_client(settings, "dynamodb")
    client.delete_item(TableName=settings.dynamo_table_name, Key={"PK": {"S": "BIN#1"}, "SK": {"S": "A"}})
    client.put_item(TableName=settings.dynamo_table_name,
                    Item={"PK": {"S": "BIN#2"}, "SK": {"S": "B"}, "list": {"L": [{"B": b"changed"}]}})
    assert live_binary_items(settings) != expected_binary_items()


@pytest.fixture()
def binary_items(migrated: Any) -> Iterator[Any]:
    make_data(migrated)
    put_binary_items(migrated)
    yield migrated
    client = aws_client(migrated, "dynamodb")
    for item in BINARY_ITEMS:
        client.delete_item(TableName=migrated.dynamo_table_name, Key={"PK": {"S": item["PK"]}, "SK": {"S": item["SK"]}})


def set_pitr(settings: Any, on: bool) -> None:
    aws_client(settings, "dynamodb").update_continuous_backups(
        TableName=settings.dynamo_table_name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": on})


@pytest.fixture()
def pitr(binary_items: Any) -> Iterator[Any]:
    set_pitr(binary_items, True)
    yield binary_items
    set_pitr(binary_items, False)


def dynamo_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in manifest["tables"] if t["store"] == "dynamodb")


def decode_items(settings: Any, options: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of the DynamoDB chunks as stored (DynamoDB JSON: B as base64 text)."""
    store = backups.store_for(settings, options)
    key = backups.data_key(settings, manifest["backup_id"], manifest["encryption"])
    t = dynamo_entry(manifest)
    out = []
    for c in t["chunks"]:
        with store.open(c["key"]) as f:
            blocks, _ = read_chunk(f, backups.chunk_aad(manifest["backup_id"], "dynamodb", t["name"], c["n"]),
                                   manifest["options"]["compress"], key)
            out += [json.loads(line)["Item"] for line in b"".join(blocks).splitlines()]
    return out


def test_binary_attributes_round_trip_exactly_through_backup_and_restore(binary_items: Any) -> None:
    table = binary_items.dynamo_table_name
    code, report = cli_json("backup", timeout=300)
    assert code == 0 and report["ok"], report.get("error")
    stored = {i["PK"]["S"]: i for i in decode_items(binary_items, backups.store_options(binary_items),
                                                   manifest_of(binary_items, report["backup_id"]))}
    assert stored["BIN#1"]["blob"] == {"B": "AP8QYmluYXJ5CndpdGggYSBuZXdsaW5l"}  # base64 text, as DynamoDB's export
    scramble_binary_items(binary_items)
    code, restored = cli_json("restore", report["backup_id"], "--tables", table, timeout=300)
    assert code == 0 and restored["ok"], restored.get("error")
    assert live_binary_items(binary_items) == expected_binary_items()


def test_with_pitr_and_an_s3_store_the_dynamodb_part_is_an_export_at_the_snapshot_time(pitr: Any, bucket: str) -> None:
    table, env = pitr.dynamo_table_name, {"S3_BUCKET_NAME": bucket}
    code, report = cli_json("backup", env=env, timeout=300)
    assert code == 0 and report["ok"], report.get("error")
    options = {**backups.store_options(pitr), "s3_bucket": bucket}
    manifest = backups.read_manifest(backups.store_for(pitr, options), options, report["backup_id"])
    capture = dynamo_entry(manifest)["capture"]
    assert capture["method"] == "export" and capture["export_arn"], capture
    at = datetime.fromisoformat(capture["at"])  # the snapshot's time: after the id's stamp, before the end
    assert backups.created_at(report["backup_id"]) <= at <= datetime.fromisoformat(report["finished_at"])
    assert next(t for t in report["tables"] if t["store"] == "dynamodb")["capture"]["method"] == "export"
    scanned = aws_client(pitr, "dynamodb").scan(TableName=table, ConsistentRead=True)["Items"]
    items = decode_items(pitr, options, manifest)
    assert len(items) == len(scanned) == dynamo_entry(manifest)["rows"]
    from worker.dynamo import from_export  # (here: the file must load on code without it)

    stored_bin = {i["PK"]["S"]: plain({k: de.deserialize(v) for k, v in from_export(i).items()}) for i in items
                  if i["PK"]["S"].startswith("BIN#")}  # B as base64 text in the chunk, as in DynamoDB's own export
    assert stored_bin == expected_binary_items()
    keys = {o["Key"] for o in aws_client(pitr, "s3").list_objects_v2(
        Bucket=bucket, Prefix=f"backups/{report['backup_id']}/")["Contents"]}
    assert keys == {c["key"] for t in manifest["tables"] for c in t["chunks"]} | \
        {f"backups/{report['backup_id']}/manifest.json"}  # the export's own files are gone
    scramble_binary_items(pitr)
    code, restored = cli_json("restore", report["backup_id"], "--tables", table, env=env, timeout=300)
    assert code == 0 and restored["ok"], restored.get("error")
    assert live_binary_items(pitr) == expected_binary_items()


@pytest.fixture()
def data(migrated: Any) -> Any:
    make_data(migrated)
    return migrated


def test_without_pitr_the_report_and_manifest_state_the_scan_window(data: Any) -> None:
    set_pitr(data, False)
    code, report = cli_json("backup", timeout=300)
    assert code == 0 and report["ok"], report.get("error")
    capture = dynamo_entry(manifest_of(data, report["backup_id"]))["capture"]
    assert capture["method"] == "scan" and "point-in-time recovery" in capture["reason"]
    start, end = map(datetime.fromisoformat, capture["window"])
    assert datetime.fromisoformat(report["started_at"]) <= start <= end <= datetime.fromisoformat(report["finished_at"])
    assert datetime.fromisoformat(capture["snapshot_at"]) <= start
    assert next(t for t in report["tables"] if t["store"] == "dynamodb")["capture"] == capture
    proc = run_cli("backup", timeout=300)  # the human report says it too
    assert proc.returncode == 0 and "scanned between" in proc.stdout, proc.stdout
    set_pitr(data, True)  # on, but a local folder store has no bucket to export into: a stated scan
    try:
        code, report = cli_json("backup", timeout=300)
    finally:
        set_pitr(data, False)
    capture = dynamo_entry(manifest_of(data, report["backup_id"]))["capture"]
    assert code == 0 and capture["method"] == "scan" and "S3_BUCKET_NAME" in capture["reason"], capture


def test_a_dynamodb_chunk_changed_after_the_verify_step_is_not_loaded(data: Any) -> None:
    from tasks.restore import extra_items, load_dynamo_chunk

    report = backup(data, encryption_enabled=False)  # no GCM tag to catch it: the checksum must
    manifest = manifest_of(data, report["backup_id"])
    t = dynamo_entry(manifest)
    chunk = next(c for c in t["chunks"] if c["rows"])
    path = Path(backups.store_options(data)["backup_dir"], chunk["key"])
    text = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
    planted = {"PK": f"TAMPERED#{secrets.token_hex(3)}", "SK": "X"}
    path.write_bytes(
        zstandard.ZstdCompressor().compress(text + json.dumps({"Item": to_item(planted)}).encode() + b"\n"))
    plan = RestorePlan(backup_id=manifest["backup_id"], tag="t", options=backups.store_options(data),
                       encryption=manifest["encryption"], compress=manifest["options"]["compress"], started=0,
                       tables=[t])
    with pytest.raises(JobFailed) as err:
        load_dynamo_chunk(data, plan, t, chunk)
    assert t["name"] in str(err.value) and f"chunk {chunk['n']}" in str(err.value)
    client = aws_client(data, "dynamodb")
    assert "Item" not in client.get_item(TableName=t["name"], Key=to_item(planted))  # nothing of it was written
    with pytest.raises(JobFailed):  # --exact reads the chunks too: it refuses the changed one
        list(extra_items(data, plan, t))


def exact_in_a_table_of_its_own(settings: Any, n: int, extras: int) -> int:
    """A synthetic backup of n keys (4 chunks) of a new table holding those items plus `extras` more; runs
    --exact's comparison and deletes, checks that exactly the extras went, and returns the peak Python heap."""
    from tasks.restore import delete_items, extra_items

    name = f"worktask-exact-{secrets.token_hex(3)}"
    client = aws_client(settings, "dynamodb")
    ensure_table(client, name)
    options = {**backups.store_options(settings), "compress": True, "encrypt": False}
    store, backup_id, chunks = backups.store_for(settings, options), backups.new_backup_id(), []
    try:
        keys = [(f"ITEM#{i:06d}", "S" * 200 + str(i)) for i in range(n)]
        for part in range(4):
            obj = backups.chunk_key(options, backup_id, "dynamodb", name, part, "aaaaaa")
            with store.writer(obj) as out:
                w = ChunkWriter(out, backups.chunk_aad(backup_id, "dynamodb", name, part), True, None)
                for pk, sk in keys[part::4]:
                    w.write(json.dumps({"Item": {"PK": {"S": pk}, "SK": {"S": sk}}}).encode() + b"\n")
                chunks.append({"n": part, "key": obj, "rows": len(keys[part::4]), **w.close()})
        table = {"name": name, "store": "dynamodb", "key_schema": KEY_SCHEMA, "chunks": chunks}
        plan = RestorePlan(backup_id=backup_id, tag="t", options=options, encryption=None, compress=True, started=0,
                           tables=[])
        batch_write(client, name, [{"PutRequest": {"Item": {"PK": {"S": pk}, "SK": {"S": sk}}}}
                                   for pk, sk in keys + [(f"EXTRA#{i}", "x") for i in range(extras)]])
        tracemalloc.start()
        try:
            delete_items(settings, name, extra_items(settings, plan, table))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        live = {(i["PK"]["S"], i["SK"]["S"]) for p in client.get_paginator("scan").paginate(TableName=name)
                for i in p["Items"]}
        assert live == set(keys)  # every extra deleted, nothing else
        return peak
    finally:
        drop_table(client, name)
        store.delete([c["key"] for c in chunks])


def test_exact_deletes_exactly_the_extras_with_bounded_memory(migrated: Any) -> None:
    """--exact's comparison deletes exactly the extra items, and the Python heap it needs does not grow with
    the table: 20,000 keys cost about what 100 do (the keys go through a temporary sqlite file, not sets)."""
    small = exact_in_a_table_of_its_own(migrated, 100, 5)
    big = exact_in_a_table_of_its_own(migrated, 20_000, 37)
    assert big - small < 3_000_000, f"peak Python heap {small:,} bytes for 100 keys, {big:,} for 20,000"


def test_validate_fix_keeps_a_dangling_item_a_scan_window_may_have_caught_early(migrated: Any) -> None:
    """Backup A lacks work task X; backup B (a scan) has X's analysis item. After restoring work_tasks from A and
    the DynamoDB table from B, X's item dangles as it would after a backup whose scan caught an item written after
    the snapshot: --fix reports it (warning) and keeps it; an item dangling for another reason is still deleted."""
    from test_restore import restore

    make_data(migrated)
    table = migrated.dynamo_table_name
    dynamo = aws_client(migrated, "dynamodb")
    set_pitr(migrated, False)
    first = backup(migrated)
    with pg_connect(migrated, autocommit=True) as pg:
        x = pg.execute("insert into work_tasks (title) values ('made after the snapshot') returning id").fetchone()[0]

    def analysis(task_id: int) -> dict[str, Any]:
        return to_item({"PK": f"TASK#{task_id}", "SK": "ANALYSIS", "type": "analysis", "work_task_id": task_id,
                        "complexity": 2, "risk": "low", "summary": "s", "estimated_hours": 1.0})
    dynamo.put_item(TableName=table, Item=analysis(x))
    second = backup(migrated)
    assert (dynamo_entry(manifest_of(migrated, second["backup_id"])).get("capture", {"method": "scan"})["method"]
            == "scan")
    try:
        assert restore(migrated, first["backup_id"], ["work_tasks"], exact=False)["ok"]
        assert restore(migrated, second["backup_id"], [table], exact=False)["ok"]
        stale = 987_654_322  # dangling, but not from the restored backup: --fix deletes it as before
        dynamo.put_item(TableName=table, Item=analysis(stale))
        now = migrated.model_copy(update={"fix_min_age_minutes": 0})  # the stale item was written just now
        report = run_job(migrated, lambda: commands.validate(now, True), 300)
        by_key = {i["key"]: i for i in report["issues"] if i["table"] == table}
        kept = by_key[f"TASK#{x}|ANALYSIS"]
        assert kept["severity"] == "warning" and not kept["fixable"] and not kept["fixed"], kept
        assert second["backup_id"] in kept["message"]
        assert by_key[f"TASK#{stale}|ANALYSIS"]["fixed"]
        assert "Item" in dynamo.get_item(TableName=table, Key={"PK": {"S": f"TASK#{x}"}, "SK": {"S": "ANALYSIS"}})
        assert "Item" not in dynamo.get_item(TableName=table,
                                             Key={"PK": {"S": f"TASK#{stale}"}, "SK": {"S": "ANALYSIS"}})
    finally:
        dynamo.delete_item(TableName=table, Key={"PK": {"S": f"TASK#{x}"}, "SK": {"S": "ANALYSIS"}})
        with pg_connect(migrated, autocommit=True) as pg:
            pg.execute("delete from work_tasks where id = %s", (x,))
