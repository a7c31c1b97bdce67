"""Fault suite, commit points: a worker process killed after its PostgreSQL transaction committed and before
it told Redis so (the work's marker), the narrowest window of a task. Its redelivery must recognise its own
committed work: a test-data chunk makes its rows once, a restore's finalize that swapped reports succeeded.

The window is held still from the outside: the test's own worker talks to a service through a proxy that
passes everything but the request the window ends with (the marker's SET in Redis, or the chunk's first
DynamoDB write after its commit), which it never forwards. The process that sent it waits for an answer;
the test finds it by the proxy's connection (/proc/net/tcp -> its socket -> the process), checks that the
work committed, lets later requests through and kills the process (SIGKILL).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import cli_json, own_worker, process_of_connection, run_job
from test_backup import backup, manifest_of
from test_fault_store import stack_env
from test_fault_workers import counts, nothing_left_and_the_next_restore_is_exact, running
from test_restore import dressed, hashes, scramble  # noqa: F401 - `dressed` is a fixture
from test_testdata import clean  # noqa: F401 - a fixture: no test data before
from worker import backups, commands, jobs
from worker.connections import aws_client, redis_client

pytestmark = [pytest.mark.fault, pytest.mark.slow]

WAIT = 300  # bound of every job wait (the machine is shared and loaded)


class HoldingProxy:
    """A TCP proxy in front of `upstream` that passes every byte, but a client's request that matches `pattern`
    until `release()`: that request is never forwarded and its connection gets no answer (held until its client
    goes away). `peer` is the address of the first client held."""

    def __init__(self, upstream: tuple[str, int], pattern: bytes):
        self.upstream, self.pattern = upstream, re.compile(pattern, re.IGNORECASE)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = threading.Event()
        self.peer: tuple[str, int] | None = None
        self._armed, self._lock = True, threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def release(self) -> None:
        self._armed = False

    def _take(self, client: socket.socket) -> bool:
        with self._lock:
            if not self._armed:
                return False
            if self.peer is None:
                self.peer = client.getpeername()
        self.held.set()
        return True

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""  # a request may come in two reads
        try:
            while data := src.recv(65536):
                if from_client and self._armed:
                    seen = tail + data
                    if self.pattern.search(seen) and self._take(src):
                        while src.recv(65536):  # held: nothing of it reaches the service, no answer
                            pass
                        return
                    tail = seen[-1024:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()


def held_process(proxy: HoldingProxy, what: str) -> int:
    assert proxy.held.wait(WAIT), f"{what} never came"
    assert proxy.peer is not None
    return process_of_connection(proxy.peer[1], proxy.port)


def through(url: str, port: int) -> str:
    """The URL with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


def marker_set(name: str) -> bytes:
    """The RESP of `SET <job key>:marker:<name> …` (jobs.mark), not the GET of jobs.marked."""
    return rb"SET\r\n\$\d+\r\n[^\r]*:marker:" + name.encode() + rb"\r\n"


# testdata generate --------------------------------------------------------------------------------------------

def made_items(settings: Any) -> int:
    pages = aws_client(settings, "dynamodb").get_paginator("scan").paginate(
        TableName=settings.dynamo_table_name, FilterExpression="is_test = :t",
        ExpressionAttributeValues={":t": {"BOOL": True}}, Select="COUNT", ConsistentRead=True)
    return sum(p["Count"] for p in pages)


def made_files(settings: Any) -> int:
    return sum(1 for _ in backups.store_for(settings, backups.store_options(settings)).list("test-data/"))


