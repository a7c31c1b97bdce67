"""The replacement table of a restore by swap (worker/swap.py): its name and marker, its creation beside the
live table, the fix-up of generated columns after the load, its keys, checks and indexes (`build`), and the
clean-up of replacements left behind (`drop_replacements`). Moved from worker/swap.py unchanged.

Replacement tables are named `<table prefix>__restore_<tag>_<hash of the full name>` (<= 63 bytes, no
two tables alike) and marked by their comment, `worktask:restore:<tag>:<table>` (MARKER): clean-up
drops only marked tables, the backup planning leaves them out, and the swap sets the comment back to
the live table's.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
from psycopg import sql

from worker.sqltext import ident
from worker.swap_catalog import generated_columns, table_oid

SUFFIX = "__restore"
MARKER = "worktask:restore:"  # the comment of every replacement table: MARKER + "<tag>:<table>"
LOCK_TIMEOUT = "30s"
NAMEDATALEN = 63


def _short(table: str) -> str:
    return hashlib.sha256(table.encode()).hexdigest()[:8]


def _clip(text: str, nbytes: int) -> str:
    return text.encode()[:max(nbytes, 0)].decode(errors="ignore")


def replacement(table: str, tag: str) -> str:
    """`<table prefix>__restore_<tag>_<8 hex of sha256(table)>`, at most 63 bytes: two tables never share one."""
    tail = f"{SUFFIX}_{_clip(tag, 16)}_{_short(table)}"
    return _clip(table, NAMEDATALEN - len(tail.encode())) + tail


def temp_name(table: str, tag: str, kind: str, i: int | str = "") -> str:
    """Temporary names of what is built on a replacement (constraints, indexes), unique per table and restore."""
    return f"wt_{_clip(tag, 16)}_{_short(table)}_{kind}{i}"


def marker(tag: str, table: str) -> str:
    return f"{MARKER}{tag}:{table}"


def ledger(tag: str) -> str:
    """The restore's ledger: one row per chunk whose load committed, written in the load's own transaction,
    so a chunk delivered twice is loaded once, and the swap's row (`claim_swap`). Marked as a replacement of no
    table (dropped with them, when the job ends)."""
    return f"worktask_restore_loads_{_clip(tag, 16)}"


def create_ledger(conn: psycopg.Connection, tag: str) -> str:
    name = sql.Identifier(ledger(tag))
    with conn.transaction():  # never seen unmarked (see _create)
        conn.execute(sql.SQL("drop table if exists {}").format(name))
        conn.execute(sql.SQL("create table {} (tbl text not null, n int not null, rows bigint not null, "
                             "primary key (tbl, n))").format(name))
        conn.execute(sql.SQL("comment on table {} is {}").format(name, sql.Literal(marker(tag, ""))))
    return ledger(tag)


def claim_swap(conn: psycopg.Connection, tag: str) -> bool:
    """The swap's own row in the restore's ledger (table '', chunk -1), written first in the swap's transaction
    and so committed with it: True when this transaction is to swap; False when a swap of this restore has
    committed already (a finalize delivered again after its process died between that commit and the Redis
    marker: the live tables hold the restored rows, there is nothing to swap). A finalize delivered twice at
    once waits here for the other one's transaction, as a chunk's second load does (bounded by the caller's
    lock_timeout)."""
    return conn.execute(sql.SQL("insert into {} (tbl, n, rows) values ('', -1, 0) on conflict do nothing "
                                "returning true").format(sql.Identifier(ledger(tag)))).fetchone() is not None


def qi(conn: psycopg.Connection, name: str) -> str:
    """An identifier as SQL text (sqltext.ident; `conn` is not used). Kept for tasks/restore.py."""
    return ident(name)


def _printed(conn: psycopg.Connection, name: str) -> str:
    """A name as PostgreSQL prints it in pg_get_*def() (quote_ident: quoted only where needed), to match that
    text; the server's own answer, as its keyword list decides the quoting."""
    return conn.execute("select quote_ident(%s)", (name,)).fetchone()[0]


# replacement, build ------------------------------------------------------------------------------------------

def create_replacement(conn: psycopg.Connection, table: str, tag: str, plain_generated: bool = False) -> str:
    """A bare table with the live one's columns, defaults, identity, generated columns, statistics objects,
    persistence and tablespace; no index, no constraint but NOT NULL; marked as this restore's.

    `plain_generated`: the backup holds values of generated columns (made before they were left out); they
    load into plain columns and `build` recomputes them."""
    drop_replacements(conn, tag, [table])
    return _create(conn, table, tag, plain_generated)


