"""Fault suite, hostile input (issue 14): every bad id, table name, count, path, `.env` or missing setting
exits 2 with one line on stderr naming the fix, and changes NOTHING: every table's rows, the DynamoDB
table's items, the store's objects and the Redis keys of jobs are the same after as before.

Already covered elsewhere, without the "nothing changed" check over all four (they check one of them, or
none): tests/test_hostile_input.py (empty --tables/TABLES_ONLY, migrate create names, another key, a
BACKUP_PREFIX that leaves the store, RETENTION_DAYS' bound, a bad .env with `config`, ids with a newline),
tests/test_settings.py::test_bad_value_exits_2_with_one_line_naming_the_variable (`config` only),
tests/test_backup.py::test_malformed_or_unknown_id_exits_2_before_anything_is_read (`backup validate` only),
tests/test_backup.py::test_encryption_without_a_key_exits_2_naming_both_variables (backup list only),
tests/test_restore.py::test_hostile_or_unknown_table_names_exit_2_listing_the_tables (--tables only).

NUL cannot be passed in argv (nor in an environment variable: both are C strings), so a NUL goes in
through the one place a command reads settings from a file: `.env` (TABLES_ONLY, BACKUP_PREFIX). No
command reads a backup or job id from the environment or a file, so ids are tested without NUL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_cli
from test_backup import make_data
from test_hostile_input import backup_id, one_line_exit_2  # noqa: F401 - `backup_id` is a fixture
from test_restore import table_hash
from worker.connections import aws_client, pg_connect, redis_client
from worker.constants import KEY_PREFIX
from worker.store import LocalStore

pytestmark = [pytest.mark.fault]

BACKUP = "{backup}"  # stands for the module's real backup id in a case's arguments
UNKNOWN_BACKUP = "20990101T000000Z-backup-000000"
LONG = "20261124T101500Z-backup-" + "a" * 400
LOOKALIKE = "s\u0435rvices"  # Cyrillic 'е' (U+0435): looks like "services"


def snapshot(settings: Any) -> dict[str, Any]:
    """What a change would show: a hash of every table's rows, the DynamoDB items, the store's objects (keys
    and sizes, the local store and every S3 bucket) and the Redis keys of jobs (beat's own runs left out: the
    session's beat may start one at any time)."""
    with pg_connect(settings) as conn:
        names = [r[0] for r in conn.execute("select relname from pg_class where relnamespace = "
                                            "'public'::regnamespace and relkind in ('r', 'p') order by 1")]
        pg = {t: table_hash(conn, t) for t in names}
    dynamo = aws_client(settings, "dynamodb")
    items: list[str] = []
    for page in dynamo.get_paginator("scan").paginate(TableName=settings.dynamo_table_name, ConsistentRead=True):
        items += (json.dumps(i, sort_keys=True) for i in page["Items"])
    objects = sorted((o.key, o.size) for o in LocalStore(settings.backup_folder).list(""))
    s3 = aws_client(settings, "s3")
    for b in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            objects += sorted((f"s3://{b['Name']}/{o['Key']}", o["Size"]) for o in page.get("Contents", []))
    r = redis_client(settings, settings.celery_broker_url)
    index = [j if isinstance(j, str) else j.decode() for j in r.zrange(KEY_PREFIX + "jobs:index", 0, -1)]
    beat = {j for j in index if r.hget(f"{KEY_PREFIX}job:{j}", "trigger") in ("beat", b"beat")}
    keys = sorted(k if isinstance(k, str) else k.decode() for k in r.scan_iter(match=KEY_PREFIX + "*", count=1000))
    keys = [k for k in keys if not k.startswith(KEY_PREFIX + "beat:") and not any(j in k for j in beat)]
    return {"postgres": pg, "dynamodb": hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest(),
            "dynamodb_tables": sorted(dynamo.list_tables()["TableNames"]), "objects": objects,
            "jobs": sorted(j for j in index if j not in beat), "redis_keys": keys}


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in before:
        if before[part] != after[part]:
            if isinstance(before[part], dict):
                out[part] = sorted(k for k in set(before[part]) | set(after[part])
                                   if before[part].get(k) != after[part].get(k))
            elif isinstance(before[part], list):
                out[part] = {"gone": sorted(set(map(str, before[part])) - set(map(str, after[part])))[:5],
                             "new": sorted(set(map(str, after[part])) - set(map(str, before[part])))[:5]}
            else:
                out[part] = "changed"
    return out


# (case id, argv (BACKUP: the module's backup id), environment, `.env` bytes or None, words the line names)
CASES: list[tuple[str, tuple[str, ...], dict[str, str], bytes | None, tuple[str, ...]]] = [
    # ids, for every command that takes one: backup validate, restore, jobs show (and migrate rollback's version)
    *[(f"{cmd[0]}-id-{name}", (*cmd, value), {}, None, ("malformed",))
      for cmd in (("backup", "validate"), ("restore",))
      for name, value in (("dotdot", "../../etc/passwd"), ("slash", "/"), ("dotdot-in-id", "20261124T101500Z-../x"),
                          ("400-chars", LONG), ("shell", "$(touch /tmp/pwned); rm -rf / `id` | cat"),
                          ("empty", ""))],
    ("backup-validate-unknown-id", ("backup", "validate", UNKNOWN_BACKUP), {}, None, ("not found", "backup list")),
    ("restore-unknown-id", ("restore", UNKNOWN_BACKUP), {}, None, ("not found", "backup list")),
    *[(f"jobs-show-id-{name}", ("jobs", "show", value), {}, None, ("malformed",))
      for name, value in (("dotdot", "../x"), ("slash", "/"), ("400-chars", "a" * 400), ("shell", "$(id);`id`"),
                          ("empty", ""))],
    ("jobs-show-unknown-id", ("jobs", "show", "20990101T000000Z-health-000000"), {}, None, ("not found",)),
    ("migrate-rollback-dotdot", ("migrate", "rollback", "../../x"), {}, None, ("not a migration", "migrate status")),
    ("migrate-rollback-unknown", ("migrate", "rollback", "20990101000000"), {}, None, ("not a migration",)),
    # table names: --tables and TABLES_ONLY (and a NUL through .env)
    *[(f"tables-{name}", ("restore", BACKUP, "--tables", value), {}, None, ("holds no table", "it holds:"))
      for name, value in (("quote", 'services"'), ("quote2", "services'--"), ("semicolon", "services;drop table x"),
                          ("lookalike", LOOKALIKE))],
    *[(f"tables-only-{name}", ("restore", BACKUP), {"TABLES_ONLY": value}, None, ("holds no table", "it holds:"))
      for name, value in (("quote", 'services"'), ("semicolon", "services; drop table services"),
                          ("lookalike", LOOKALIKE))],
    ("tables-only-nul-in-env-file", ("restore", BACKUP), {}, b"TABLES_ONLY=serv\x00ices\n",
     ("holds no table", "\\x00")),
    # counts
    *[(f"testdata-count-{name}", ("testdata", "generate", *value), {}, None, ("COUNT",))
      for name, value in (("text", ("abc",)), ("negative", ("--", "-5")), ("zero", ("0",)),
                          ("huge", ("99999999999",)))],
    # click reads a bare negative number as an unknown option: still exit 2, one line pointing at --help
    ("testdata-count-bare-negative", ("testdata", "generate", "-5"), {}, None, ("'-5'", "--help")),
    *[(f"test-data-count-{value}", ("testdata", "generate"), {"TEST_DATA_COUNT": value}, None, ("TEST_DATA_COUNT",))
      for value in ("abc", "-1", "0")],
    *[(f"chunk-rows-flag-{value}", ("backup", "--chunk-rows", value), {}, None, ("--chunk-rows",))
      for value in ("abc", "-1", "0")],
    *[(f"chunk-rows-var-{value}", ("backup",), {"CHUNK_ROWS": value}, None, ("CHUNK_ROWS",))
      for value in ("0", "abc", "-5")],
    *[(f"retention-days-var-{value}", ("backup", "cleanup"), {"RETENTION_DAYS": value}, None, ("RETENTION_DAYS",))
      for value in ("abc", "-1", "0")],
    *[(f"retention-days-flag-{cmd}-{value}", (cmd, *sub, "--retention-days", value), {}, None, ("--retention-days",))
      for value in ("abc", "-1") for cmd, *sub in (("backup", "cleanup"), ("maintenance",))],
    ("init-test-data-negative", ("init", "--test-data", "-1"), {}, None, ("'-1'", "--help")),
    ("init-test-data-text", ("init", "--test-data", "abc"), {}, None, ("--test-data",)),
    ("dynamo-segments-zero", ("backup",), {"DYNAMO_SEGMENTS": "0"}, None, ("DYNAMO_SEGMENTS",)),
    # a MIGRATIONS_PATH that does not exist
    *[(f"migrations-path-{'-'.join(args)}", args, {"MIGRATIONS_PATH": "/nonexistent/migrations"}, None,
       ("MIGRATIONS_PATH", "/nonexistent/migrations"))
      for args in (("migrate",), ("migrate", "status"), ("migrate", "rollback"), ("migrate", "create", "x"),
                   ("init",))],
    # a .env with garbage, read by commands that would change things
    *[(f"env-file-{name}-{args[0]}", args, {}, content, (".env", "line 2"))
      for name, content in (("binary", b"DRY_RUN=false\n\xff\xfe\x00garbage\n"),
                            ("not-a-setting", b"DRY_RUN=false\nrm -rf / # not a setting\n"))
      for args in (("backup",), ("testdata", "generate", "3"), ("restore", BACKUP), ("migrate", "rollback", "base"))],
    ("env-file-nul-in-prefix", ("backup",), {}, b"BACKUP_PREFIX=back\x00ups\n", ("BACKUP_PREFIX",)),
    ("env-file-bad-value", ("backup",), {}, b"ENCRYPTION_ENABLED=perhaps\n", ("ENCRYPTION_ENABLED", "true or false")),
    # missing required settings
    ("backup-without-a-key", ("backup",), {"BACKUP_ENCRYPTION_KEY": "", "ENCRYPTION_ENABLED": "true"}, None,
     ("BACKUP_ENCRYPTION_KEY", "BACKUP_KMS_KEY_ID")),
    *[(f"postgres-secret-arn-unknown-{args[0]}", args,
       {"POSTGRES_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:no-such-secret"}, None,
       ("POSTGRES_SECRET_ARN", "ResourceNotFoundException")) for args in (("restore", BACKUP), ("migrate", "status"))],
    ("backup-kms-key-unknown", ("backup",), {"BACKUP_KMS_KEY_ID": "alias/no-such-key"}, None,
     ("BACKUP_KMS_KEY_ID", "alias/no-such-key")),
    ("init-without-a-key", ("init",), {"BACKUP_ENCRYPTION_KEY": "", "ENCRYPTION_ENABLED": "true"}, None,
     ("BACKUP_ENCRYPTION_KEY", "BACKUP_KMS_KEY_ID")),
]


@pytest.fixture(scope="module")
def baseline(migrated: Any, backup_id: str) -> str:  # noqa: F811 - the imported fixture
    make_data(migrated)
    return backup_id


def run_case(args: tuple[str, ...], env: dict[str, str], dotenv: bytes | None, tmp_path: Path
             ) -> subprocess.CompletedProcess:
    if dotenv is None:
        return run_cli(*args, env=env)
    (tmp_path / ".env").write_bytes(dotenv)  # read from the working folder, as a user's would be
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=120)


