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

Replacement tables are named `<table prefix>__restore_<tag>_<hash of the full name>` (<= 63 bytes, no
two tables alike) and marked by their comment, `worktask:restore:<tag>:<table>` (MARKER): clean-up
drops only marked tables, the backup planning leaves them out, and the swap sets the comment back to
the live table's.

Names never reach SQL as text: identifiers go through psycopg.sql (or worker/sqltext.py, its conn-free form)
or PostgreSQL's own format('%I'); expressions and definitions come from PostgreSQL's catalog functions
(pg_get_*def, pg_get_expr) and are pasted as they print (they are SQL text already, no parameter can hold them),
always as an argument of format() (sql.SQL(text)), never into its template, where a `{}` in them (an array or
JSON literal) would be taken for a placeholder.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
from psycopg import sql

from worker.sqltext import ident

SUFFIX = "__restore"
MARKER = "worktask:restore:"  # the comment of every replacement table: MARKER + "<tag>:<table>"
LOCK_TIMEOUT = "30s"
NAMEDATALEN = 63

PRIVILEGE = re.compile(r"^[A-Z ]+$")
CMD = {"r": "select", "a": "insert", "w": "update", "d": "delete", "*": "all"}
REPLIDENT = {"n": "nothing", "f": "full"}


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


def qi(conn: psycopg.Connection, name: str) -> str:
    """An identifier as SQL text (sqltext.ident; `conn` is not used). Kept for tasks/restore.py."""
    return ident(name)


def _printed(conn: psycopg.Connection, name: str) -> str:
    """A name as PostgreSQL prints it in pg_get_*def() (quote_ident: quoted only where needed), to match that
    text; the server's own answer, as its keyword list decides the quoting."""
    return conn.execute("select quote_ident(%s)", (name,)).fetchone()[0]


def _oid(conn: psycopg.Connection, table: str) -> int | None:
    row = conn.execute("""select c.oid from pg_class c where c.relnamespace = 'public'::regnamespace
                          and c.relname = %s""", (table,)).fetchone()
    return row[0] if row else None


def _role(name: str | None) -> sql.Composable:
    return sql.SQL("public") if name in (None, "PUBLIC") else sql.Identifier(name)


def _privilege(text: str) -> sql.SQL:
    if not PRIVILEGE.match(text):
        raise RuntimeError(f"unexpected privilege {text!r}")
    return sql.SQL(text)


# reading the live catalog ------------------------------------------------------------------------------------

def _grants(conn: psycopg.Connection, oid: int) -> list[tuple[str, str, bool]]:
    return conn.execute("""
        select coalesce(r.rolname, 'PUBLIC'), g.privilege_type, g.is_grantable
        from pg_class c, aclexplode(c.relacl) g left join pg_roles r on r.oid = g.grantee
        where c.oid = %s and g.grantee <> c.relowner order by 1, 2""", (oid,)).fetchall()


def _column_grants(conn: psycopg.Connection, oid: int) -> list[tuple[str, str, str, bool]]:
    return conn.execute("""
        select a.attname, coalesce(r.rolname, 'PUBLIC'), g.privilege_type, g.is_grantable
        from pg_attribute a cross join aclexplode(a.attacl) g left join pg_roles r on r.oid = g.grantee
        where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and a.attacl is not null
        order by a.attnum, 2, 3""", (oid,)).fetchall()


def _column_comments(conn: psycopg.Connection, oid: int) -> list[tuple[str, str | None]]:
    return conn.execute("""select attname, col_description(attrelid, attnum) from pg_attribute
                           where attrelid = %s and attnum > 0 and not attisdropped order by attnum""", (oid,)).fetchall()


