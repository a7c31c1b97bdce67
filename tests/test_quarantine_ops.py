"""Quarantines of fixes (worker/quarantine.py) in the operations: `worktask backup cleanup` deletes the ones
older than the retention and keeps the younger, `worktask health` names the ones kept, `backup list`,
`backup validate` and the abort of unfinished uploads leave the quarantine folder alone.

The module's tests share one store (prefix `qops-it`: a validated backup, quarantines written 40 days, 10 days
and a moment ago) and run in order: health and the dry run before the real clean-up, health after it."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_json, run_cli
from tasks.health import run_check
from tasks.verify import cleanup_quarantines
from worker import backups, jobs, quarantine, retention
from worker.connections import redis_client
from worker.errors import ServiceUnavailable
from worker.store import LocalStore

PREFIX = "qops-it"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CHANGES = [{"kind": "orphans", "store": "postgres", "table": "todos", "action": "delete", "key_columns": ["id"],
            "rows": [{"key": {"id": "1"}, "before": "(1,x)"}]}]


def job_id(at: datetime, tag: str) -> str:
    """A validation job's id (it matches a backup id's pattern: the listing must not take it for one)."""
    return f"{at:%Y%m%dT%H%M%SZ}-validate-{tag}"


def write_quarantine(s: Any, jid: str, age: timedelta = timedelta(0)) -> Path:
    """A quarantine of one object, its files' mtime set `age` back (the local store's last write)."""
    quarantine.write(s, quarantine.store_settings(s), jid, "unit", changes=CHANGES, xid=None)
    folder = s.backup_folder / quarantine.folder(backups.store_options(s), jid)
    stamp = (datetime.now(UTC) - age).timestamp()
    for f in folder.iterdir():
        os.utime(f, (stamp, stamp))
    return folder


def row(jid: str, days: float) -> dict[str, Any]:
    return {"job_id": jid, "objects": 1, "bytes": 10, "last_write": NOW - timedelta(days=days)}


def test_the_age_of_the_newest_object_decides_and_a_running_validation_keeps_its_quarantine() -> None:
    listing = [row("old", 31), row("young", 2), row("running", 90)]
    decisions = retention.decide_quarantines(listing, 30, NOW, busy=lambda j: j == "running")
    assert [(d["job_id"], d["action"]) for d in decisions] == [("young", "keep"), ("old", "delete"),
                                                               ("running", "keep")]
    reasons = {d["job_id"]: d["reason"] for d in decisions}
    assert reasons == {"young": "last written 2.0 days ago, younger than 30 days",
                       "old": "last written 31.0 days ago, older than 30 days",
                       "running": "its validation job is still running"}
    assert decisions[0]["last_write"] == (NOW - timedelta(days=2)).isoformat()


def test_a_quarantine_that_cannot_be_deleted_or_listed_is_reported_and_the_others_go(tmp_path: Path) -> None:
    class Stuck(LocalStore):
        def delete(self, keys: list[str]) -> None:
            if any("/stuck/" in k for k in keys):
                raise ServiceUnavailable("the store refused the delete")
            super().delete(keys)

    store, options = Stuck(tmp_path), {"prefix": "p"}
    for jid in ("stuck", "gone", "kept"):
        store.put(quarantine.folder(options, jid) + "unit.x.json", b"{}")
    decisions = [{"job_id": j, "action": a} for j, a in (("stuck", "delete"), ("gone", "delete"), ("kept", "keep"))]
    errors = retention.delete_quarantines(store, options, decisions)
    assert errors == ["stuck: the store refused the delete"]
    assert decisions[0]["error"] == "the store refused the delete" and "error" not in decisions[1]
    assert {q["job_id"] for q in quarantine.list_quarantines(store, options)} == {"stuck", "kept"}

    class Unlistable(LocalStore):
        def list(self, prefix: str = "") -> Any:
            raise ServiceUnavailable("S3 refused s3://b/p/quarantine/ (AccessDenied)")

    held, errors = cleanup_quarantines(Unlistable(tmp_path), options, 30, False, lambda _j: False)
    assert (held, errors) == ([], ["listing the quarantines: S3 refused s3://b/p/quarantine/ (AccessDenied)"])


@pytest.fixture(scope="module")
def held(migrated: Any) -> Any:
    env = {"BACKUP_PREFIX": PREFIX}
    code, backup = cli_json("backup", "--skip-dynamodb", env=env, timeout=300)
    assert code == 0 and backup["ok"], backup
    s = migrated.model_copy(update={"backup_prefix": PREFIX})
    now = datetime.now(UTC)
    ids = {"old": job_id(now - timedelta(days=40), "old0001"), "mid": job_id(now - timedelta(days=10), "mid0001"),
           "young": job_id(now, "young01")}
    for name, days in (("old", 40), ("mid", 10), ("young", 0)):
        write_quarantine(s, ids[name], timedelta(days=days))
    return env, s, backup["backup_id"], ids


def test_backup_validate_and_list_leave_the_quarantine_folder_alone(held: Any) -> None:
    env, _s, backup_id, ids = held
    code, checked = cli_json("backup", "validate", backup_id, env=env)
    assert code == 0 and checked["ok"] and checked["bad_chunks"] == [], checked
    code, listed = cli_json("backup", "list", env=env)
    assert code == 0 and [r["backup_id"] for r in listed] == [backup_id], listed
    text = run_cli("backup", "list", env=env)
    assert text.returncode == 0 and backup_id in text.stdout
    assert "quarantine" not in text.stdout and not any(j in text.stdout for j in ids.values())


def test_health_names_the_newest_quarantine_and_degrades_on_one_past_retention(held: Any) -> None:
    _env, s, backup_id, ids = held
    check = run_check("backups", s.model_copy(update={"retention_days": 30}))
    assert not check.ok and "1 QUARANTINE(S) PAST RETENTION" in check.detail, check
    assert f"3 quarantines of fixes kept, newest {ids['young']}" in check.detail
    assert f"worktask validate undo {ids['young']} puts its rows back" in check.detail
    assert f"1 older than RETENTION_DAYS (30 days) and not cleaned up: {ids['old']}" in check.detail
    assert "worktask backup cleanup" in check.hint
    # past RETENTION_DAYS by less than a day (the nightly clean-up has not come yet): said, no problem
    check = run_check("backups", s.model_copy(update={"retention_days": 40}))
    assert check.ok and backup_id in check.detail and "3 quarantines of fixes kept" in check.detail, check


def test_cleanup_dry_run_lists_each_quarantine_with_its_action_and_deletes_nothing(held: Any) -> None:
    env, s, _backup_id, ids = held
    code, dry = cli_json("backup", "cleanup", "--retention-days", "30", "--dry-run", env=env)
    assert code == 0 and dry["ok"] and dry["dry_run"], dry
    actions = {q["job_id"]: (q["action"], q["objects"]) for q in dry["quarantines"]}
    assert actions == {ids["old"]: ("delete", 1), ids["mid"]: ("keep", 1), ids["young"]: ("keep", 1)}
    assert [q["job_id"] for q in dry["quarantines"]] == [ids["young"], ids["mid"], ids["old"]]
    old = next(q for q in dry["quarantines"] if q["job_id"] == ids["old"])
    assert old["reason"].startswith("last written 40.0 days ago, older than 30 days") and old["bytes"] > 0
    # --retention-days applies to quarantines as to backups
    code, tight = cli_json("backup", "cleanup", "--retention-days", "7", "--dry-run", env=env)
    assert {q["job_id"] for q in tight["quarantines"] if q["action"] == "delete"} == {ids["old"], ids["mid"]}
    text = run_cli("backup", "cleanup", "--retention-days", "30", "--dry-run", env=env)
    assert text.returncode == 0 and "would delete 1 quarantine(s) of fixes, kept 2" in text.stdout, text.stdout
    assert ids["old"] in text.stdout and "older than 30 days" in text.stdout
    left = {q["job_id"] for q in quarantine.list_quarantines(backups.store_for(s), backups.store_options(s))}
    assert left == set(ids.values())


def test_cleanup_deletes_exactly_the_old_quarantine_and_health_then_names_the_kept(held: Any) -> None:
    env, s, backup_id, ids = held
    code, done = cli_json("backup", "cleanup", "--retention-days", "30", env=env)
    assert code == 0 and done["ok"] and not done["dry_run"], done
    assert [q["job_id"] for q in done["quarantines"] if q["action"] == "delete"] == [ids["old"]]
    left = {q["job_id"] for q in quarantine.list_quarantines(backups.store_for(s), backups.store_options(s))}
    assert left == {ids["mid"], ids["young"]}
    assert [r["backup_id"] for r in cli_json("backup", "list", env=env)[1]] == [backup_id]  # the backup stays
    check = run_check("backups", s.model_copy(update={"retention_days": 30}))
    assert check.ok and f"2 quarantines of fixes kept, newest {ids['young']}" in check.detail, check
    assert ids["old"] not in check.detail


def test_cleanup_keeps_the_quarantine_of_a_validation_still_running(held: Any) -> None:
    env, s, _backup_id, _ids = held
    r = redis_client(s)
    running = jobs.create(r, "validate", {"prefix": PREFIX})
    jobs.start(r, running, 1)
    try:
        write_quarantine(s, running, timedelta(days=45))
        code, done = cli_json("backup", "cleanup", "--retention-days", "30", env=env)
        assert code == 0 and done["ok"], done
        mine = next(q for q in done["quarantines"] if q["job_id"] == running)
        assert (mine["action"], mine["reason"]) == ("keep", "its validation job is still running")
    finally:
        jobs.finish(r, running, {"job_id": running, "kind": "validate", "state": "failed", "ok": False})
        quarantine.delete(backups.store_for(s), backups.store_options(s), running)


def test_health_through_the_workers_names_a_quarantine_in_the_backups_check(migrated: Any) -> None:
    """The workers' own store (the default prefix): `worktask health` shows what an operator reads."""
    opts = backups.store_options(migrated)
    jid = job_id(datetime.now(UTC), "health1")
    write_quarantine(migrated, jid)
    try:
        _code, report = cli_json("health")
        detail = next(c for c in report["checks"] if c["name"] == "backups")["detail"]
        assert "of fixes kept" in detail and f"newest {jid}" in detail and f"validate undo {jid}" in detail, detail
    finally:
        quarantine.delete(backups.store_for(migrated), opts, jid)


