"""Migrations on Alembic: status, upgrade, downgrade, dry-run SQL, create (DESIGN §5, §6, §11).

Each migration runs in its own transaction under a session advisory lock (two runs never apply one
migration twice) and a bounded lock_timeout (a migration never queues the application's reads behind
a long backup). After each upgrade its optional validate() runs inside that transaction; the file's
checksum is recorded in worktask_migrations so that a file changed after it was applied shows as drift.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from worker.connections import pg_connect
from worker.errors import BadInput, MigrationFailed
from worker.settings import Settings
from worker.sqltext import ident

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "migrations"
LOCK_KEY = 7_770_001  # pg advisory lock held by a running `migrate`
RECORD_TABLE = "worktask_migrations"
RECORD = ident(RECORD_TABLE)  # as SQL text (SQLAlchemy text() composes no identifiers)
RECORD_DDL = f"""
create table if not exists {RECORD} (
    version text primary key,
    name text not null,
    description text not null default '',
    checksum text not null,
    applied_at timestamptz not null default now()
)"""


def script_path(settings: Settings, override: str | Path | None = None) -> Path:
    path = Path(override or settings.migrations_path or DEFAULT_PATH).expanduser().resolve()
    if not (path / "env.py").is_file():
        raise BadInput(f"MIGRATIONS_PATH={path} is not an Alembic script directory (no env.py in it)")
    return path


def checksum(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe(script: Script) -> dict[str, str]:
    module = script.module
    return {"version": script.revision, "name": getattr(module, "name", script.doc or script.revision),
            "description": getattr(module, "description", "")}


def make_config(settings: Settings, path: Path, connection: Connection | None = None,
                output: io.StringIO | None = None) -> Config:
    cfg = Config(stdout=output or io.StringIO(), output_buffer=output)
    cfg.set_main_option("script_location", str(path))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes.update(settings=settings, connection=connection)
    return cfg


def scripts(path: Path, settings: Settings) -> ScriptDirectory:
    try:
        return ScriptDirectory.from_config(make_config(settings, path))
    except CommandError as err:
        raise BadInput(f"migrations in {path}: {err}") from None


@contextmanager
def connect(settings: Settings) -> Iterator[Connection]:
    engine = create_engine("postgresql+psycopg://", creator=lambda: pg_connect(settings), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def recorded(conn: Connection) -> dict[str, dict[str, Any]]:
    exists = conn.execute(text("select to_regclass(:t)"), {"t": RECORD_TABLE}).scalar()
    if not exists:
        return {}
    rows = conn.execute(text(f"select version, checksum, applied_at from {RECORD}")).mappings()
    return {r["version"]: dict(r) for r in rows}


def current(settings: Settings) -> str | None:
    """The database's migration revision (None: base)."""
    with connect(settings) as conn:
        rev = current_revision(conn)
        conn.rollback()
    return rev


def status(settings: Settings, path: Path) -> dict[str, Any]:
    script = scripts(path, settings)
    ordered = list(reversed(list(script.walk_revisions())))  # base -> head
    with connect(settings) as conn:
        current = current_revision(conn)
        rec = recorded(conn)
        conn.rollback()
    try:
        applied_ids = {s.revision for s in script.iterate_revisions(current, "base")} if current else set()
    except CommandError:
        raise BadInput(f"the database is at migration {current}, which {path} does not have: "
                       "use the migrations it was migrated with (MIGRATIONS_PATH)") from None
    applied, pending, drift = [], [], []
    for s in ordered:
        info = describe(s)
        if s.revision in applied_ids:
            at = rec.get(s.revision, {}).get("applied_at")
            applied.append({**info, "applied_at": at.isoformat() if at else None})
            if s.revision in rec and rec[s.revision]["checksum"] != checksum(s.path):
                drift.append(s.revision)
        else:
            pending.append(info)
    return {"current": current, "head": script.get_current_head(), "applied": applied, "pending": pending,
            "drift": drift}


def blockers(conn: psycopg.Connection) -> str:
    """Who holds locks that a migration may wait on: sessions with open transactions, oldest first."""
    rows = conn.execute(
        """select a.pid, coalesce(a.application_name, ''), a.state, a.xact_start, left(a.query, 80)
           from pg_stat_activity a
           where a.datname = current_database() and a.pid <> pg_backend_pid() and a.xact_start is not null
             and exists (select 1 from pg_locks l where l.pid = a.pid and l.granted and l.locktype = 'relation')
           order by a.xact_start limit 3""").fetchall()
    if not rows:
        return "no session holds a relation lock now"
    return "; ".join(f"pid {pid} ({app or 'no application_name'}, {state}, transaction since "
                     f"{start:%H:%M:%S}): {query!r}" for pid, app, state, start, query in rows)


