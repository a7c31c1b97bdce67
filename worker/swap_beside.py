"""`restore --tables X --target-table NEW`: the built replacement of X becomes the new table NEW beside the live
X, instead of being swapped in (worker/swap.py). In the caller's transaction:

NEW must still not exist (checked again here, under the transaction); the replacement is renamed NEW, its
marker comment removed (so no clean-up ever drops it), the constraints and indexes `build` made under
temporary names, and the statistics objects LIKE copied, are named after NEW (`X_pkey` -> `NEW_pkey`; a
name taken gets a number), and an identity sequence is named after NEW and moved past the restored ids.
No foreign keys, triggers, policies or grants: NEW is a plain copy of the backup's rows with X's columns,
keys, checks and indexes. The live X is not touched.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from worker.errors import JobFailed
from worker.swap_replacement import NAMEDATALEN, replacement, temp_name


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("select to_regclass(format('public.%%I', %s::text)) is not null", (name,)).fetchone()[0]


def _clip(text: str, nbytes: int) -> str:
    return text.encode()[:max(nbytes, 0)].decode(errors="ignore")


def new_name(conn: psycopg.Connection, old: str, table: str, new: str) -> str:
    """`old` (a name of X's) for NEW: X's prefix replaced by NEW's, else NEW_ in front; at most 63 bytes and
    free as a relation name (indexes share that namespace)."""
    base = new + old[len(table):] if old.startswith(table) else f"{new}_{old}"
    name, i = _clip(base, NAMEDATALEN), 1
    while _exists(conn, name):
        tail = f"_{i}"
        name, i = _clip(base, NAMEDATALEN - len(tail)) + tail, i + 1
    return name


def _free_statistics(conn: psycopg.Connection, old: str, table: str, new: str) -> str:
    base = _clip(new + old[len(table):] if old.startswith(table) else f"{new}_{old}", NAMEDATALEN)
    name, i = base, 1
    while conn.execute("select 1 from pg_statistic_ext where stxname = %s and stxnamespace = "
                       "'public'::regnamespace", (name,)).fetchone():
        name, i = _clip(base, NAMEDATALEN - len(f"_{i}")) + f"_{i}", i + 1
    return name


def beside(conn: psycopg.Connection, cat: dict[str, Any], new: str, tag: str) -> None:
    """Rename the built replacement of cat["table"] to `new` (see the module's docstring)."""
    table, built = cat["table"], replacement(cat["table"], tag)
    conn.execute("select pg_advisory_xact_lock(hashtext('worktask:target-table'), hashtext(%s))", (new,))
    if _exists(conn, new):
        raise JobFailed(f"table {new} exists already (created after the restore was checked): nothing was "
                           f"renamed; drop it or pick another --target-table, and run the restore again")
    t = sql.Identifier(new)
    conn.execute(sql.SQL("alter table {} rename to {}").format(sql.Identifier(built), t))
    conn.execute(sql.SQL("comment on table {} is null").format(t))
    for i, (name, kind, *_rest) in enumerate(cat["constraints"]):
        # a key's index takes the constraint's name with it
        target = new_name(conn, name, table, new) if kind in ("p", "u", "x") else \
            _clip(new + name[len(table):] if name.startswith(table) else f"{new}_{name}", NAMEDATALEN)
        conn.execute(sql.SQL("alter table {} rename constraint {} to {}").format(
            t, sql.Identifier(temp_name(table, tag, "c", i)), sql.Identifier(target)))
    for i, (name, *_rest) in enumerate(cat["indexes"]):
        conn.execute(sql.SQL("alter index {} rename to {}").format(
            sql.Identifier(temp_name(table, tag, "i", i)), sql.Identifier(new_name(conn, name, table, new))))
    # PostgreSQL 18 keeps NOT NULL as named constraints (`X_col_not_null`), copied by LIKE: named after NEW too
    for (name,) in conn.execute("""select conname from pg_constraint where contype = 'n'
                                   and conrelid = format('public.%%I', %s::text)::regclass""", (new,)).fetchall():
        if name.startswith(f"{table}_") and not name.startswith(f"{new}_"):
            conn.execute(sql.SQL("alter table {} rename constraint {} to {}").format(
                t, sql.Identifier(name), sql.Identifier(_clip(new + name[len(table):], NAMEDATALEN))))
    stats = [r[0] for r in conn.execute("""select stxname from pg_statistic_ext
                                            where stxrelid = format('public.%%I', %s::text)::regclass
                                            order by oid""", (new,))]
    if len(stats) == len(cat["statistics"]):  # copied by LIKE, named after the replacement
        for current, (name, *_rest) in zip(stats, cat["statistics"]):
            conn.execute(sql.SQL("alter statistics {} rename to {}").format(
                sql.Identifier(current), sql.Identifier(_free_statistics(conn, name, table, new))))
    identity = conn.execute("""
        select a.attname, s.relname from pg_depend d join pg_class s on s.oid = d.objid and s.relkind = 'S'
        join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
        where d.classid = 'pg_class'::regclass and d.refobjid = format('public.%%I', %s::text)::regclass
          and d.deptype = 'i'""", (new,)).fetchall()
    for column, seq in identity:
        name = new_name(conn, f"{table}_{column}_seq", table, new)
        conn.execute(sql.SQL("alter sequence {} rename to {}").format(sql.Identifier(seq), sql.Identifier(name)))
        top = conn.execute(sql.SQL("select max({}) from {}").format(sql.Identifier(column), t)).fetchone()[0]
        if top:
            conn.execute("select setval(format('public.%%I', %s::text)::regclass, %s, true)", (name, top))