def _create(conn: psycopg.Connection, table: str, tag: str, plain_generated: bool) -> str:
    new = replacement(table, tag)
    cat = conn.execute("""select relpersistence, ts.spcname from pg_class c left join pg_tablespace ts
                          on ts.oid = c.reltablespace where c.oid = %s""", (table_oid(conn, table),)).fetchone()
    # one transaction: the table is never seen without its mark (a backup starting meanwhile lists the tables
    # and would take an unmarked replacement for one of the application's and back it up)
    with conn.transaction():
        conn.execute(sql.SQL("create {}table {} (like {} including all {}excluding indexes "
                             "excluding constraints){}").format(
            sql.SQL("unlogged " if cat[0] == "u" else ""), sql.Identifier(new), sql.Identifier(table),
            sql.SQL("excluding generated " if plain_generated else ""),
            sql.SQL(" tablespace {}").format(sql.Identifier(cat[1])) if cat[1] else sql.SQL("")))
        conn.execute(sql.SQL("comment on table {} is {}").format(sql.Identifier(new),
                                                                sql.Literal(marker(tag, table))))
    return new



def recompute_generated(conn: psycopg.Connection, table: str, tag: str) -> None:
    """A replacement loaded with generated columns as plain ones becomes one that computes them (a copy)."""
    new = replacement(table, tag)
    staging = temp_name(table, tag, "g")
    conn.execute(sql.SQL("alter table {} rename to {}").format(sql.Identifier(new), sql.Identifier(staging)))
    _create(conn, table, tag, False)
    generated = set(generated_columns(conn, table))
    cols = sql.SQL(", ").join(sql.Identifier(r[0]) for r in conn.execute(
        """select attname from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped
           order by attnum""", (table_oid(conn, table),)) if r[0] not in generated)
    conn.execute(sql.SQL("insert into {} ({}) overriding system value select {} from {}").format(
        sql.Identifier(new), cols, cols, sql.Identifier(staging)))
    conn.execute(sql.SQL("drop table {}").format(sql.Identifier(staging)))


def _retarget(definition: str, old: str, new: str, conn: psycopg.Connection) -> str:
    """An index definition of `old` rewritten for `new` (only the ON clause)."""
    pattern = re.compile(r" ON (ONLY )?public\." + re.escape(_printed(conn, old)) + " ")
    out, n = pattern.subn(lambda m: f" ON {m.group(1) or ''}public.{ident(new)} ", definition, count=1)
    if n != 1:
        raise RuntimeError(f"cannot retarget index definition of {old}: {definition}")
    return out


def _default_tablespace(conn: psycopg.Connection, tablespace: str | None) -> None:
    conn.execute("select set_config('default_tablespace', %s, true)", (tablespace or "",))


def build(conn: psycopg.Connection, cat: dict[str, Any], tag: str) -> None:
    """Keys, unique and exclusion constraints, checks and indexes on the loaded replacement, under temporary
    names, each in the tablespace of the live one; a partition also gets a check of its bound, so that
    ATTACH PARTITION in the swap need not scan it. In the caller's transaction."""
    table, new = cat["table"], replacement(cat["table"], tag)
    for i, (_name, _kind, definition, tablespace, *_comments) in enumerate(cat["constraints"]):
        _default_tablespace(conn, tablespace)
        conn.execute(sql.SQL("alter table {} add constraint {} {}").format(
            sql.Identifier(new), sql.Identifier(temp_name(table, tag, "c", i)), sql.SQL(definition)))
    for i, (_name, definition, tablespace, _comment) in enumerate(cat["indexes"]):
        _default_tablespace(conn, tablespace)
        head, rest = definition.split(" ON ", 1)
        created = head.rsplit(" ", 1)[0] + " " + ident(temp_name(table, tag, "i", i)) + " ON " + rest
        conn.execute(_retarget(created, table, new, conn))
    _default_tablespace(conn, None)
    if cat["partition_check"]:
        conn.execute(sql.SQL("alter table {} add constraint {} check {}").format(
            sql.Identifier(new), sql.Identifier(temp_name(table, tag, "bound")), sql.SQL(cat["partition_check"])))
    conn.execute(sql.SQL("analyze {}").format(sql.Identifier(new)))


def drop_replacements(conn: psycopg.Connection, tag: str | None = None, tables: list[str] | None = None) -> list[str]:
    """Drop the replacement tables this project left (marked by their comment): of one restore (`tag`), of
    some tables, or every restore's. Never a table by its name alone."""
    rows = conn.execute("""
        select c.relname, obj_description(c.oid, 'pg_class') from pg_class c
        where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
          and left(obj_description(c.oid, 'pg_class'), length(%s)) = %s""", (MARKER, MARKER)).fetchall()
    names = []
    for name, comment in rows:
        rest = comment[len(MARKER):]
        their_tag, _, their_table = rest.partition(":")
        if (tag is None or their_tag == tag) and (tables is None or their_table in tables):
            names.append(name)
    if names:
        conn.execute("select set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
    for name in names:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))
    return names