def lock_holder(settings: Settings) -> str:
    with pg_connect(settings, autocommit=True) as conn:
        row = conn.execute(
            """select a.pid, coalesce(a.application_name, ''), a.client_addr, a.backend_start
               from pg_locks l join pg_stat_activity a using (pid)
               where l.locktype = 'advisory' and l.objid = %s and l.granted limit 1""", (LOCK_KEY,)).fetchone()
    if not row:
        return "unknown (released meanwhile)"
    pid, app, addr, since = row
    return f"pid {pid} ({app or 'no application_name'} from {addr or 'local socket'}, since {since:%Y-%m-%d %H:%M:%S})"


def _prepare(conn: Connection, settings: Settings, lock_wait: float, lock_timeout_s: float) -> None:
    """Take the advisory lock (bounded wait), set lock_timeout, create the record table; then commit."""
    deadline = time.monotonic() + lock_wait
    while not conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
        conn.rollback()
        if time.monotonic() >= deadline:
            raise MigrationFailed(f"another migrate holds the migration lock after {lock_wait:.0f} s: "
                                  f"{lock_holder(settings)}")
        time.sleep(0.5)
    conn.execute(text("select set_config('lock_timeout', :v, false)"), {"v": f"{int(lock_timeout_s * 1000)}ms"})
    conn.execute(text("set application_name = 'worktask-migrate'"))
    conn.execute(text(RECORD_DDL))
    conn.commit()


def on_version_apply(ctx: MigrationContext, step: Any, heads: set, run_args: dict) -> None:
    """Inside the migration's own transaction: validate(), then record (or forget) its checksum."""
    conn = ctx.connection
    if step.is_upgrade:
        script = step.revision_map.get_revision(step.up_revision_id)
        validate: Callable[[], bool] | None = getattr(script.module, "validate", None)
        if validate is not None:
            try:
                ok = validate()
            except Exception as err:  # noqa: BLE001 - any failure rolls the migration back
                raise MigrationFailed(f"migration {script.revision} ({describe(script)['name']}): "
                                      f"validate() raised {type(err).__name__}: {err}") from err
            if ok is not True:
                raise MigrationFailed(f"migration {script.revision} ({describe(script)['name']}): "
                                      f"validate() returned {ok!r}; rolled back")
        info = describe(script)
        conn.execute(text(f"""insert into {RECORD} (version, name, description, checksum)
                              values (:version, :name, :description, :checksum)
                              on conflict (version) do update set checksum = excluded.checksum,
                              applied_at = now(), name = excluded.name, description = excluded.description"""),
                     {**info, "checksum": checksum(script.path)})
    else:  # a downgrade step: up_revision_id is the migration being removed
        conn.execute(text(f"delete from {RECORD} where version = :v"), {"v": step.up_revision_id})
    if ctx.config.attributes.get("on_step"):
        ctx.config.attributes["on_step"](step.up_revision_id)


