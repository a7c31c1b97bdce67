"""How a fix runs, so that it can be undone and never races the application (the kinds: worker/fixes.py).

Inside the validation unit's own PostgreSQL transaction, each fix (in a savepoint, lock_timeout FIX_LOCK_TIMEOUT):
  1. locks its row (FOR UPDATE, found by the ctid the check saw, and only if it is still the same row — its key —
     and its finding still holds: re-checked in the same statement), and everything a delete would take with it:
     the ON DELETE CASCADE rows, recursively, and the rows ON DELETE SET NULL / SET DEFAULT would change;
  2. leaves it alone (`pending`, with why) when anything it touches is young, or first seen too recently, or when
     a restore of the live database is running (worker/fix_gate.py), or when a row is locked by another session;
  3. keeps each row's whole text (t::text) before the change, and after it for updates;
  4. makes the change.
Before the fixes commit — every BATCH_ROWS rows kept, and at the end of the unit — what they kept goes to the
quarantine (worker/quarantine.py) in one object; if that write fails, the transaction rolls back and nothing
was changed. DynamoDB: worker/fix_dynamo.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from worker import quarantine, rowhash
from worker.errors import FixPending, JobFailed
from worker.fix_gate import STAMPS, Gate

BATCH_ROWS = 500  # rows kept per quarantine object and fixing transaction: locks are not held for a whole unit
FIX_LOCK_TIMEOUT = "2s"  # a row another session holds is left for a later run, not waited on


@dataclass
class Outcome:
    state: str  # fixed | pending | skipped
    note: str | None = None


@dataclass
class Fixer:
    """One validation unit's fixing: what it may apply (gate), and what it changed (for the quarantine)."""

    settings: Any
    redis: Any
    job_id: str
    options: dict[str, Any]
    unit: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    kept: int = 0  # rows and items kept in this unit's quarantine objects
    gate: Gate = field(init=False)
    _info: dict[str, dict[str, Any]] = field(default_factory=dict)
    _touched: list[dict[str, Any]] = field(default_factory=list)
    _lock_timeout: str | None = None

    def __post_init__(self) -> None:
        self.gate = Gate(self.redis, self.options)

    # PostgreSQL --------------------------------------------------------------------------------------------

    def info(self, conn: psycopg.Connection, table: str) -> dict[str, Any]:
        if table not in self._info:
            rows = conn.execute("""
                select a.attname::text, coalesce(a.attnum = any(i.indkey), false)
                from pg_attribute a left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
                where a.attrelid = quote_ident(%s)::regclass and a.attnum > 0 and not a.attisdropped
                order by a.attnum""", (table,)).fetchall()
            cols = [r[0] for r in rows]
            self._info[table] = {"columns": cols, "key": [r[0] for r in rows if r[1]] or cols,
                                 "stamps": [c for c in STAMPS if c in cols]}
        return self._info[table]

    def _lock(self, conn: psycopg.Connection, table: str, where: sql.Composable, params: Sequence[Any],
              evidence: sql.Composable | None = None) -> list[dict[str, Any]]:
        """Lock and read the rows `where` selects (alias t): ctid, whole text, xmin, key, and age in seconds (or
        None): since the row's timestamps or `evidence` (a timestamptz of the rows the finding rests on)."""
        info = self.info(conn, table)
        keys = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in info["key"])
        stamps = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in info["stamps"]] + (
            [sql.SQL("({})").format(evidence)] if evidence is not None else [])
        age = (sql.SQL("extract(epoch from clock_timestamp() - greatest({}))::float8").format(
            sql.SQL(", ").join(stamps)) if stamps else sql.SQL("null::float8"))
        query = sql.SQL("select t.ctid::text, t::text, t.xmin::text, {}, {} from only {} t where {} for update of t"
                        ).format(age, keys, sql.Identifier(table), where)
        rows = [{"table": table, "ctid": r[0], "text": r[1], "xmin": r[2], "age": r[3],
                 "key": dict(zip(info["key"], r[4:], strict=True))} for r in conn.execute(query, params).fetchall()]
        self._touched += rows
        return rows

    def _cascade(self, conn: psycopg.Connection, table: str, ctids: list[str], seen: set[tuple[str, str]]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What deleting these rows of `table` deletes (cascades) and changes (set null/default), locked."""
        deletes: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for child, cols, ref_cols, action, name in referencing(conn, table):
            match = sql.SQL("({}) in (select {} from only {} p where p.ctid = any(%s::tid[]))").format(
                sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols),
                sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in ref_cols),
                sql.Identifier(table))
            rows = [r for r in self._lock(conn, child, match, (ctids,)) if (child, r["ctid"]) not in seen]
            if not rows:
                continue
            for r in rows:
                self.gate.young(child, r["age"])
            seen.update((child, r["ctid"]) for r in rows)
            if action in ("a", "r"):
                raise FixPending(f"{len(rows)} {child} row(s) still reference it ({name}, no ON DELETE action): "
                                 "not deleted")
            if action == "c":
                deletes.append({"table": child, "rows": rows})
                more_deletes, more_updates = self._cascade(conn, child, [r["ctid"] for r in rows], seen)
                deletes += more_deletes
                updates += more_updates
            else:
                if self.info(conn, child)["key"] == self.info(conn, child)["columns"]:
                    raise FixPending(f"{child} has no primary key: the rows ON DELETE SET NULL changes could not be "
                                     "put back by undo; not deleted")
                updates.append({"table": child, "rows": rows})
        return deletes, updates

    def delete(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, key: dict[str, str],
               still: sql.Composable, params: Sequence[Any] = (), label: str | None = None) -> Outcome:
        """Delete the row `key` (found by the ctid the check saw) if `still` (a condition on alias t) holds, with
        what cascades from it."""
        return self._run(conn, kind, table, label or str(key),
                         lambda: self._delete(conn, kind, table, ctid, key, still, params))

    def update(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, key: dict[str, str],
               still: sql.Composable, assignments: sql.Composable, params: Sequence[Any] = (),
               label: str | None = None, evidence: sql.Composable | None = None) -> Outcome:
        """Update the row `key` (found by ctid) if `still` holds: `assignments` is the SET list; `evidence` ages
        the rows the finding rests on (alias t; a timestamptz or null)."""
        return self._run(conn, kind, table, label or str(key),
                         lambda: self._update(conn, kind, table, ctid, key, still, assignments, params, evidence))

    def _run(self, conn: psycopg.Connection, kind: str, table: str, label: str,
             change: Callable[[], list[dict[str, Any]]]) -> Outcome:
        refused = self.gate.refusal(kind)
        if refused:
            return Outcome(*refused)
        if self._lock_timeout is None:
            self._lock_timeout = conn.execute("select current_setting('lock_timeout')").fetchone()[0]
        self._touched = []
        try:
            conn.execute("select set_config('lock_timeout', %s, false)", (FIX_LOCK_TIMEOUT,))
            with conn.transaction():  # a savepoint: a fix left pending or failing leaves the others
                changes = change()
                if changes and any(t["age"] is None for t in self._touched):
                    self.gate.second_look(kind, table, label,
                                          [(t["table"], t["text"], t["xmin"]) for t in self._touched])
        except FixPending as why:
            return Outcome("pending", str(why))
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            return Outcome("pending", f"a row it touches is locked by another session (waited {FIX_LOCK_TIMEOUT}): "
                                      "left for a later run")
        finally:
            conn.execute("select set_config('lock_timeout', %s, false)", (self._lock_timeout,))
        if not changes:
            return Outcome("skipped", "no longer found as it was when fixing: changed meanwhile, not touched")
        self.changes += changes
        if sum(len(c["rows"]) for c in self.changes) >= BATCH_ROWS:
            self.commit(conn)
        return Outcome("fixed")

    def _delete(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, key: dict[str, str],
                still: sql.Composable, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = [r for r in self._lock(conn, table, sql.SQL("t.ctid = %s::tid and ({})").format(still),
                                      (ctid, *params)) if r["key"] == key]
        if not rows:
            return []
        self.gate.young(table, rows[0]["age"])
        deletes, updates = self._cascade(conn, table, [rows[0]["ctid"]], {(table, rows[0]["ctid"])})
        done = conn.execute(sql.SQL("delete from only {} t where t.ctid = %s::tid").format(sql.Identifier(table)),
                            (rows[0]["ctid"],)).rowcount
        if done != 1:
            raise FixPending(f"the delete of {table} {key} touched {done} rows, not 1: rolled back")
        out = [self._change(kind, table, "delete", rows)]
        out += [self._change(kind, d["table"], "delete", d["rows"]) for d in deletes]
        for u in updates:
            out.append(self._change(kind, u["table"], "update", u["rows"], self._after(conn, u["table"], u["rows"])))
        return out

    def _update(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, key: dict[str, str],
                still: sql.Composable, assignments: sql.Composable, params: Sequence[Any],
                evidence: sql.Composable | None) -> list[dict[str, Any]]:
        rows = [r for r in self._lock(conn, table, sql.SQL("t.ctid = %s::tid and ({})").format(still),
                                      (ctid, *params), evidence) if r["key"] == key]
        if not rows:
            return []
        self.gate.young(table, rows[0]["age"])
        done = conn.execute(sql.SQL("update only {} t set {} where t.ctid = %s::tid").format(
            sql.Identifier(table), assignments), (rows[0]["ctid"],)).rowcount
        if done != 1:
            raise FixPending(f"the update of {table} {key} touched {done} rows, not 1: rolled back")
        return [self._change(kind, table, "update", rows, self._after(conn, table, rows))]

    def _after(self, conn: psycopg.Connection, table: str, rows: list[dict[str, Any]]) -> list[str]:
        """Each row's text now (read by its key: an update moves a row's ctid)."""
        info = self.info(conn, table)
        match = sql.SQL(" and ").join(sql.SQL("t.{} = %s").format(sql.Identifier(c)) for c in info["key"])
        out = []
        for r in rows:
            found = conn.execute(sql.SQL("select t::text from only {} t where {}").format(sql.Identifier(table), match),
                                 [r["key"][c] for c in info["key"]]).fetchone()
            if found is None:
                raise FixPending(f"{table} {r['key']} could not be read back after the change: rolled back")
            out.append(found[0])
        return out

    def _change(self, kind: str, table: str, action: str, rows: list[dict[str, Any]],
                after: list[str] | None = None) -> dict[str, Any]:
        info = self._info[table]
        kept = [{"key": r["key"], "before": r["text"]} for r in rows]
        if after is not None:
            for k, a in zip(kept, after, strict=True):
                k["after"] = a
        return {"kind": kind, "store": "postgres", "table": table, "action": action, "key_columns": info["key"],
                "rows": kept}

    # the quarantine ----------------------------------------------------------------------------------------

    def keep(self, xid: str | None) -> str:
        """Write what the fixes since the last object changed, as one quarantine object; JobFailed if it cannot
        be written (the caller has not committed: nothing is changed)."""
        try:
            key = quarantine.write(self.settings, self.options, self.job_id, self.unit, self.changes, xid)
        except Exception as err:  # whatever the store says: no quarantine, no change
            raise JobFailed(f"the quarantine could not be written ({type(err).__name__}: {err}): this unit's "
                            f"{len(self.changes)} fix(es) were not made; nothing it would have changed was changed"
                            ) from None
        self.kept += sum(len(c["rows"]) for c in self.changes)
        return key

    def commit(self, conn: psycopg.Connection) -> None:
        """Quarantine what was changed since the last commit (before it), then commit."""
        if self.changes:
            self.keep(conn.execute("select pg_current_xact_id()::text").fetchone()[0])
        conn.commit()
        self.changes = []
        self.gate.forget()


def referencing(conn: psycopg.Connection, table: str) -> list[tuple[str, list[str], list[str], str, str]]:
    """Foreign keys pointing at `table`: (child table, child columns, referenced columns, on delete action, name)."""
    rows = conn.execute("""
        select (select relname::text from pg_class where oid = c.conrelid), array_agg(a.attname::text order by k.ord),
               array_agg(fa.attname::text order by k.ord), c.confdeltype::text, c.conname::text
        from pg_constraint c, unnest(c.conkey, c.confkey) with ordinality k(att, fatt, ord), pg_attribute a,
             pg_attribute fa
        where c.contype = 'f' and c.confrelid = quote_ident(%s)::regclass
          and a.attrelid = c.conrelid and a.attnum = k.att and fa.attrelid = c.confrelid and fa.attnum = k.fatt
        group by c.oid, c.conname, c.conrelid, c.confdeltype order by c.conname""", (table,)).fetchall()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def pin_session(conn: psycopg.Connection) -> None:
    """Row texts kept and compared under the same settings on every side (worker/rowhash.py)."""
    for name, value in rowhash.SESSION_SETTINGS.items():
        conn.execute("select set_config(%s, %s, false)", (name, value))