def test_cleanup_on_s3_leaves_unfinished_quarantine_uploads_and_lists_its_quarantines(migrated: Any,
                                                                                       bucket: str) -> None:
    s = migrated.model_copy(update={"s3_bucket_name": bucket, "backup_prefix": PREFIX})
    env = {"S3_BUCKET_NAME": bucket, "BACKUP_PREFIX": PREFIX}
    jid = job_id(datetime.now(UTC), "s3only1")
    quarantine.write(s, quarantine.store_settings(s), jid, "unit", changes=CHANGES, xid=None)
    store = backups.store_for(s)
    s3 = store.client
    dead_backup = f"{PREFIX}/20261101T000000Z-backup-dead01/postgres/todos/0.x.chunk"
    in_quarantine = f"{PREFIX}/quarantine/{jid}/unit.abcd1234.json.zst.aes"
    uploads = {k: s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in (dead_backup, in_quarantine)}
    try:
        code, done = cli_json("backup", "cleanup", env=env)
        assert code == 0 and done["ok"], done
        assert done["aborted_uploads"] == [dead_backup]
        assert [(q["job_id"], q["action"]) for q in done["quarantines"]] == [(jid, "keep")]
        left = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/").get("Uploads", [])
        assert [u["Key"] for u in left] == [in_quarantine]
        assert cli_json("backup", "list", env=env)[1] == []  # no backup; the quarantine is not one
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key=in_quarantine, UploadId=uploads[in_quarantine])
        quarantine.delete(store, backups.store_options(s), jid)
