"""Restore by swap (DESIGN §9): a bare replacement table is loaded beside the live one, given the live
table's keys, indexes and checks after the load, then swapped in by rename in one short transaction
that carries over everything else the live table has, and re-creates every foreign key in or out
(validated before commit).

Carried over: columns, defaults, identity and serial sequences (ownership, position past the restored
ids, grants, comments), generated columns (recomputed on load, never copied), primary key, unique,
exclusion and check constraints, indexes (with their tablespace), extended statistics, triggers,
row-level security (enabled, forced, every policy), grants on the table and on its columns, owner,
comments on the table, columns, constraints, indexes, triggers and policies, storage options,
replica identity, UNLOGGED, tablespace, publication membership (column lists and row filters),
partition membership (a leaf is detached, replaced and attached again with its bound), and the views
on the table, views on those views included (dropped and re-created with their options, owner,
grants, comments, defaults and triggers). What cannot be carried over (a materialized view, a
function or another table's column or policy depending on the table, rules) is refused per table
before anything is written (`refusals`).

Three modules: worker/swap_catalog.py reads the live catalog and says what is refused; worker/swap_replacement.py
names, creates, builds and cleans up the replacement tables (MARKER); this one is the swap transaction. The
functions tasks/restore.py calls are all importable from here.

Names never reach SQL as text: identifiers go through psycopg.sql (or worker/sqltext.py, its conn-free form)
or PostgreSQL's own format('%I'); expressions and definitions come from PostgreSQL's catalog functions
(pg_get_*def, pg_get_expr) and are pasted as they print (they are SQL text already, no parameter can hold them),
always as an argument of format() (sql.SQL(text)), never into its template, where a `{}` in them (an array or
JSON literal) would be taken for a placeholder.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from worker.swap_catalog import catalog, dependants, foreign_keys, generated_columns, refusals, table_oid, view_catalog  # noqa: F401
from worker.swap_replacement import (  # noqa: F401
    LOCK_TIMEOUT,
    MARKER,
    build,
    claim_swap,
    create_ledger,
    create_replacement,
    drop_replacements,
    ledger,
    qi,
    recompute_generated,
    replacement,
    temp_name,
)

PRIVILEGE = re.compile(r"^[A-Z ]+$")
CMD = {"r": "select", "a": "insert", "w": "update", "d": "delete", "*": "all"}
REPLIDENT = {"n": "nothing", "f": "full"}


def _role(name: str | None) -> sql.Composable:
    return sql.SQL("public") if name in (None, "PUBLIC") else sql.Identifier(name)


def _privilege(text: str) -> sql.SQL:
    if not PRIVILEGE.match(text):
        raise RuntimeError(f"unexpected privilege {text!r}")
    return sql.SQL(text)


# the swap ------------------------------------------------------------------------------------------------------

def _grant(conn: psycopg.Connection, target: sql.Composable, grants: list[Any]) -> None:
    for role, privilege, grantable in grants:
        conn.execute(sql.SQL("grant {} on {} to {}" + (" with grant option" if grantable in (True, "true") else ""))
                     .format(_privilege(privilege), target, _role(role)))


def _column_grant(conn: psycopg.Connection, target: sql.Composable, grants: list[Any]) -> None:
    for column, role, privilege, grantable in grants:
        conn.execute(sql.SQL("grant {} ({}) on {} to {}" + (" with grant option" if grantable else "")).format(
            _privilege(privilege), sql.Identifier(column), target, _role(role)))


def _comment_columns(conn: psycopg.Connection, target: str, comments: list[tuple[str, str | None]]) -> None:
    for column, comment in comments:
        conn.execute(sql.SQL("comment on column {}.{} is {}").format(
            sql.Identifier(target), sql.Identifier(column), sql.Literal(comment)))


def _swap_table(conn: psycopg.Connection, cat: dict[str, Any], tag: str) -> None:
    table, new = cat["table"], replacement(cat["table"], tag)
    t = sql.Identifier(table)
    if cat["parent"]:
        conn.execute(sql.SQL("alter table {} detach partition {}").format(sql.Identifier(cat["parent"]), t))
    positions = {}
    for column, seq, deptype, _owner, _comment, _seq_oid, schema, _grants in cat["sequences"]:
        positions[column] = conn.execute(sql.SQL("select last_value, is_called from {}").format(
            sql.Identifier(schema, seq))).fetchone()
        if deptype == "a":  # serial: the replacement's default uses this very sequence; it moves over
            conn.execute(sql.SQL("alter sequence {} owned by {}.{}").format(
                sql.Identifier(schema, seq), sql.Identifier(new), sql.Identifier(column)))
    stats_new = [r[0] for r in conn.execute("select stxname from pg_statistic_ext where stxrelid = %s order by oid",
                                            (table_oid(conn, new),))]
    conn.execute(sql.SQL("drop table {}").format(t))
    conn.execute(sql.SQL("alter table {} rename to {}").format(sql.Identifier(new), t))
    for i, (name, kind, _def, _ts, comment, index_comment) in enumerate(cat["constraints"]):
        conn.execute(sql.SQL("alter table {} rename constraint {} to {}").format(
            t, sql.Identifier(temp_name(table, tag, "c", i)), sql.Identifier(name)))  # its index too
        conn.execute(sql.SQL("comment on constraint {} on {} is {}").format(
            sql.Identifier(name), t, sql.Literal(comment)))
        if kind in ("p", "u", "x"):
            conn.execute(sql.SQL("comment on index {} is {}").format(sql.Identifier(name), sql.Literal(index_comment)))
    for i, (name, _def, _ts, comment) in enumerate(cat["indexes"]):
        conn.execute(sql.SQL("alter index {} rename to {}").format(
            sql.Identifier(temp_name(table, tag, "i", i)), sql.Identifier(name)))
        conn.execute(sql.SQL("comment on index {} is {}").format(sql.Identifier(name), sql.Literal(comment)))
    if len(stats_new) == len(cat["statistics"]):
        for current, (name, owner, comment) in zip(stats_new, cat["statistics"]):
            s = sql.Identifier(name)
            if current != name:
                conn.execute(sql.SQL("alter statistics {} rename to {}").format(sql.Identifier(current), s))
            conn.execute(sql.SQL("alter statistics {} owner to {}").format(s, sql.Identifier(owner)))
            conn.execute(sql.SQL("comment on statistics {} is {}").format(s, sql.Literal(comment)))
    for column, seq, deptype, _owner, comment, seq_oid, schema, grants in cat["sequences"]:
        if deptype == "i":  # identity: the replacement has a sequence of its own; it takes the old one's place
            seq_oid, current, schema = conn.execute("""
                select s.oid, s.relname, (select nspname from pg_namespace where oid = s.relnamespace) from pg_depend d
                join pg_class s on s.oid = d.objid
                join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
                where d.classid = 'pg_class'::regclass and d.refobjid = %s and d.deptype = 'i' and s.relkind = 'S'
                  and a.attname = %s""", (table_oid(conn, table), column)).fetchone()
            conn.execute(sql.SQL("alter sequence {} rename to {}").format(
                sql.Identifier(schema, current), sql.Identifier(seq)))
            conn.execute(sql.SQL("comment on sequence {} is {}").format(
                sql.Identifier(schema, seq), sql.Literal(comment)))
            _grant(conn, sql.SQL("sequence {}").format(sql.Identifier(schema, seq)), grants)
        last, called = positions[column]
        top = conn.execute(sql.SQL("select max({}) from {}").format(sql.Identifier(column), t)).fetchone()[0]
        position = max(last if called else last - 1, top or 0)
        if position > 0:
            conn.execute("select setval(%s::oid::regclass, %s, true)", (seq_oid, position))
        else:
            conn.execute("select setval(%s::oid::regclass, 1, false)", (seq_oid,))
    if cat["parent"]:
        conn.execute(sql.SQL("alter table {} attach partition {} {}").format(
            sql.Identifier(cat["parent"]), t, sql.SQL(cat["bound"])))
        conn.execute(sql.SQL("alter table {} drop constraint {}").format(
            t, sql.Identifier(temp_name(table, tag, "bound"))))
    for _name_, definition, comment in cat["triggers"]:
        conn.execute(definition)
        conn.execute(sql.SQL("comment on trigger {} on {} is {}").format(
            sql.Identifier(_name_), t, sql.Literal(comment)))
    _grant(conn, t, cat["grants"])
    _column_grant(conn, t, cat["column_grants"])
    conn.execute(sql.SQL("alter table {} owner to {}").format(t, sql.Identifier(cat["owner"])))
    conn.execute(sql.SQL("comment on table {} is {}").format(t, sql.Literal(cat["comment"])))  # never the marker
    _comment_columns(conn, table, cat["column_comments"])
    if cat["options"]:
        conn.execute(sql.SQL("alter table {} set ({})").format(t, sql.SQL(", ".join(cat["options"]))))
    if cat["rls"]:
        conn.execute(sql.SQL("alter table {} enable row level security").format(t))
    if cat["force_rls"]:
        conn.execute(sql.SQL("alter table {} force row level security").format(t))
    if cat["replident"] == "i" and cat["replident_index"]:
        conn.execute(sql.SQL("alter table {} replica identity using index {}").format(
            t, sql.Identifier(cat["replident_index"])))
    elif cat["replident"] in REPLIDENT:
        conn.execute(sql.SQL("alter table {} replica identity " + REPLIDENT[cat["replident"]]).format(t))
    for pubname, row_filter, columns in cat["publications"]:
        conn.execute(sql.SQL("alter publication {} add table {}{}{}").format(
            sql.Identifier(pubname), t,
            sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns))) if columns else sql.SQL(""),
            sql.SQL(" where (" + row_filter + ")") if row_filter else sql.SQL("")))


def _create_policies(conn: psycopg.Connection, cat: dict[str, Any]) -> None:
    t = sql.Identifier(cat["table"])
    for name, permissive, cmd, roles, qual, check, comment in cat["policies"]:
        conn.execute(sql.SQL("create policy {} on {} as {} for {} to {}{}{}").format(
            sql.Identifier(name), t, sql.SQL("permissive" if permissive else "restrictive"), sql.SQL(CMD[cmd]),
            sql.SQL(", ").join(_role(r) for r in roles),
            sql.SQL(" using (" + qual + ")") if qual is not None else sql.SQL(""),
            sql.SQL(" with check (" + check + ")") if check is not None else sql.SQL("")))
        conn.execute(sql.SQL("comment on policy {} on {} is {}").format(sql.Identifier(name), t, sql.Literal(comment)))


def _create_view(conn: psycopg.Connection, v: dict[str, Any]) -> None:
    name = sql.Identifier(v["name"])
    conn.execute(sql.SQL("create view {}{} as {}").format(
        name, sql.SQL(" with (" + ", ".join(v["options"]) + ")") if v["options"] else sql.SQL(""),
        sql.SQL(v["definition"].rstrip().rstrip(";"))))
    for column, default in v["defaults"]:
        conn.execute(sql.SQL("alter view {} alter column {} set default {}").format(
            name, sql.Identifier(column), sql.SQL(default)))
    _grant(conn, name, v["grants"])
    _column_grant(conn, name, v["column_grants"])
    conn.execute(sql.SQL("alter view {} owner to {}").format(name, sql.Identifier(v["owner"])))
    conn.execute(sql.SQL("comment on view {} is {}").format(name, sql.Literal(v["comment"])))
    _comment_columns(conn, v["name"], v["column_comments"])
    for trigger, definition, comment in v["triggers"]:
        conn.execute(definition)
        conn.execute(sql.SQL("comment on trigger {} on {} is {}").format(sql.Identifier(trigger), name,
                                                                          sql.Literal(comment)))


def swap(conn: psycopg.Connection, cats: list[dict[str, Any]], tag: str) -> None:
    """In the caller's transaction: drop the foreign keys in and out, the views on the tables and their
    policies; swap every table (a partition is detached and attached again), rename what was built under
    temporary names, carry over the rest; re-create the policies, the views and the foreign keys (validated
    now). Anything else that depends on a table makes its DROP fail, and the whole swap with it."""
    tables = [c["table"] for c in cats]
    fks = foreign_keys(conn, tables)
    view_oids, refused = dependants(conn, tables)
    if refused:
        raise RuntimeError("; ".join(f"{t}: cannot carry over {', '.join(w)}" for t, w in refused.items()))
    views = [view_catalog(conn, oid) for oid in view_oids]
    for drop, _add in fks:
        conn.execute(drop)
    for v in reversed(views):
        conn.execute(sql.SQL("drop view {}").format(sql.Identifier(v["name"])))
    for cat in cats:  # a policy may read another restored table
        for name, *_ in cat["policies"]:
            conn.execute(sql.SQL("drop policy {} on {}").format(sql.Identifier(name), sql.Identifier(cat["table"])))
    for cat in cats:
        _swap_table(conn, cat, tag)
    for cat in cats:
        _create_policies(conn, cat)
    for v in views:
        _create_view(conn, v)
    for _drop, add in fks:
        conn.execute(add)
