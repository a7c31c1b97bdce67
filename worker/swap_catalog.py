"""What a live table has that its replacement must get (`catalog`, `view_catalog`, `foreign_keys`,
`generated_columns`), what depends on it (`dependants`), and why a table cannot be restored by swap
(`refusals`): the reading half of the restore by swap (worker/swap.py), moved here unchanged. Reads only.
"""

from __future__ import annotations

from typing import Any

import psycopg


def table_oid(conn: psycopg.Connection, table: str) -> int | None:
    row = conn.execute("""select c.oid from pg_class c where c.relnamespace = 'public'::regnamespace
                          and c.relname = %s""", (table,)).fetchone()
    return row[0] if row else None



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
                           where attrelid = %s and attnum > 0 and not attisdropped
                           order by attnum""", (oid,)).fetchall()


def catalog(conn: psycopg.Connection, table: str) -> dict[str, Any]:
    """What the live table has that a replacement must get (see the module's docstring)."""
    oid = table_oid(conn, table)
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
        from pg_constraint c left join pg_class i on i.oid = c.conindid
        left join pg_tablespace ts on ts.oid = i.reltablespace
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
    oids = [o for o in (table_oid(conn, t) for t in tables) if o is not None]
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
    roots = {t: table_oid(conn, t) for t in tables}
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
                                                where ev_class = %s
                                                  and rulename <> '_RETURN'""", (owner,)).fetchone()[0]
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


def generated_columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute("""select attname from pg_attribute where attrelid = %s and attnum > 0
                                          and not attisdropped and attgenerated <> '' order by attnum""",
                                       (table_oid(conn, table),))]
