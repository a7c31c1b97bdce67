"""Retention (worker/retention.py): the keep-* policy on synthetic listings, the backups always kept, and
`worktask backup cleanup` on the real store, dry run then for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import cli_json, run_cli
from worker import backups, markers, retention
from worker.retention import Policy

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday


def row(at: datetime, state: str = "complete", validated: bool | None = None, verified: bool | None = None,
        last_write: datetime | None = None, tag: str = "b") -> dict[str, Any]:
    """A listing row as worker.backups.list_backups gives it (only what retention reads)."""
    def marker(ok: bool | None) -> dict[str, Any] | None:
        return None if ok is None else {"ok": ok, "at": (at + timedelta(hours=1)).isoformat()}
    return {"backup_id": f"{at:%Y%m%dT%H%M%SZ}-backup-{tag}", "created_at": at.isoformat(), "state": state,
            "bytes_stored": 100, "last_write": (last_write or at).isoformat(), "validated": marker(validated),
            "verified": marker(verified)}


def kept(decisions: list[dict[str, Any]]) -> list[str]:
    return [d["backup_id"] for d in decisions if d["action"] == "keep"]


def days_ago(*days: float) -> list[dict[str, Any]]:
    return [row(NOW - timedelta(days=d)) for d in days]


def test_without_keep_rules_the_age_decides_and_the_newest_complete_stays() -> None:
    listing = days_ago(40, 35, 3, 1)
    decisions = retention.decide(listing, Policy(30), NOW)
    assert [d["backup_id"] for d in decisions] == sorted((r["backup_id"] for r in listing), reverse=True)
    assert kept(decisions) == [listing[3]["backup_id"], listing[2]["backup_id"]]
    gone = [d for d in decisions if d["action"] == "delete"]
    assert [d["reasons"] for d in gone] == [["older than 30 days"]] * 2
    # all old: the newest complete one stays whatever its age, and says why
    decisions = retention.decide(days_ago(90, 80), Policy(30), NOW)
    assert [d["action"] for d in decisions] == ["keep", "delete"]
    assert decisions[0]["reasons"] == ["the newest complete backup (always kept)"]


def test_keep_last_keeps_the_newest_n() -> None:
    listing = days_ago(10, 9, 8, 7, 6)
    decisions = retention.decide(listing, Policy(1, keep_last=3), NOW)
    assert kept(decisions) == [r["backup_id"] for r in listing[:1:-1]]  # 6, 7, 8 days old
    assert "among the newest 3 (keep-last)" in decisions[2]["reasons"]
    assert decisions[3]["reasons"] == ["older than 1 days and kept by no keep-last rule"]


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_that_have_one() -> None:
    day = NOW.replace(hour=0)
    listing = [row(day - timedelta(days=d, hours=-h)) for d, h in
               ((2, 1), (2, 20), (3, 5), (6, 2), (6, 3), (9, 1))]  # no backup on days 4, 5, 7, 8
    decisions = retention.decide(listing, Policy(1, keep_daily=3), NOW)
    newest_of = {d: max(r["backup_id"] for r in listing
                        if r["created_at"][:10] == f"{day - timedelta(days=d):%Y-%m-%d}") for d in (2, 3, 6)}
    assert sorted(kept(decisions)) == sorted(newest_of.values())
    reasons = {d["backup_id"]: d["reasons"] for d in decisions}
    assert reasons[newest_of[6]] == [f"newest of day {day - timedelta(days=6):%Y-%m-%d} (keep-daily 3)"]


def test_keep_weekly_uses_iso_weeks_in_utc() -> None:
    # Sunday 2026-11-22 23:30 is ISO week 47, Monday 2026-11-23 00:30 week 48
    sunday, monday = datetime(2026, 11, 22, 23, 30, tzinfo=UTC), datetime(2026, 11, 23, 0, 30, tzinfo=UTC)
    listing = [row(monday), row(sunday), row(sunday - timedelta(days=2)), row(sunday - timedelta(days=7)),
               row(sunday - timedelta(days=14))]
    decisions = retention.decide(listing, Policy(1, keep_weekly=2), NOW + timedelta(days=30))
    assert kept(decisions) == [listing[0]["backup_id"], listing[1]["backup_id"]]
    assert "newest of week 2026-W47 (keep-weekly 2)" in decisions[1]["reasons"]
    assert "newest of week 2026-W48 (keep-weekly 2)" in decisions[0]["reasons"]


def test_keep_monthly_keeps_the_newest_of_each_of_the_last_n_months() -> None:
    listing = [row(datetime(2026, m, d, tzinfo=UTC)) for m, d in ((10, 30), (10, 2), (9, 15), (7, 1), (6, 30))]
    decisions = retention.decide(listing, Policy(1, keep_monthly=3), NOW)
    assert kept(decisions) == [listing[0]["backup_id"], listing[2]["backup_id"], listing[3]["backup_id"]]
    assert "newest of month 2026-07 (keep-monthly 3)" in decisions[3]["reasons"]


def test_the_rules_are_a_union_each_a_reason() -> None:
    listing = days_ago(0.5, 1.5, 2.5, 20, 45, 70, 100)
    policy = Policy(2, keep_last=2, keep_daily=3, keep_monthly=3)
    decisions = {d["backup_id"]: d for d in retention.decide(listing, policy, NOW)}
    ids = [r["backup_id"] for r in listing]
    # days 0.5-2.5: 25, 24, 23 Nov; months: Nov (25th), Oct (11th), Sep (16th); 5 Nov and 17 Aug are kept by none
    assert {b for b, d in decisions.items() if d["action"] == "keep"} == {ids[0], ids[1], ids[2], ids[4], ids[5]}
    first = decisions[ids[0]]["reasons"]
    assert "younger than 2 days" in first and "among the newest 2 (keep-last)" in first
    assert any(r.startswith("newest of day") for r in first) and any(r.startswith("newest of month") for r in first)
    assert decisions[ids[2]]["reasons"] == [f"newest of day {NOW - timedelta(days=2.5):%Y-%m-%d} (keep-daily 3)"]
    assert decisions[ids[3]]["action"] == decisions[ids[6]]["action"] == "delete"
    assert decisions[ids[3]]["reasons"] == ["older than 2 days and kept by no keep-last/keep-daily/keep-monthly rule"]


def test_the_newest_validated_and_the_newest_drilled_survive_the_tightest_policy() -> None:
    """RETENTION_DAYS=1 and keep-last 1, four newer backups never validated: the newest one that passed
    validation and the newest that passed a drill stay; a failed validation or drill does not count."""
    listing = [row(NOW - timedelta(days=d), validated=v, verified=w, tag=f"n{i}") for i, (d, v, w) in enumerate(
        ((2, None, None), (3, False, None), (4, None, False), (5, None, None),  # newer, none passed
         (6, True, None),   # the newest validated
         (7, None, True),   # the newest drilled
         (8, True, True),   # older, passed both: not the newest of either
         (9, None, None)))]
    decisions = {d["backup_id"]: d for d in retention.decide(listing, Policy(1, keep_last=1), NOW)}
    assert [b for b, d in decisions.items() if d["action"] == "keep"] == \
        [listing[0]["backup_id"], listing[4]["backup_id"], listing[5]["backup_id"]]
    assert decisions[listing[0]["backup_id"]]["reasons"] == ["among the newest 1 (keep-last)",
                                                             "the newest complete backup (always kept)"]
    assert decisions[listing[4]["backup_id"]]["reasons"] == ["the newest backup that passed validation (always kept)"]
    assert decisions[listing[5]["backup_id"]]["reasons"] == \
        ["the newest backup that passed a restore drill (always kept)"]
    # a backup that is both the newest complete and the newest validated says both
    both = retention.decide([row(NOW - timedelta(days=9), validated=True)], Policy(1), NOW)
    assert both[0]["reasons"] == ["the newest complete backup (always kept)",
                                  "the newest backup that passed validation (always kept)"]


def test_failed_and_incomplete_leftovers_go_after_a_day_and_never_count_as_validated() -> None:
    listing = [row(NOW - timedelta(hours=2), state="incomplete", tag="running"),
               row(NOW - timedelta(days=3), state="failed", validated=True, tag="failed"),
               row(NOW - timedelta(days=4), state="incomplete", tag="abandoned"),
               row(NOW - timedelta(days=50), validated=True, tag="good")]
    decisions = {d["backup_id"]: d for d in retention.decide(listing, Policy(30), NOW)}
    actions = {b.rsplit("-", 1)[1]: (d["action"], d["reasons"]) for b, d in decisions.items()}
    assert actions["running"] == ("keep", ["incomplete, written within the last day (perhaps still running)"])
    assert actions["failed"] == ("delete", ["failed leftover, untouched for over a day"])
    assert actions["abandoned"] == ("delete", ["incomplete leftover, untouched for over a day"])
    assert actions["good"][0] == "keep"


def test_policy_options_take_each_flag_over_its_setting(settings: Any) -> None:
    s = settings.model_copy(update={"retention_days": 9, "retention_keep_last": 4, "retention_keep_weekly": 2})
    assert retention.policy_options(s) == {"retention_days": 9, "keep_last": 4, "keep_daily": 0, "keep_weekly": 2,
                                           "keep_monthly": 0}
    assert retention.policy_options(s, 3, keep_last=0, keep_monthly=6) == {
        "retention_days": 3, "keep_last": 0, "keep_daily": 0, "keep_weekly": 2, "keep_monthly": 6}


def test_keep_flags_refuse_negative_numbers_with_exit_2(settings: Any) -> None:
    proc = run_cli("backup", "cleanup", "--keep-daily", "-1")
    assert proc.returncode == 2 and "--keep-daily" in proc.stderr


PREFIX = "retention-it"


@pytest.fixture(scope="module")
def store_with_history(migrated: Any) -> Any:
    """One real backup, and copies of its manifest under older ids (backups of 10 to 60 days ago as far as the
    listing and retention go), with validated/verified markers on some."""
    env = {"BACKUP_PREFIX": PREFIX}
    code, report = cli_json("backup", "--skip-dynamodb", env=env, timeout=300)
    assert code == 0 and report["ok"], report
    s = migrated.model_copy(update={"backup_prefix": PREFIX})
    opts = backups.store_options(s)
    store = backups.store_for(s, opts)
    manifest = backups.read_manifest(store, opts, report["backup_id"])
    now = datetime.now(UTC)
    ids = {"newest": report["backup_id"]}
    for name, age in (("d10", 10), ("d20", 20), ("d40", 40), ("d50", 50), ("d60", 60)):
        bid = f"{now - timedelta(days=age):%Y%m%dT%H%M%SZ}-backup-{name}"
        body = {k: v for k, v in manifest.items() if k not in ("checksum", "auth")}
        backups.write_manifest(store, opts, {**body, "backup_id": bid}, sign_with=s)
        ids[name] = bid
    at = now.isoformat()
    markers.write(store, opts, ids["d40"], markers.VALIDATED, {"job_id": "j1", "ok": True, "at": at,
                                                               "chunks_checked": 1, "bad_chunks": 0, "error": None})
    markers.write(store, opts, ids["d20"], markers.VALIDATED, {"job_id": "j2", "ok": False, "at": at,
                                                               "chunks_checked": 1, "bad_chunks": 1, "error": "x"})
    markers.write(store, opts, ids["d50"], markers.VERIFIED, {"job_id": "j3", "ok": True, "at": at, "tables": [],
                                                              "error": None})
    return env, ids


def test_backup_list_shows_the_markers(store_with_history: Any) -> None:
    env, ids = store_with_history
    code, listed = cli_json("backup", "list", env=env)
    assert code == 0
    rows = {r["backup_id"]: r for r in listed}
    assert rows[ids["d40"]]["validated"]["ok"] is True and rows[ids["d40"]]["verified"] is None
    assert rows[ids["d20"]]["validated"]["ok"] is False
    assert rows[ids["d50"]]["verified"]["ok"] is True and rows[ids["d50"]]["validated"] is None
    assert rows[ids["newest"]]["validated"] is None and rows[ids["newest"]]["verified"] is None
    table = run_cli("backup", "list", env=env)
    assert table.returncode == 0 and "valid." in table.stdout and "drill" in table.stdout and "FAIL" in table.stdout


def test_cleanup_dry_run_lists_every_decision_and_the_real_run_deletes_exactly_those(store_with_history: Any) -> None:
    env, ids = store_with_history
    args = ("backup", "cleanup", "--retention-days", "15", "--keep-last", "2")
    code, dry = cli_json(*args, "--dry-run", env=env)
    assert code == 0 and dry["ok"] and dry["dry_run"], dry
    assert dry["policy"] == {"retention_days": 15, "keep_last": 2, "keep_daily": 0, "keep_weekly": 0,
                             "keep_monthly": 0}
    actions = {d["backup_id"]: d["action"] for d in dry["decisions"]}
    assert actions == {ids["newest"]: "keep", ids["d10"]: "keep", ids["d20"]: "delete", ids["d40"]: "keep",
                       ids["d50"]: "keep", ids["d60"]: "delete"}
    reasons = {d["backup_id"]: d["reasons"] for d in dry["decisions"]}
    assert "the newest backup that passed validation (always kept)" in reasons[ids["d40"]]
    assert "the newest backup that passed a restore drill (always kept)" in reasons[ids["d50"]]
    assert dry["kept"] == 4 and sorted(d["backup_id"] for d in dry["deleted"]) == sorted([ids["d20"], ids["d60"]])
    code, listed = cli_json("backup", "list", env=env)
    assert len(listed) == 6  # the dry run deleted nothing
    text = run_cli(*args, "--dry-run", env=env)
    assert text.returncode == 0 and "would delete 2 backup(s), kept 4" in text.stdout and "keep-last 2" in text.stdout
    # the settings reach the job, and a flag beats its variable
    code, by_env = cli_json("backup", "cleanup", "--dry-run", "--keep-last", "0",
                            env={**env, "RETENTION_KEEP_LAST": "5", "RETENTION_KEEP_MONTHLY": "3"})
    assert code == 0 and by_env["policy"]["keep_last"] == 0 and by_env["policy"]["keep_monthly"] == 3, by_env
    code, done = cli_json(*args, env=env)
    assert code == 0 and done["ok"] and not done["dry_run"], done
    assert sorted(d["backup_id"] for d in done["deleted"]) == sorted(d["backup_id"] for d in dry["deleted"])
    code, listed = cli_json("backup", "list", env=env)
    assert {r["backup_id"] for r in listed} == {b for b, a in actions.items() if a == "keep"}