def catalog(conn: psycopg.Connection, table: str) -> dict[str, Any]:
    """What the live table has that a replacement must get (see the module's docstring)."""
    oid = _oid(conn, table)
    if oid is None:
        raise RuntimeError(f"table {table} does not exist")
    (kind, persistence, tablespace, owner, comment, options, rls, force, replident, is_partition, parent, bound,
     part_check) = conn.execute("""
        select c.relkind, c.relpersistence, ts.spcname, pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class'),
               c.reloptions, c.relrowsecurity, c.relforcerowsecurity, c.relreplident, c.relispartition,
               (select p.relname from pg_inherits i join pg_class p on p.oid = i.inhparent where i.inhrelid = c.oid),
               pg_get_expr(c.relpartbound, c.oid),
               case when c.relispartition then pg_get_partition_constraintdef(c.oid) end
        from pg_class c left join pg_tablespace ts on ts.oid = c.reltablespace where c.oid = %s""", (oid,)).fetchone()
    constraints = conn.execute("""
        select c.conname, c.contype, pg_get_constraintdef(c.oid), ts.spcname, obj_description(c.oid, 'pg_constraint'),
               obj_description(c.conindid, 'pg_class')
        from pg_constraint c left join pg_class i on i.oid = c.conindid left join pg_tablespace ts on ts.oid = i.reltablespace
        where c.conrelid = %s and c.contype in ('p', 'u', 'x', 'c') order by c.conname""", (oid,)).fetchall()
    indexes = conn.execute("""
        select c.relname, pg_get_indexdef(i.indexrelid), ts.spcname, obj_description(c.oid, 'pg_class')
        from pg_index i join pg_class c on c.oid = i.indexrelid left join pg_tablespace ts on ts.oid = c.reltablespace
        where i.indrelid = %s and not exists (select 1 from pg_constraint k where k.conindid = i.indexrelid
                                              and k.conrelid = i.indrelid and k.contype in ('p', 'u', 'x'))
        order by c.relname""", (oid,)).fetchall()
    replident_index = conn.execute("""select c.relname from pg_index i join pg_class c on c.oid = i.indexrelid
                                      where i.indrelid = %s and i.indisreplident""", (oid,)).fetchone()
    triggers = conn.execute("""select tgname, pg_get_triggerdef(oid), obj_description(oid, 'pg_trigger') from pg_trigger
                               where tgrelid = %s and not tgisinternal and tgparentid = 0 order by tgname""",
                            (oid,)).fetchall()
    sequences = conn.execute("""
        select a.attname, s.relname, d.deptype, pg_get_userbyid(s.relowner), obj_description(s.oid, 'pg_class'),
               s.oid, (select nspname from pg_namespace where oid = s.relnamespace),
               (select coalesce(array_agg(array[coalesce(r.rolname, 'PUBLIC'), g.privilege_type, g.is_grantable::text]
                                          order by r.rolname, g.privilege_type), '{}')
                from aclexplode(s.relacl) g left join pg_roles r on r.oid = g.grantee where g.grantee <> s.relowner)
        from pg_depend d join pg_class s on s.oid = d.objid and s.relkind = 'S'
        join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
        where d.classid = 'pg_class'::regclass and d.refclassid = 'pg_class'::regclass and d.refobjid = %s
          and d.deptype in ('a', 'i') order by a.attnum""", (oid,)).fetchall()
    policies = conn.execute("""
        select p.polname, p.polpermissive, p.polcmd,
               array(select coalesce(r.rolname, 'PUBLIC') from unnest(p.polroles) u(r0)
                     left join pg_roles r on r.oid = u.r0 order by 1),
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
               obj_description(p.oid, 'pg_policy')
        from pg_policy p where p.polrelid = %s order by p.polname""", (oid,)).fetchall()
    publications = conn.execute("""
        select p.pubname, pg_get_expr(r.prqual, r.prrelid),
               case when r.prattrs is not null then array(select a.attname from unnest(r.prattrs) k(n)
                    join pg_attribute a on a.attrelid = r.prrelid and a.attnum = k.n order by a.attnum) end
        from pg_publication_rel r join pg_publication p on p.oid = r.prpubid where r.prrelid = %s
        order by p.pubname""", (oid,)).fetchall()
    statistics = conn.execute("""select stxname, pg_get_userbyid(stxowner), obj_description(oid, 'pg_statistic_ext')
                                 from pg_statistic_ext where stxrelid = %s order by oid""", (oid,)).fetchall()
    return {"table": table, "oid": oid, "kind": kind, "persistence": persistence, "tablespace": tablespace,
            "constraints": constraints, "indexes": indexes, "triggers": triggers, "sequences": sequences,
            "grants": _grants(conn, oid), "column_grants": _column_grants(conn, oid),
            "column_comments": _column_comments(conn, oid), "owner": owner, "comment": comment, "options": options,
            "rls": rls, "force_rls": force, "replident": replident,
            "replident_index": replident_index[0] if replident_index else None, "policies": policies,
            "publications": publications, "statistics": statistics, "parent": parent if is_partition else None,
            "bound": bound, "partition_check": part_check}


