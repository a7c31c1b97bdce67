"""Restore by swap (DESIGN §9): a bare replacement table is loaded beside the live one, given the live
table's keys, indexes and checks after the load, then swapped in by rename in one short transaction
that also carries over identity sequences (moved past the restored ids), triggers, grants, comments
and owner, and re-creates every foreign key in or out (validated before commit).

Names never reach SQL as text: identifiers are quoted by PostgreSQL's own quote_ident / format('%I').
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

SUFFIX = "__restore"


def replacement(table: str, tag: str) -> str:
    return f"{table[:40]}{SUFFIX}_{tag}"


def qi(conn: psycopg.Connection, name: str) -> str:
    return conn.execute("select quote_ident(%s)", (name,)).fetchone()[0]


def catalog(conn: psycopg.Connection, table: str) -> dict[str, Any]:
    """What the live table has that a replacement must get: keys, indexes, checks, foreign keys, triggers,
    identity sequences, grants, comments, owner, options."""
    oid = conn.execute("select %s::regclass::oid", (f"public.{qi(conn, table)}",)).fetchone()[0]
    constraints = conn.execute("""
        select conname, contype, pg_get_constraintdef(oid), conindid <> 0
        from pg_constraint where conrelid = %s and contype in ('p', 'u', 'x', 'c') order by conname""", (oid,)).fetchall()
    constraint_indexes = {r[0] for r in conn.execute(
        "select conindid from pg_constraint where conrelid = %s and conindid <> 0 and contype in ('p','u','x')", (oid,))}
    indexes = conn.execute("""
        select c.relname, pg_get_indexdef(i.indexrelid) from pg_index i join pg_class c on c.oid = i.indexrelid
        where i.indrelid = %s and not (i.indexrelid = any(%s)) order by c.relname""",
                           (oid, list(constraint_indexes))).fetchall()
    triggers = conn.execute("""select tgname, pg_get_triggerdef(oid) from pg_trigger
                               where tgrelid = %s and not tgisinternal order by tgname""", (oid,)).fetchall()
    identity = conn.execute("""
        select a.attname, pg_get_serial_sequence(%s, a.attname) from pg_attribute a
        where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and pg_get_serial_sequence(%s, a.attname) is not null""",
                            (f"public.{qi(conn, table)}", oid, f"public.{qi(conn, table)}")).fetchall()
    grants = conn.execute("""
        select g.grantee, g.privilege_type, g.is_grantable, coalesce(r.rolname, 'PUBLIC')
        from pg_class c, aclexplode(c.relacl) g left join pg_roles r on r.oid = g.grantee
        where c.oid = %s and g.grantee <> c.relowner""", (oid,)).fetchall()
    owner, comment, options, rls = conn.execute("""
        select pg_get_userbyid(relowner), obj_description(oid, 'pg_class'), reloptions, relrowsecurity
        from pg_class where oid = %s""", (oid,)).fetchone()
    return {"table": table, "oid": oid, "constraints": constraints, "indexes": indexes, "triggers": triggers,
            "identity": identity, "grants": grants, "owner": owner, "comment": comment, "options": options,
            "rls": rls}


def foreign_keys(conn: psycopg.Connection, tables: list[str]) -> list[tuple[str, str, str]]:
    """(table, name, definition) of every foreign key from or to one of `tables`."""
    return conn.execute("""
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint
        where contype = 'f' and (conrelid::regclass::text = any(%s) or confrelid::regclass::text = any(%s))
        order by 1, 2""", ([qi(conn, t) for t in tables], [qi(conn, t) for t in tables])).fetchall()


def create_replacement(conn: psycopg.Connection, table: str, tag: str) -> str:
    """A bare table with the live one's columns, defaults and identity: no index, no constraint but NOT NULL."""
    new = replacement(table, tag)
    conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(new)))
    conn.execute(sql.SQL("create table {} (like {} including all excluding indexes excluding constraints)").format(
        sql.Identifier(new), sql.Identifier(table)))
    return new


def _retarget(definition: str, old: str, new: str, conn: psycopg.Connection) -> str:
    """An index definition of `old` rewritten for `new` (only the ON clause)."""
    pattern = re.compile(r" ON (ONLY )?public\." + re.escape(qi(conn, old)) + " ")
    out, n = pattern.subn(lambda m: f" ON {m.group(1) or ''}public.{qi(conn, new)} ", definition, count=1)
    if n != 1:
        raise RuntimeError(f"cannot retarget index definition of {old}: {definition}")
    return out