def _run(settings: Settings, path: Path, action: Callable[[Config], None], lock_wait: float,
         lock_timeout_s: float, on_step: Callable[[str], None] | None, sequence: list[dict[str, str]]) -> list[str]:
    """Run an Alembic command under the lock; `sequence` is the migrations it will run, in order,
    so that a failure can name the one that failed."""
    with connect(settings) as conn:
        _prepare(conn, settings, lock_wait, lock_timeout_s)
        cfg = make_config(settings, path, connection=conn)
        steps: list[str] = []
        cfg.attributes.update(on_version_apply=on_version_apply,
                              on_step=lambda v: (steps.append(v), on_step and on_step(v)))

        def failing() -> str:
            if len(steps) < len(sequence):
                m = sequence[len(steps)]
                return f"migration {m['version']} ({m['name']})"
            return "a migration"
        try:
            action(cfg)
        except MigrationFailed:
            raise
        except DBAPIError as err:
            orig = err.orig
            if isinstance(orig, psycopg.errors.LockNotAvailable):
                with pg_connect(settings, autocommit=True) as probe:
                    who = blockers(probe)
                raise MigrationFailed(f"{failing()} waited longer than lock_timeout ({lock_timeout_s:g} s) for a "
                                      f"lock and was rolled back; blocked by {who}") from None
            reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
            raise MigrationFailed(f"{failing()} failed and was rolled back: {reason}") from None
        except CommandError as err:
            raise BadInput(f"alembic: {err}") from None
        except Exception as err:
            raise MigrationFailed(f"{failing()} failed and was rolled back: {type(err).__name__}: {err}") from err
        finally:
            conn.rollback()
            conn.execute(text("select pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            conn.commit()
        return steps


def upgrade(settings: Settings, path: Path, target: str = "head", lock_wait: float = 60,
            lock_timeout_s: float = 5, on_step: Callable[[str], None] | None = None) -> list[str]:
    """Apply pending migrations up to `target`; the versions applied, in order."""
    pending = status(settings, path)["pending"]
    return _run(settings, path, lambda cfg: command.upgrade(cfg, target), lock_wait, lock_timeout_s, on_step,
                pending)


def ensure(settings: Settings, path: Path) -> list[str]:
    """Run ensure(settings) of every applied migration that has one: state outside PostgreSQL that can
    vanish on its own (a DynamoDB table on a restarted moto) is put back. Returns what each one did."""
    script = scripts(path, settings)
    with connect(settings) as conn:
        current = current_revision(conn)
        conn.rollback()
    done = []
    for s in script.iterate_revisions(current, "base") if current else []:
        fn = getattr(s.module, "ensure", None)
        if fn is not None:
            what = fn(settings)
            if what:
                done.append(f"{s.revision}: {what}")
    return done


def downgrade(settings: Settings, path: Path, target: str = "-1", lock_wait: float = 60,
              lock_timeout_s: float = 5, on_step: Callable[[str], None] | None = None) -> list[str]:
    """Roll back down to `target` (a version stays applied; `base` removes all; `-1` one step)."""
    before = status(settings, path)
    if not before["current"]:
        return []
    if target not in ("base", "-1") and target not in {a["version"] for a in before["applied"]}:
        raise BadInput(f"version {target!r} is not applied; applied: "
                       f"{', '.join(a['version'] for a in before['applied']) or 'none'}")
    return _run(settings, path, lambda cfg: command.downgrade(cfg, target), lock_wait, lock_timeout_s, on_step,
                list(reversed(before["applied"])))


def dry_run_sql(settings: Settings, path: Path, direction: str = "upgrade", target: str = "head") -> str:
    """The SQL that would run from the database's real current revision (Alembic's offline mode)."""
    with connect(settings) as conn:
        current = current_revision(conn)
        conn.rollback()
    out = io.StringIO()
    cfg = make_config(settings, path, output=out)
    try:
        if direction == "upgrade":
            if current == scripts(path, settings).get_current_head():
                return ""
            command.upgrade(cfg, f"{current}:{target}" if current else target, sql=True)
        else:
            if not current:
                return ""
            if target == "-1":
                target = scripts(path, settings).get_revision(current).down_revision or "base"
            command.downgrade(cfg, f"{current}:{target}", sql=True)
    except CommandError as err:
        raise BadInput(f"alembic: {err}") from None
    return out.getvalue()


NAME_RE = re.compile(r"[a-z0-9_]{1,60}")


def slug(name: str) -> str:
    """A migration name is a slug: it becomes a file name and a docstring, never code."""
    if not NAME_RE.fullmatch(name):
        raise BadInput(f"migration name {name!r} must be 1-60 characters of [a-z0-9_]; "
                       "e.g. worktask migrate create add_task_labels \"labels on work tasks\"")
    return name


def _check_imports(path: Path) -> None:
    """The new file must import (Alembic loads it on every status and migrate); removed if it does not."""
    try:
        spec = importlib.util.spec_from_file_location(f"_worktask_new_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as err:  # noqa: BLE001 - whatever it is, the file must not stay
        path.unlink(missing_ok=True)
        raise BadInput(f"the new migration did not import ({type(err).__name__}: {err}); nothing was written") from None


def create(settings: Settings, path: Path, name: str, description: str = "") -> Path:
    """Write versions/<YYYYMMDDHHMMSS>_<slug>.py whose revision id is that timestamp."""
    script = scripts(path, settings)
    rev = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    while rev in {s.revision for s in script.walk_revisions()}:
        time.sleep(1)
        rev = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    name_slug = slug(name)
    if len(description) > 500 or any(ord(c) < 32 and c not in "\t" for c in description):
        raise BadInput("a migration description is one line of at most 500 characters")
    try:
        with redirect_stdout(io.StringIO()):  # alembic prints "Generating …"; the CLI prints the path
            made = script.generate_revision(rev, name_slug, head="head", refresh=True,
                                            migration_name=name, migration_description=description)
    except CommandError as err:
        raise BadInput(f"alembic: {err}") from None
    assert made is not None
    _check_imports(Path(made.path))
    return Path(made.path)