def foreign_keys(conn: psycopg.Connection, tables: list[str]) -> list[tuple[str, str]]:
    """(drop, add) statements of every foreign key from or to one of `tables`, or to a partitioned table
    one of them is a partition of. Keys a partition inherits from its parent are left out: the parent's
    key is the one to drop, and ATTACH PARTITION clones it again."""
    oids = [o for o in (_oid(conn, t) for t in tables) if o is not None]
    return conn.execute("""
        select format('alter table %%s drop constraint %%I', conrelid::regclass, conname),
               format('alter table %%s add constraint %%I %%s', conrelid::regclass, conname, pg_get_constraintdef(oid))
        from pg_constraint
        where contype = 'f' and conparentid = 0
          and (conrelid = any(%(o)s) or confrelid = any(%(o)s) or confrelid in
               (select a.relid from unnest(%(o)s::oid[]) t(oid), pg_partition_ancestors(t.oid) a))
        order by conrelid::regclass::text, conname""", {"o": oids}).fetchall()


# dependants: views (re-created) and what cannot be carried over (refused) -------------------------------------

def _dependants(conn: psycopg.Connection, oids: list[int]) -> list[tuple[str, int, str, int | None]]:
    """(catalog, object, description, relation the object belongs to) of every object that depends normally on
    one of `oids` (relations) or on their row types."""
    return conn.execute("""
        select distinct d.classid::regclass::text, d.objid, pg_describe_object(d.classid, d.objid, 0),
               case d.classid
                 when 'pg_rewrite'::regclass then (select ev_class from pg_rewrite where oid = d.objid)
                 when 'pg_constraint'::regclass then (select conrelid from pg_constraint where oid = d.objid)
                 when 'pg_policy'::regclass then (select polrelid from pg_policy where oid = d.objid)
                 when 'pg_trigger'::regclass then (select tgrelid from pg_trigger where oid = d.objid)
                 when 'pg_attrdef'::regclass then (select adrelid from pg_attrdef where oid = d.objid)
                 when 'pg_publication_rel'::regclass then (select prrelid from pg_publication_rel where oid = d.objid)
                 when 'pg_class'::regclass then d.objid
               end
        from pg_depend d
        where d.deptype = 'n' and (
              (d.refclassid = 'pg_class'::regclass and d.refobjid = any(%(o)s))
           or (d.refclassid = 'pg_type'::regclass and d.refobjid in (
                 select t.oid from pg_type t join pg_class c on t.oid = c.reltype or t.typelem = c.reltype
                 where c.oid = any(%(o)s) and t.oid <> 0)))
        order by 1, 2""", {"o": oids}).fetchall()


def dependants(conn: psycopg.Connection, tables: list[str]) -> tuple[list[int], dict[str, list[str]]]:
    """The views to drop and re-create around the swap (oids, in creation order) and, per table, what depends
    on it that the swap cannot carry over."""
    roots = {t: _oid(conn, t) for t in tables}
    own = {o for o in roots.values() if o is not None}
    views: dict[int, set[int]] = {}  # view -> the views it depends on
    refused: dict[str, list[str]] = {}
    for table, oid in roots.items():
        if oid is None:
            continue
        todo, seen = [oid], set()
        while todo:
            rel = todo.pop()
            if rel in seen:
                continue
            seen.add(rel)
            for catalog_name, objid, what, owner in _dependants(conn, [rel]):
                if catalog_name == "pg_constraint" and conn.execute(
                        "select contype = 'f' from pg_constraint where oid = %s", (objid,)).fetchone()[0]:
                    continue  # foreign keys are dropped and re-created
                if catalog_name in ("pg_policy", "pg_trigger", "pg_attrdef", "pg_publication_rel", "pg_constraint") \
                        and owner in own:
                    continue  # the restored table's own: carried over
                if catalog_name == "pg_rewrite":
                    kind, rule = conn.execute("""select c.relkind, r.rulename from pg_rewrite r join pg_class c
                                                 on c.oid = r.ev_class where r.oid = %s""", (objid,)).fetchone()
                    if owner == rel:
                        continue  # a view's own rule
                    if kind == "v" and rule == "_RETURN" and owner not in own:
                        extra = conn.execute("""select string_agg(rulename, ', ') from pg_rewrite
                                                where ev_class = %s and rulename <> '_RETURN'""", (owner,)).fetchone()[0]
                        if extra:
                            refused.setdefault(table, []).append(f"rules {extra} on view {_name(conn, owner)}")
                        views.setdefault(owner, set())
                        if rel != oid:
                            views[owner].add(rel)
                        todo.append(owner)
                        continue
                refused.setdefault(table, []).append(what)
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(views):  # every view after the views it selects from
        ready = sorted(v for v, deps in views.items() if v not in placed and deps <= placed)
        if not ready:
            raise RuntimeError("views depend on each other in a cycle")
        order += ready
        placed.update(ready)
    return order, refused


