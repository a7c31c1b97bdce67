"""How a fix runs, so that it can be undone and never races the application (the kinds: worker/fixes.py).
Inside the validation unit's own PostgreSQL transaction, each fix (in a savepoint):
  1. locks its row (FOR UPDATE, by the ctid the check saw) only if the finding still holds (re-checked in the
     same statement), and everything that would cascade from a delete (ON DELETE CASCADE rows, recursively,
     and the rows ON DELETE SET NULL / SET DEFAULT would change);
  2. leaves it alone (`pending`) when any of those rows changed less than FIX_MIN_AGE_MINUTES ago (created_at /
     updated_at), or, for a finding without such columns, when it was first seen less than that long ago (the
     second look: kept in Redis, the fix happens on a later run);
  3. keeps each row's whole text (t::text) before the change, and after it for updates;
  4. makes the change.
Before the unit commits, everything kept goes to the quarantine (worker/quarantine.py) in one object; if that
write fails, the transaction rolls back and nothing was changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from worker import quarantine, rowhash
from worker.dynamo import to_export
from worker.errors import FixPending as Pending
from worker.errors import JobFailed

SEEN_KEY = "worktask:fix:first-seen"  # hash: "kind|table|key" -> epoch seconds of the first look
SEEN_TTL_S = 45 * 86400


@dataclass
class Outcome:
    state: str  # fixed | pending | skipped
    note: str | None = None


@dataclass
class Fixer:
    """One validation unit's fixing: which kinds it may apply, and what it changed (for the quarantine)."""

    settings: Any
    redis: Any
    job_id: str
    options: dict[str, Any]
    unit: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    _info: dict[str, dict[str, Any]] = field(default_factory=dict)
    _seen: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return list(self.options.get("fix_kinds") or [])

    @property
    def min_age_s(self) -> float:
        return float(self.options.get("fix_min_age_minutes", 60)) * 60

    def allows(self, kind: str) -> Outcome | None:
        """None when the kind may be applied; else the skip to report."""
        if kind in self.kinds:
            return None
        return Outcome("skipped", f"fix kind {kind} not applied (this run's kinds: {', '.join(self.kinds) or 'none'})")

    # the second look ---------------------------------------------------------------------------------------

    def second_look(self, kind: str, table: str, key: str) -> None:
        """Pending unless this finding was first seen at least FIX_MIN_AGE_MINUTES ago."""
        if self.min_age_s <= 0:
            return
        field_ = f"{kind}|{table}|{key}"
        now = time.time()
        self.redis.hsetnx(SEEN_KEY, field_, f"{now:.0f}")
        self.redis.expire(SEEN_KEY, SEEN_TTL_S)
        first = float(self.redis.hget(SEEN_KEY, field_) or now)
        if now - first >= self.min_age_s:
            self._seen.append(field_)
            return
        due = datetime.fromtimestamp(first + self.min_age_s, UTC)
        raise Pending(f"first seen {minutes(now - first)} ago, no timestamp to age it by: fixed by a run after "
                      f"{due:%Y-%m-%d %H:%M} UTC (FIX_MIN_AGE_MINUTES={self.options.get('fix_min_age_minutes')})")

    def young(self, table: str, age_s: float | None) -> None:
        if age_s is not None and age_s < self.min_age_s:
            raise Pending(f"a {table} row involved changed {minutes(age_s)} ago (FIX_MIN_AGE_MINUTES="
                          f"{self.options.get('fix_min_age_minutes')}): left for a later run")

    def forget(self) -> None:
        """The fixed findings' first looks are no longer needed."""
        if self._seen:
            self.redis.hdel(SEEN_KEY, *self._seen)

    # PostgreSQL --------------------------------------------------------------------------------------------

    def info(self, conn: psycopg.Connection, table: str) -> dict[str, Any]:
        if table not in self._info:
            rows = conn.execute("""
                select a.attname::text, a.attgenerated <> '', coalesce(a.attnum = any(i.indkey), false)
                from pg_attribute a left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
                where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped order by a.attnum""",
                                (table,)).fetchall()
            cols = [r[0] for r in rows]
            self._info[table] = {"columns": cols, "key": [r[0] for r in rows if r[2]] or cols,
                                 "stamps": [c for c in ("created_at", "updated_at") if c in cols]}
        return self._info[table]

    def _lock(self, conn: psycopg.Connection, table: str, where: sql.Composable, params: Sequence[Any],
              evidence: sql.Composable | None = None) -> list[dict[str, Any]]:
        """Lock and read the rows `where` selects (alias t): ctid, whole text, key, and age in seconds (or None):
        since the row's created_at/updated_at or `evidence` (a timestamptz of the rows the finding rests on)."""
        info = self.info(conn, table)
        keys = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in info["key"])
        stamps = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in info["stamps"]] + (
            [sql.SQL("({})").format(evidence)] if evidence is not None else [])
        age = (sql.SQL("extract(epoch from clock_timestamp() - greatest({}))::float8").format(
            sql.SQL(", ").join(stamps)) if stamps else sql.SQL("null::float8"))
        query = sql.SQL("select t.ctid::text, t::text, {}, {} from only {} t where {} for update of t").format(
            age, keys, sql.Identifier(table), where)
        return [{"ctid": r[0], "text": r[1], "age": r[2], "key": dict(zip(info["key"], r[3:], strict=True))}
                for r in conn.execute(query, params).fetchall()]

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
                self.young(child, r["age"])
            if action in ("a", "r"):
                raise Pending(f"{len(rows)} {child} row(s) still reference it ({name}, no ON DELETE action): not "
                              "deleted")
            if action == "c":
                seen.update((child, r["ctid"]) for r in rows)
                deletes.append({"table": child, "rows": rows})
                more_deletes, more_updates = self._cascade(conn, child, [r["ctid"] for r in rows], seen)
                deletes += more_deletes
                updates += more_updates
            else:
                if self.info(conn, child)["key"] == self.info(conn, child)["columns"]:
                    raise Pending(f"{child} has no primary key: the rows ON DELETE SET NULL changes could not be "
                                  "put back by undo; not deleted")
                updates.append({"table": child, "rows": rows})
        return deletes, updates

    def delete(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, still: sql.Composable,
               params: Sequence[Any] = (), finding_key: str | None = None) -> Outcome:
        """Delete one row (by the ctid the check saw) if `still` (a condition on alias t) holds, with its cascade."""
        return self._run(conn, kind, table, finding_key, lambda: self._delete(conn, kind, table, ctid, still, params))

    def update(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, still: sql.Composable,
               assignments: sql.Composable, params: Sequence[Any] = (), finding_key: str | None = None,
               evidence: sql.Composable | None = None) -> Outcome:
        """Update one row (by ctid) if `still` holds: `assignments` is the SET list; `evidence` ages the rows the
        finding rests on (alias t; a timestamptz or null)."""
        return self._run(conn, kind, table, finding_key,
                         lambda: self._update(conn, kind, table, ctid, still, assignments, params, evidence))

    def _run(self, conn: psycopg.Connection, kind: str, table: str, finding_key: str | None,
             change: Callable[[], list[dict[str, Any]]]) -> Outcome:
        skip = self.allows(kind)
        if skip:
            return skip
        try:
            with conn.transaction():  # a savepoint: a fix left pending or failing leaves the others
                changes = change()
                if not self.info(conn, table)["stamps"] and finding_key is not None:
                    self.second_look(kind, table, finding_key)
        except Pending as why:
            return Outcome("pending", str(why))
        self.changes += changes
        return Outcome("fixed") if changes else Outcome("skipped", "no longer found when fixing: changed meanwhile")

    def _delete(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, still: sql.Composable,
                params: Sequence[Any]) -> list[dict[str, Any]]:
        where = sql.SQL("t.ctid = %s::tid and ({})").format(still)
        rows = self._lock(conn, table, where, (ctid, *params))
        if not rows:
            return []
        for r in rows:
            self.young(table, r["age"])
        deletes, updates = self._cascade(conn, table, [ctid], {(table, ctid)})
        conn.execute(sql.SQL("delete from only {} t where t.ctid = %s::tid").format(sql.Identifier(table)), (ctid,))
        out = [self._change(kind, table, "delete", rows)]
        out += [self._change(kind, d["table"], "delete", d["rows"]) for d in deletes]
        for u in updates:
            out.append(self._change(kind, u["table"], "update", u["rows"], self._after(conn, u["table"], u["rows"])))
        return out

    def _update(self, conn: psycopg.Connection, kind: str, table: str, ctid: str, still: sql.Composable,
                assignments: sql.Composable, params: Sequence[Any], evidence: sql.Composable | None
                ) -> list[dict[str, Any]]:
        rows = self._lock(conn, table, sql.SQL("t.ctid = %s::tid and ({})").format(still), (ctid, *params), evidence)
        if not rows:
            return []
        self.young(table, rows[0]["age"])
        conn.execute(sql.SQL("update only {} t set {} where t.ctid = %s::tid").format(sql.Identifier(table),
                                                                                       assignments), (ctid,))
        return [self._change(kind, table, "update", rows, self._after(conn, table, rows))]

    def _after(self, conn: psycopg.Connection, table: str, rows: list[dict[str, Any]]) -> list[str]:
        """Each row's text now (read by its key: an update moves a row's ctid)."""
        info = self.info(conn, table)
        match = sql.SQL(" and ").join(sql.SQL("t.{} = %s").format(sql.Identifier(c)) for c in info["key"])
        out = []
        for r in rows:
            found = conn.execute(sql.SQL("select t::text from only {} t where {}").format(sql.Identifier(table), match),
                                 [r["key"][c] for c in info["key"]]).fetchone()
            out.append(found[0] if found else None)
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

    def keep(self, xid: str | None) -> str:
        try:
            return quarantine.write(self.settings, self.options, self.job_id, self.unit, self.changes, xid)
        except Exception as err:  # whatever the store says: no quarantine, no change
            raise JobFailed(f"the quarantine could not be written ({type(err).__name__}: {err}): this unit's "
                            f"{len(self.changes)} fix(es) were not made; nothing it would have changed was changed"
                            ) from None

    def commit(self, conn: psycopg.Connection) -> str | None:
        """Quarantine what this unit changed (before the commit), then commit; the quarantine object's key."""
        key = None
        if self.changes:
            xid = conn.execute("select pg_current_xact_id()::text").fetchone()[0]
            key = self.keep(xid)
        conn.commit()
        self.forget()
        return key


    # DynamoDB ----------------------------------------------------------------------------------------------

    def delete_items(self, client: Any, table: str, candidates: list[tuple[int, str, dict[str, Any]]],
                     still_missing: Callable[[list[int]], set[int]]) -> dict[str, Outcome]:
        """Delete TASK# items whose work task is missing: each read again (consistent), aged (its created_at /
        updated_at, else the second look), kept in the quarantine, then `still_missing` asks PostgreSQL again
        just before the deletes, and each delete is conditional on the item being as kept."""
        skip = self.allows("dynamo_orphans")
        if skip:
            return {key: skip for _, key, _ in candidates}
        out: dict[str, Outcome] = {}
        chosen = []
        for task_id, key, raw in candidates:
            item = client.get_item(TableName=table, Key={"PK": raw["PK"], "SK": raw["SK"]},
                                   ConsistentRead=True).get("Item")
            if item is None:
                out[key] = Outcome("skipped", "no longer found when fixing: deleted meanwhile")
                continue
            try:
                age = item_age(item)
                if age is None:
                    self.second_look("dynamo_orphans", table, key)
                else:
                    self.young(table, age)
            except Pending as why:
                out[key] = Outcome("pending", str(why))
                continue
            chosen.append((task_id, key, item))
        if not chosen:
            return out
        self.changes.append({"kind": "dynamo_orphans", "store": "dynamodb", "table": table, "action": "delete",
                             "rows": [{"key": to_export({"PK": i["PK"], "SK": i["SK"]}), "before": to_export(i)}
                                      for _, _, i in chosen]})
        self.keep(None)
        missing = still_missing([t for t, _, _ in chosen])
        for task_id, key, item in chosen:
            if task_id not in missing:
                out[key] = Outcome("skipped", f"work task {task_id} exists now (committed after the scan): not deleted")
                continue
            names, values, conds = {}, {}, ["attribute_exists(PK)"]
            for n, (attr, value) in enumerate(sorted(item.items())):
                if set(value) & {"S", "N", "B", "BOOL"}:
                    names[f"#a{n}"], values[f":v{n}"] = attr, value
                    conds.append(f"#a{n} = :v{n}")
            try:
                client.delete_item(TableName=table, Key={"PK": item["PK"], "SK": item["SK"]},
                                   ConditionExpression=" AND ".join(conds), ExpressionAttributeNames=names,
                                   ExpressionAttributeValues=values)
            except client.exceptions.ConditionalCheckFailedException:
                out[key] = Outcome("pending", "the item changed since it was read: left for a later run")
                continue
            out[key] = Outcome("fixed")
        self.forget()
        return out