def test_a_testdata_chunk_killed_after_its_commit_makes_each_row_item_and_file_once(clean: Any) -> None:  # noqa: F811
    """The chunk commits its rows, then writes their DynamoDB items and files, then marks itself done in
    Redis. Its process is killed right after the commit (its first BatchWriteItem held); the redelivered chunk
    finds the rows committed, makes none again and writes the items and files; it is killed too, right before
    its marker (the SET held); the third delivery does the same and marks. Each row, item and file once."""
    from worker.app import app

    env = stack_env(clean)
    r = redis_client(clean)
    before = (counts(clean), made_items(clean), made_files(clean))
    items = HoldingProxy(host_port(env["AWS_ENDPOINT_URL"]), rb"x-amz-target: *dynamodb_\d+\.batchwriteitem")
    marker = HoldingProxy(host_port(clean.result_backend), marker_set(r"generated:\d+"))
    try:
        with items, marker:
            env["AWS_ENDPOINT_URL"] = through(env["AWS_ENDPOINT_URL"], items.port)
            env["CELERY_RESULT_BACKEND"] = through(clean.result_backend, marker.port)
            with own_worker(clean, "commitpoint", env):
                job_id = commands.testdata(clean, "generate", 60, None)
                pid = held_process(items, "the chunk's first DynamoDB write after its commit")
                victim = running(app, "worktask.testdata.generate_chunk", time.monotonic() + 30, host="commitpoint-",
                                 accept=lambda t: t["worker_pid"] == pid)
                committed = counts(clean)
                assert committed["work_tasks"] - before[0]["work_tasks"] == 60, "the chunk had not committed"
                assert made_items(clean) == before[1]
                items.release()  # what it held stays held; a redelivery's writes pass
                os.kill(pid, signal.SIGKILL)
                pid = held_process(marker, "the redelivered chunk's marker")
                running(app, "worktask.testdata.generate_chunk", time.monotonic() + 30, host="commitpoint-",
                        accept=lambda t: t["worker_pid"] == pid and t["id"] == victim["id"])
                assert counts(clean) == committed and made_items(clean) - before[1] == 60  # items, no rows again
                marker.release()
                os.kill(pid, signal.SIGKILL)
                report = jobs.wait(r, job_id, timeout=WAIT)
        assert report["ok"] and report["tasks"] == 60, report
        assert jobs.deliveries(r, job_id)[victim["id"]] >= 3
        after = counts(clean)
        assert {t: after[t] - before[0][t] for t in after} == {
            "work_tasks": report["tasks"], "todo_items": report["todos"], "deliverables": report["deliverables"],
            "quality_checks": report["quality_checks"]}
        assert after == committed  # the redeliveries added no row
        assert made_items(clean) - before[1] == report["analysis_items"] == report["tasks"]
        assert made_files(clean) - before[2] == report["files"] == report["deliverables"]
    finally:
        cleaned = run_job(clean, lambda: commands.testdata(clean, "cleanup"), WAIT)
        assert cleaned["ok"], cleaned
    assert (counts(clean), made_items(clean), made_files(clean)) == before
    code, again = cli_json("testdata", "generate", "10", "--no-files", timeout=WAIT)  # the next run
    assert code == 0 and again["tasks"] == 10, again
    assert run_job(clean, lambda: commands.testdata(clean, "cleanup"), WAIT)["ok"]
    assert counts(clean) == before[0]


# restore finalize ---------------------------------------------------------------------------------------------

def test_a_restore_whose_finalize_is_killed_after_the_swap_committed_succeeds_exactly(
        dressed: Any) -> None:  # noqa: F811
    """The finalize commits the swap, then marks it done in Redis. Its process is killed in between (the
    marker's SET held): the live tables hold the backup's rows already; the redelivered finalize recognises
    its own swap and ends the job succeeded, with the report of an undisturbed run."""
    from worker.app import app

    done = backup(dressed)
    assert done["ok"], done
    manifest = manifest_of(dressed, done["backup_id"])
    before = hashes(dressed)
    scramble(dressed)
    r = redis_client(dressed)
    env = stack_env(dressed)
    with HoldingProxy(host_port(dressed.result_backend), marker_set("swapped")) as proxy:
        env["CELERY_RESULT_BACKEND"] = through(dressed.result_backend, proxy.port)
        with own_worker(dressed, "commitpoint", env):
            job_id = commands.restore(dressed, done["backup_id"], [], True, False, False)
            pid = held_process(proxy, "the finalize's marker of its swap")
            victim = running(app, "worktask.restore.finalize", time.monotonic() + 30, host="commitpoint-",
                             accept=lambda t: t["worker_pid"] == pid)
            # the swap committed: the live PostgreSQL tables hold the backup's rows (DynamoDB's extras are
            # deleted after the marker)
            assert {k: v for k, v in hashes(dressed).items() if k != "dynamodb"} == \
                {k: v for k, v in before.items() if k != "dynamodb"}
            proxy.release()  # what it held stays held; the redelivery's marker passes
            os.kill(pid, signal.SIGKILL)
            report = jobs.wait(r, job_id, timeout=WAIT)
    assert report["state"] == "succeeded" and report["ok"] and report["skipped"] == [], report.get("error")
    assert jobs.deliveries(r, job_id)[victim["id"]] >= 2
    assert {t["name"]: (t["store"], t["rows"], t["chunks"]) for t in report["tables"]} == {
        t["name"]: (t["store"], t["rows"], len(t["chunks"])) for t in manifest["tables"]}
    assert report["totals"]["rows"] == sum(t["rows"] for t in manifest["tables"])
    assert hashes(dressed) == before
    nothing_left_and_the_next_restore_is_exact(dressed, job_id, done["backup_id"], before)