def _name(conn: psycopg.Connection, oid: int) -> str:
    return conn.execute("select %s::regclass::text", (oid,)).fetchone()[0]


def refusals(conn: psycopg.Connection, tables: list[dict[str, Any]]) -> dict[str, str]:
    """Why a table cannot be restored by swap, per table (manifest entries in), read before anything is written."""
    out: dict[str, str] = {}
    names = [t["name"] for t in tables]
    for t in tables:
        row = conn.execute("""select c.relkind, c.relispartition,
                                     (select p.relname from pg_inherits i join pg_class p on p.oid = i.inhparent
                                      where i.inhrelid = c.oid), pg_get_expr(c.relpartbound, c.oid)
                              from pg_class c where c.relnamespace = 'public'::regnamespace and c.relname = %s""",
                           (t["name"],)).fetchone()
        if row is None:
            out[t["name"]] = "it does not exist in the database (a restore replaces live tables; migrate first)"
        elif row[0] == "p":
            out[t["name"]] = "it is a partitioned table: its rows are in its partitions; restore those"
        elif row[0] != "r":
            out[t["name"]] = f"it is not a plain table (relkind {row[0]})"
        elif "partition_of" in t and (t["partition_of"] != (row[2] if row[1] else None) or
                                      (t["partition_of"] and t.get("partition_bound") not in (None, row[3]))):
            out[t["name"]] = (f"the backup has it as a partition of {t['partition_of'] or 'nothing'} "
                              f"({t.get('partition_bound')}), the database as one of {row[2] if row[1] else 'nothing'}"
                              f" ({row[3]})")
    _views, refused = dependants(conn, [n for n in names if n not in out])
    for name, what in refused.items():
        out[name] = ("cannot carry over what depends on it: " + "; ".join(sorted(set(what))) +
                     " (drop it and re-create it after the restore, or leave the table out)")
    return out


