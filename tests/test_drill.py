"""Row hashes recorded at backup time, and the restore drill (`worktask backup verify ID --restore-test`), on real
PostgreSQL, moto and real workers."""

from __future__ import annotations

from typing import Any

import pytest

from test_backup import backup, make_data, manifest_of
from worker import rowhash
from worker.connections import aws_client, pg_connect


@pytest.fixture(scope="module")
def good(migrated: Any) -> tuple[Any, dict[str, Any]]:
    """One backup of the test data for the module: (settings, manifest)."""
    make_data(migrated)
    report = backup(migrated)
    assert report["ok"], report
    return migrated, manifest_of(migrated, report["backup_id"])


def test_every_table_records_its_rows_hash_computed_in_the_snapshot(good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    client = aws_client(settings, "dynamodb")
    with pg_connect(settings) as conn:
        conn.execute("set timezone = 'Asia/Kathmandu'; set datestyle = 'SQL, DMY'")  # pinned by the hash
        for t in manifest["tables"]:
            assert t["row_hash_alg"] == (rowhash.ALG if t["store"] == "postgres" else rowhash.DYNAMO_ALG)
            assert all("row_hash" in c for c in t["chunks"])
            assert t["row_hash"] == rowhash.combine([c["row_hash"] for c in t["chunks"]])
            found = rowhash.postgres_table(conn, t["name"], [c["name"] for c in t["columns"]]) \
                if t["store"] == "postgres" else rowhash.dynamo_table(client, t["name"])
            assert found == (t["rows"], t["row_hash"]), t["name"]
    assert {t["name"] for t in manifest["tables"] if t["rows"] > 1000}  # several chunks summed somewhere
