"""Object-store faults (issue 14), on the S3 store (moto's server): the bucket going away, access denied by IAM,
and an endpoint that fails in the middle of a multipart upload. Each fails the backup clearly (the chunk
named), writes no manifest, lists nothing complete and leaves no multipart upload open."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from conftest import ROOT, cli_json, free_port, own_worker, run_cli
from test_backup import make_data
from worker import commands, jobs, snapshot
from worker.connections import aws_client, pg_connect, redis_client

pytestmark = [pytest.mark.fault]


# helpers ---------------------------------------------------------------------------------------------------------

def stack_env(settings: Any) -> dict[str, str]:
    """The environment a process of this session runs with, the stack's values (moto's URL, its credentials,
    the result backend) included, so that a process with WORKTASK_IGNORE_STACK can be pointed elsewhere."""
    data = json.loads((settings.worktask_state_dir / "stack.json").read_text())
    return {**os.environ, **data.get("env", {}), "WORKTASK_IGNORE_STACK": "1"}


def no_complete_backup(settings: Any, bucket: str, backup_id: str, env: dict[str, str] | None = None) -> None:
    """What a user checks after a failed backup: no manifest in the store, nothing of it listed complete,
    and `backup validate` refuses it."""
    s3 = aws_client(settings, "s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"backups/{backup_id}/").get("Contents", [])]
    assert not [k for k in keys if k.endswith("/manifest.json")], keys
    env = {"S3_BUCKET_NAME": bucket, **(env or {})}
    code, listed = cli_json("backup", "list", env=env)
    assert code == 0, listed
    assert [b["state"] for b in listed if b["backup_id"] == backup_id] in ([], ["failed"]), listed
    assert not [b for b in listed if b["state"] == "complete"], listed
    proc = run_cli("backup", "validate", backup_id, env=env)
    assert proc.returncode == 2 and "not found" in proc.stderr and "no manifest" in proc.stderr, proc.stderr


# the bucket goes ------------------------------------------------------------------------------------------------

def test_a_bucket_deleted_mid_backup_fails_it_naming_the_chunk_and_leaves_no_complete_backup(migrated: Any) -> None:
    make_data(migrated)
    name = f"worktask-gone-{time.time_ns()}"
    s3 = aws_client(migrated, "s3")
    s3.create_bucket(Bucket=name)
    s = migrated.model_copy(update={"s3_bucket_name": name, "backup_rate_limit": 0})
    job_id = commands.backup(s, True, True, 1000)  # the CLI's check passes: the bucket exists
    deadline = time.monotonic() + 30
    while True:  # then it goes; chunks written already go with it
        objects = [{"Key": o["Key"]} for o in s3.list_objects_v2(Bucket=name).get("Contents", [])]
        if objects:
            s3.delete_objects(Bucket=name, Delete={"Objects": objects})
        try:
            s3.delete_bucket(Bucket=name)
            break
        except ClientError as err:
            assert err.response["Error"]["Code"] == "BucketNotEmpty" and time.monotonic() < deadline, err
    report = jobs.wait(redis_client(migrated), job_id, timeout=180)
    assert report["state"] == "failed" and not report["ok"], report
    assert report["error"].startswith("worktask.backup.dump_") and " table=" in report["error"], report["error"]
    assert "chunk=" in report["error"] and f"bucket {name} does not exist" in report["error"], report["error"]
    assert "S3_BUCKET_NAME" in report["error"], report["error"]
    # the snapshot is let go: no lease of the job in Redis, its holder's session gone from the database (the call
    # that ends the job lets go right after it: a waiter can wake in between, so give it a few seconds)
    r = redis_client(migrated)

    def held() -> list[Any]:
        with pg_connect(migrated, autocommit=True) as pg:
            sessions = pg.execute("select pid from pg_stat_activity where application_name = %s",
                                  (f"worktask-snapshot {job_id}"[:63],)).fetchall()
        return [k for k in r.scan_iter(match=jobs.SNAPSHOT_LEASES) if job_id in k] + sessions
    deadline = time.monotonic() + 15
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held() == [] and job_id not in snapshot.running_backups(r), held()
    # what the operator sees next: one line naming the bucket and the fix, exit 2
    proc = run_cli("backup", "list", env={"S3_BUCKET_NAME": name})
    assert proc.returncode == 2 and f"bucket {name} does not exist" in proc.stderr, proc.stderr
    assert "S3_BUCKET_NAME" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    s3.create_bucket(Bucket=name)  # made again (empty): the failed backup is nowhere complete
    try:
        no_complete_backup(migrated, name, job_id)
        assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    finally:
        s3.delete_bucket(Bucket=name)


# access denied ----------------------------------------------------------------------------------------------------

@pytest.fixture()
def iam_moto(settings: Any) -> Iterator[dict[str, Any]]:
    """A moto server of the test's own that enforces IAM (moto's /moto-api/reset-auth): a bucket, and a user
    allowed everything but s3:PutObject on it (which also covers multipart uploads). The session's moto
    does not enforce IAM, and moto does not enforce bucket policies at all (getmoto/moto#5820)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(settings.worktask_state_dir / "iam-moto.log", "ab")
    env = {k: v for k, v in os.environ.items() if k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.3)
        admin = settings.model_copy(update={"aws_endpoint_url": url})
        bucket = "worktask-denied"
        aws_client(admin, "s3").create_bucket(Bucket=bucket)
        iam = aws_client(admin, "iam")
        iam.create_user(UserName="backup-writer")
        iam.put_user_policy(UserName="backup-writer", PolicyName="no-writes", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
        key = iam.create_access_key(UserName="backup-writer")["AccessKey"]
        creds = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})  # else read as an empty form
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["status"] == "ok"  # IAM from now on
        yield {"url": url, "bucket": bucket, "creds": creds}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_access_denied_by_iam_fails_the_backup_naming_the_chunk_and_the_cause(migrated: Any,
                                                                               iam_moto: dict[str, Any]) -> None:
    make_data(migrated)
    env = {**stack_env(migrated), **iam_moto["creds"], "AWS_ENDPOINT_URL": iam_moto["url"],
           "S3_BUCKET_NAME": iam_moto["bucket"]}
    with own_worker(migrated, "denied", env):
        proc = subprocess.run([sys.executable, "-m", "worker.cli", "backup", "--skip-dynamodb", "--chunk-rows",
                               "1000", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["state"] == "failed", (proc.returncode, report, proc.stderr[-2000:])
    error = report["error"]
    assert error.startswith("worktask.backup.dump_chunk table=") and "chunk=" in error, error
    assert "AccessDenied" in error and f"s3://{iam_moto['bucket']}/" in error, error
    assert "credentials" in error and "bucket policy" in error, error
    # nothing of it is complete, as the same user sees it (listing is allowed)
    code, listed = cli_json("backup", "list", env=env)
    assert code == 0 and not [b for b in listed if b["state"] == "complete"], listed
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "backup", "validate", report["job_id"]], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr, proc.stderr


# an endpoint that fails mid-upload -------------------------------------------------------------------------------

class FlakyProxy(socketserver.ThreadingTCPServer):
    """A TCP proxy in front of moto, one request per connection (it asks for `Connection: close`), that resets
    every S3 UploadPart request once `allow_parts` of them went through; everything else passes, unless
    `down_after`: then every request after the first reset is reset too (the endpoint is gone)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], allow_parts: int, down_after: bool = False):
        self.upstream, self.allow_parts, self.down_after = upstream, allow_parts, down_after
        self.parts = self.reset = 0
        self.seen: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: FlakyProxy = self.server  # type: ignore[assignment]
        client = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return
            head += data
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        request_line = lines[0].decode("latin-1")
        with server.lock:
            server.seen.append(request_line)
            is_part = request_line.startswith("PUT ") and "partNumber=" in request_line
            if is_part:
                server.parts += 1
            cut = (is_part or (server.down_after and server.reset > 0)) and server.parts > server.allow_parts
            if cut:
                server.reset += 1
        if cut:  # RST, no response: the connection dies mid-request
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            return
        kept = [ln for ln in lines[1:] if not ln.lower().startswith((b"connection:", b"keep-alive:"))]
        upstream = socket.create_connection(server.upstream, timeout=60)
        upstream.sendall(b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n" + rest)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        up = threading.Thread(target=pump, args=(client, upstream), daemon=True)
        up.start()
        pump(upstream, client)
        up.join(timeout=60)
        upstream.close()


@pytest.fixture()
def blob_table(migrated: Any) -> Iterator[str]:
    """A table of ~12 MB of text: with compression off, its one chunk is uploaded in 8 MiB parts (multipart)."""
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("create table fault_blob (id int primary key, body text)")
        pg.execute("insert into fault_blob select g, repeat(md5(g::text), 1000) from generate_series(1, 400) g")
    try:
        yield "fault_blob"
    finally:
        with pg_connect(migrated, autocommit=True) as pg:
            pg.execute("drop table if exists fault_blob")


def test_an_endpoint_failing_mid_multipart_upload_fails_the_backup_and_aborts_the_upload(
        migrated: Any, blob_table: str) -> None:
    make_data(migrated)
    bucket = f"worktask-flaky-{time.time_ns()}"
    aws_client(migrated, "s3").create_bucket(Bucket=bucket)
    env = stack_env(migrated)
    moto = env["AWS_ENDPOINT_URL"].rsplit(":", 1)
    proxy = FlakyProxy((moto[0].split("//")[1], int(moto[1])), allow_parts=1)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    s3 = aws_client(migrated, "s3")
    try:
        worker_env = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}"}
        with own_worker(migrated, "flaky", worker_env):
            # the CLI itself talks to moto directly: only the workers' uploads go through the proxy
            code, report = cli_json("backup", "--skip-dynamodb", "--no-compress", "--chunk-rows", "100000",
                                    env={"S3_BUCKET_NAME": bucket}, timeout=300)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy.parts > 1 and proxy.reset >= 1, (proxy.parts, proxy.reset)  # multipart, and cut mid-upload
    assert code == 1 and report["state"] == "failed", report
    error = report["error"]
    assert error.startswith(f"worktask.backup.dump_chunk table={blob_table} chunk=0: "), error
    assert "Connection" in error or "endpoint" in error, error
    no_complete_backup(migrated, bucket, report["job_id"])
    open_uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"backups/{report['job_id']}/")
    assert open_uploads.get("Uploads", []) == [], open_uploads["Uploads"]
    assert any(line.startswith("DELETE ") and "uploadId=" in line for line in proxy.seen), proxy.seen  # aborted


def test_an_upload_left_open_by_a_lost_endpoint_is_aborted_by_cleanup_and_a_running_backups_is_kept(
        migrated: Any, blob_table: str) -> None:
    """The endpoint goes away whole after the first part: the upload cannot be aborted then (nor by a worker
    killed mid-object). `backup cleanup` aborts what backups whose job ended left open, never a running one's."""
    from worker import jobs
    from worker.connections import redis_client

    make_data(migrated)
    bucket = f"worktask-lost-{time.time_ns()}"
    s3 = aws_client(migrated, "s3")
    s3.create_bucket(Bucket=bucket)
    env = stack_env(migrated)
    moto = env["AWS_ENDPOINT_URL"].rsplit(":", 1)
    proxy = FlakyProxy((moto[0].split("//")[1], int(moto[1])), allow_parts=1, down_after=True)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        worker_env = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}"}
        with own_worker(migrated, "lost", worker_env):
            code, report = cli_json("backup", "--skip-dynamodb", "--no-compress", "--chunk-rows", "100000",
                                    env={"S3_BUCKET_NAME": bucket}, timeout=300)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert code == 1 and report["state"] == "failed", report
    # the endpoint is gone for every chunk then: whichever failed first is named
    assert report["error"].startswith("worktask.backup.dump_") and " chunk=" in report["error"], report["error"]
    left = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"backups/{report['job_id']}/").get("Uploads", [])
    assert left, "the lost endpoint left no upload open: the fault did not happen"
    # a backup still running has an upload open too: its job is live, its upload must survive
    r = redis_client(migrated)
    running = jobs.create(r, "backup", {"prefix": "backups"})
    jobs.start(r, running, 1)
    live = s3.create_multipart_upload(Bucket=bucket, Key=f"backups/{running}/postgres/services/0.x.chunk")
    try:
        code, dry = cli_json("backup", "cleanup", "--dry-run", env={"S3_BUCKET_NAME": bucket})
        assert code == 0 and dry["aborted_uploads"] == [u["Key"] for u in left], dry
        code, done = cli_json("backup", "cleanup", env={"S3_BUCKET_NAME": bucket})
        assert code == 0 and done["aborted_uploads"] == [u["Key"] for u in left], done
        after = s3.list_multipart_uploads(Bucket=bucket, Prefix="backups/").get("Uploads", [])
        assert [u["UploadId"] for u in after] == [live["UploadId"]], after
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key=f"backups/{running}/postgres/services/0.x.chunk",
                                  UploadId=live["UploadId"])
        jobs.finish(r, running, {"job_id": running, "kind": "backup", "state": "failed", "ok": False})