def view_catalog(conn: psycopg.Connection, oid: int) -> dict[str, Any]:
    name, kind, options, owner, comment = conn.execute("""
        select relname, relkind, reloptions, pg_get_userbyid(relowner), obj_description(oid, 'pg_class')
        from pg_class where oid = %s""", (oid,)).fetchone()
    return {"name": name, "definition": conn.execute("select pg_get_viewdef(%s)", (oid,)).fetchone()[0],
            "options": options, "owner": owner, "comment": comment, "grants": _grants(conn, oid),
            "column_grants": _column_grants(conn, oid), "column_comments": _column_comments(conn, oid),
            "defaults": conn.execute("""select a.attname, pg_get_expr(d.adbin, d.adrelid) from pg_attrdef d
                                        join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
                                        where d.adrelid = %s order by a.attnum""", (oid,)).fetchall(),
            "triggers": conn.execute("""select tgname, pg_get_triggerdef(oid), obj_description(oid, 'pg_trigger')
                                        from pg_trigger where tgrelid = %s and not tgisinternal order by tgname""",
                                     (oid,)).fetchall()}


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
                          on ts.oid = c.reltablespace where c.oid = %s""", (_oid(conn, table),)).fetchone()
    conn.execute(sql.SQL("create {}table {} (like {} including all {}excluding indexes excluding constraints){}").format(
        sql.SQL("unlogged " if cat[0] == "u" else ""), sql.Identifier(new), sql.Identifier(table),
        sql.SQL("excluding generated " if plain_generated else ""),
        sql.SQL(" tablespace {}").format(sql.Identifier(cat[1])) if cat[1] else sql.SQL("")))
    conn.execute(sql.SQL("comment on table {} is {}").format(sql.Identifier(new), sql.Literal(marker(tag, table))))
    return new


def generated_columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute("""select attname from pg_attribute where attrelid = %s and attnum > 0
                                          and not attisdropped and attgenerated <> '' order by attnum""",
                                       (_oid(conn, table),))]


def recompute_generated(conn: psycopg.Connection, table: str, tag: str) -> None:
    """A replacement loaded with generated columns as plain ones becomes one that computes them (a copy)."""
    new = replacement(table, tag)
    staging = temp_name(table, tag, "g")
    conn.execute(sql.SQL("alter table {} rename to {}").format(sql.Identifier(new), sql.Identifier(staging)))
    _create(conn, table, tag, False)
    generated = set(generated_columns(conn, table))
    cols = sql.SQL(", ").join(sql.Identifier(r[0]) for r in conn.execute(
        """select attname from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped
           order by attnum""", (_oid(conn, table),)) if r[0] not in generated)
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
    for i, (_name_, _kind, definition, tablespace, *_comments) in enumerate(cat["constraints"]):
        _default_tablespace(conn, tablespace)
        conn.execute(sql.SQL("alter table {} add constraint {} {}").format(
            sql.Identifier(new), sql.Identifier(temp_name(table, tag, "c", i)), sql.SQL(definition)))
    for i, (_name_, definition, tablespace, _comment) in enumerate(cat["indexes"]):
        _default_tablespace(conn, tablespace)
        head, rest = definition.split(" ON ", 1)
        created = head.rsplit(" ", 1)[0] + " " + ident(temp_name(table, tag, "i", i)) + " ON " + rest
        conn.execute(_retarget(created, table, new, conn))
    _default_tablespace(conn, None)
    if cat["partition_check"]:
        conn.execute(sql.SQL("alter table {} add constraint {} check {}").format(
            sql.Identifier(new), sql.Identifier(temp_name(table, tag, "bound")), sql.SQL(cat["partition_check"])))
    conn.execute(sql.SQL("analyze {}").format(sql.Identifier(new)))


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
    for column, seq, deptype, _owner, _comment, seq_oid, schema, _grants_ in cat["sequences"]:
        positions[column] = conn.execute(sql.SQL("select last_value, is_called from {}").format(
            sql.Identifier(schema, seq))).fetchone()
        if deptype == "a":  # serial: the replacement's default uses this very sequence; it moves over
            conn.execute(sql.SQL("alter sequence {} owned by {}.{}").format(
                sql.Identifier(schema, seq), sql.Identifier(new), sql.Identifier(column)))
    stats_new = [r[0] for r in conn.execute("select stxname from pg_statistic_ext where stxrelid = %s order by oid",
                                            (_oid(conn, new),))]
    conn.execute(sql.SQL("drop table {}").format(t))
    conn.execute(sql.SQL("alter table {} rename to {}").format(sql.Identifier(new), t))
    for i, (name, kind, _def, _ts, comment, index_comment) in enumerate(cat["constraints"]):
        conn.execute(sql.SQL("alter table {} rename constraint {} to {}").format(
            t, sql.Identifier(temp_name(table, tag, "c", i)), sql.Identifier(name)))  # its index too
        conn.execute(sql.SQL("comment on constraint {} on {} is {}").format(sql.Identifier(name), t, sql.Literal(comment)))
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
                join pg_class s on s.oid = d.objid join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
                where d.classid = 'pg_class'::regclass and d.refobjid = %s and d.deptype = 'i' and s.relkind = 'S'
                  and a.attname = %s""", (_oid(conn, table), column)).fetchone()
            conn.execute(sql.SQL("alter sequence {} rename to {}").format(
                sql.Identifier(schema, current), sql.Identifier(seq)))
            conn.execute(sql.SQL("comment on sequence {} is {}").format(sql.Identifier(schema, seq), sql.Literal(comment)))
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