GROUPS = {  # fault -> the case ids' prefixes
    "ids": ("backup-", "restore-", "jobs-show-", "migrate-rollback-"),
    "table-names": ("tables-",),
    "counts": ("testdata-count-", "test-data-count-", "chunk-rows-", "retention-days-", "init-test-data-",
               "dynamo-segments-"),
    "migrations-path": ("migrations-path-",),
    "env-file": ("env-file-",),
    "missing-settings": ("backup-without-a-key", "postgres-secret-arn-", "init-without-a-key", "backup-kms-key-"),
}


def group_of(case_id: str) -> str:
    return next(g for g, prefixes in reversed(GROUPS.items()) if case_id.startswith(prefixes))


def check(case_id: str, args: tuple[str, ...], env: dict[str, str], words: tuple[str, ...],
          proc: subprocess.CompletedProcess) -> None:
    line = one_line_exit_2(proc, *words)
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stdout
    if LOOKALIKE in "".join(args) + "".join(env.values()):  # the look-alike is shown as what it is
        assert LOOKALIKE not in line and "\\u0435" in line, line


@pytest.mark.parametrize("group", list(GROUPS))
def test_hostile_input_exits_2_with_one_line_and_changes_nothing(migrated: Any, baseline: str, tmp_path: Path,
                                                                  group: str) -> None:
    """Every case of the group (see CASES), run side by side; one snapshot before and after all of them (a
    change by one case would show: no case undoes another's)."""
    cases = [(c[0], tuple(baseline if a == BACKUP else a for a in c[1]), *c[2:]) for c in CASES
             if group_of(c[0]) == group]
    assert cases
    before = snapshot(migrated)

    def one(case: tuple[Any, ...]) -> subprocess.CompletedProcess:
        folder = tmp_path / case[0]
        folder.mkdir()
        return run_case(case[1], case[2], case[3], folder)

    with ThreadPoolExecutor(3) as pool:
        procs = list(pool.map(one, cases))
    failures = []
    for (case_id, args, env, _, words), proc in zip(cases, procs, strict=True):
        try:
            check(case_id, args, env, words, proc)
        except AssertionError as err:
            failures.append(f"{case_id}: {err}")
    assert changes(before, snapshot(migrated)) == {}
    assert failures == [], "\n".join(failures)