def item_age(item: dict[str, Any]) -> float | None:
    """Seconds since the item's created_at / updated_at (ISO 8601 text or epoch seconds), the newest; None without."""
    stamps = []
    for name in ("created_at", "updated_at"):
        value = item.get(name, {})
        try:
            if "N" in value:
                stamps.append(float(value["N"]) / (1000 if float(value["N"]) > 1e11 else 1))
            elif "S" in value:
                stamp = datetime.fromisoformat(value["S"].replace("Z", "+00:00"))
                stamps.append((stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp())
        except ValueError:
            continue
    return time.time() - max(stamps) if stamps else None


def referencing(conn: psycopg.Connection, table: str) -> list[tuple[str, list[str], list[str], str, str]]:
    """Foreign keys pointing at `table`: (child table, child columns, referenced columns, on delete action, name)."""
    rows = conn.execute("""
        select c.conrelid::regclass::text, array_agg(a.attname::text order by k.ord),
               array_agg(fa.attname::text order by k.ord), c.confdeltype::text, c.conname::text
        from pg_constraint c, unnest(c.conkey, c.confkey) with ordinality k(att, fatt, ord), pg_attribute a,
             pg_attribute fa
        where c.contype = 'f' and c.confrelid = %s::regclass
          and a.attrelid = c.conrelid and a.attnum = k.att and fa.attrelid = c.confrelid and fa.attnum = k.fatt
        group by c.oid, c.conname, c.conrelid, c.confdeltype order by c.conname""", (table,)).fetchall()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def pin_session(conn: psycopg.Connection) -> None:
    """Row texts kept and compared under the same settings on every side (worker/rowhash.py)."""
    for name, value in rowhash.SESSION_SETTINGS.items():
        conn.execute("select set_config(%s, %s, false)", (name, value))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