def build(conn: psycopg.Connection, cat: dict[str, Any], tag: str) -> None:
    """Keys, unique and exclusion constraints, checks and indexes on the loaded replacement, under temporary names."""
    table, new = cat["table"], replacement(cat["table"], tag)
    for i, (name, _kind, definition, _has_index) in enumerate(cat["constraints"]):
        conn.execute(sql.SQL("alter table {} add constraint {} " + definition).format(
            sql.Identifier(new), sql.Identifier(f"{new[:50]}_c{i}")))
    for i, (name, definition) in enumerate(cat["indexes"]):
        head, rest = definition.split(" ON ", 1)
        created = head.rsplit(" ", 1)[0] + " " + qi(conn, f"{new[:50]}_i{i}") + " ON " + rest
        conn.execute(_retarget(created, table, new, conn))
    conn.execute(sql.SQL("analyze {}").format(sql.Identifier(new)))


def swap(conn: psycopg.Connection, cats: list[dict[str, Any]], tag: str) -> None:
    """In the caller's transaction: drop the foreign keys in and out, swap every table, rename what was
    built under temporary names, carry over the rest, re-create the foreign keys (validated now)."""
    tables = [c["table"] for c in cats]
    fks = foreign_keys(conn, tables)
    for owner, name, _ in fks:
        conn.execute(f"alter table {owner} drop constraint {qi(conn, name)}")
    for cat in cats:
        table, new = cat["table"], replacement(cat["table"], tag)
        old_seqs = {}
        for column, seq in cat["identity"]:
            old_seqs[column] = (seq, conn.execute(f"select last_value, is_called from {seq}").fetchone())
        conn.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))
        conn.execute(sql.SQL("alter table {} rename to {}").format(sql.Identifier(new), sql.Identifier(table)))
        for i, (name, *_rest) in enumerate(cat["constraints"]):
            conn.execute(sql.SQL("alter table {} rename constraint {} to {}").format(
                sql.Identifier(table), sql.Identifier(f"{new[:50]}_c{i}"), sql.Identifier(name)))
        for i, (name, _def) in enumerate(cat["indexes"]):
            conn.execute(sql.SQL("alter index {} rename to {}").format(
                sql.Identifier(f"{new[:50]}_i{i}"), sql.Identifier(name)))
        for column, (seq, (last, called)) in old_seqs.items():
            current = conn.execute("select pg_get_serial_sequence(%s, %s)", (f"public.{qi(conn, table)}", column)).fetchone()[0]
            seq_name = seq.split(".", 1)[1] if "." in seq else seq
            if current != seq:
                conn.execute(f"alter sequence {current} rename to {seq_name}")
            top = conn.execute(sql.SQL("select max({}) from {}").format(sql.Identifier(column), sql.Identifier(table))).fetchone()[0]
            position = max(last if called else last - 1, top or 0)
            if position > 0:
                conn.execute("select setval(%s, %s, true)", (seq, position))
            else:
                conn.execute("select setval(%s, 1, false)", (seq,))
        for _name, definition in cat["triggers"]:
            conn.execute(definition)
        for _grantee, privilege, grantable, role in cat["grants"]:
            conn.execute(sql.SQL("grant {} on {} to {}" + (" with grant option" if grantable else "")).format(
                sql.SQL(privilege), sql.Identifier(table), sql.SQL("public") if role == "PUBLIC" else sql.Identifier(role)))
        conn.execute(sql.SQL("alter table {} owner to {}").format(sql.Identifier(table), sql.Identifier(cat["owner"])))
        if cat["comment"] is not None:
            conn.execute(sql.SQL("comment on table {} is {}").format(sql.Identifier(table), sql.Literal(cat["comment"])))
        if cat["options"]:
            conn.execute(sql.SQL("alter table {} set (" + ", ".join(cat["options"]) + ")").format(
                sql.Identifier(table)))
        if cat["rls"]:
            conn.execute(sql.SQL("alter table {} enable row level security").format(sql.Identifier(table)))
    for owner, name, definition in fks:
        conn.execute(f"alter table {owner} add constraint {qi(conn, name)} " + definition)


def drop_replacements(conn: psycopg.Connection, tag: str | None = None) -> list[str]:
    """Drop replacement tables left by a restore (one tag, or every restore's)."""
    literal = f"{SUFFIX}_{tag}" if tag else f"{SUFFIX}_"
    pattern = "%" + literal.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + ("" if tag else "%")
    names = [r[0] for r in conn.execute(
        "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' and c.relkind = 'r' and relname like %s escape '\\'", (pattern,))]
    for name in names:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))
    return names
