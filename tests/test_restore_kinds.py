"""Restore fidelity for the kinds of table the data model does not use yet (issue 10), on real services:
row-level security, serial sequences, generated columns, views (and views on views), column grants,
publications, replica identity, UNLOGGED, comments on indexes and constraints, partitions, and the
replacement tables' own names and clean-up.

Each test makes its tables in the session database, backs up, changes rows, restores those tables
through the CLI and compares the rows (hash) and the catalog (names, definitions, flags; never oids)
with what they were before the backup. Each drops what it made, so other tests' full backups and
restores never see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import cli_json
from test_backup import backup, manifest_of
from test_restore import table_hash
from worker import swap
from worker.connections import pg_connect

# Fidelity cases: run once, on the local services path (.ci/run), not again on the embedded path.
pytestmark = pytest.mark.slow

READER, OWNER = "worktask_kind_reader", "worktask_kind_owner"
MARKER = "worktask:restore:"  # the contract with the backup planning (worker/swap.py MARKER)


def full_catalog(conn: psycopg.Connection, tables: list[str], views: list[str] = ()) -> dict[str, Any]:
    """Everything a restore must carry over for `tables` (and the named views on them), without oids."""
    rels = list(tables) + list(views)
    q = {
        "class": """select c.relname, c.relkind, c.relpersistence, coalesce(ts.spcname, 'pg_default'),
                           c.relrowsecurity, c.relforcerowsecurity, c.relreplident, c.reloptions,
                           pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class'), c.relispartition,
                           pg_get_expr(c.relpartbound, c.oid), (select p.relname from pg_inherits i
                           join pg_class p on p.oid = i.inhparent where i.inhrelid = c.oid)
                    from pg_class c left join pg_tablespace ts on ts.oid = c.reltablespace
                    where c.relnamespace = 'public'::regnamespace and c.relname = any(%(t)s) order by 1""",
        "columns": """select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                             a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
                             col_description(c.oid, a.attnum)
                      from pg_class c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                      left join pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
                      where c.relnamespace = 'public'::regnamespace and c.relname = any(%(t)s) order by 1, 2""",
        "column_grants": """select table_name, column_name, grantee, privilege_type, is_grantable
                            from information_schema.column_privileges where table_schema = 'public'
                            and table_name = any(%(t)s) and grantee <> 'postgres' order by 1, 2, 3, 4""",
        "grants": """select c.relname, coalesce(r.rolname, 'PUBLIC'), g.privilege_type, g.is_grantable
                     from pg_class c, aclexplode(c.relacl) g left join pg_roles r on r.oid = g.grantee
                     where c.relnamespace = 'public'::regnamespace and c.relname = any(%(t)s) order by 1, 2, 3""",
        "constraints": """select conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated,
                                 obj_description(oid, 'pg_constraint')
                          from pg_constraint where connamespace = 'public'::regnamespace
                          and (conrelid::regclass::text = any(%(t)s) or confrelid::regclass::text = any(%(t)s))
                          order by 1, 2""",
        "indexes": """select t.relname, c.relname, pg_get_indexdef(c.oid), obj_description(c.oid, 'pg_class'),
                             i.indisreplident, coalesce(ts.spcname, 'pg_default'),
                             (select p.relname from pg_inherits h join pg_class p on p.oid = h.inhparent
                              where h.inhrelid = c.oid)
                      from pg_index i join pg_class c on c.oid = i.indexrelid join pg_class t on t.oid = i.indrelid
                      left join pg_tablespace ts on ts.oid = c.reltablespace
                      where t.relnamespace = 'public'::regnamespace and t.relname = any(%(t)s) order by 1, 2""",
        "triggers": """select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid),
                              obj_description(oid, 'pg_trigger')
                       from pg_trigger where not tgisinternal and tgrelid::regclass::text = any(%(t)s) order by 1, 2""",
        "policies": """select tablename, policyname, permissive, roles, cmd, qual, with_check,
                              (select obj_description(p.oid, 'pg_policy') from pg_policy p
                               where p.polname = policyname and p.polrelid = tablename::regclass)
                       from pg_policies where schemaname = 'public' and tablename = any(%(t)s) order by 1, 2""",
        "sequences": """select c.relname, a.attname, pg_get_serial_sequence(c.oid::regclass::text, a.attname),
                               (select d.deptype from pg_depend d where d.classid = 'pg_class'::regclass
                                and d.objid = pg_get_serial_sequence(c.oid::regclass::text, a.attname)::regclass
                                and d.refobjid = c.oid and d.refobjsubid = a.attnum)
                        from pg_class c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0
                        where c.relname = any(%(t)s) and c.relnamespace = 'public'::regnamespace
                        and pg_get_serial_sequence(c.oid::regclass::text, a.attname) is not null order by 1, 2""",
        "publications": """select pubname, tablename, attnames, rowfilter from pg_publication_tables
                           where schemaname = 'public' and tablename = any(%(t)s) order by 1, 2""",
        "views": """select c.relname, pg_get_viewdef(c.oid), c.reloptions from pg_class c
                    where c.relkind in ('v', 'm') and c.relname = any(%(t)s) order by 1""",
        "statistics": """select stxrelid::regclass::text, stxname, pg_get_statisticsobjdef(oid) from pg_statistic_ext
                         where stxrelid::regclass::text = any(%(t)s) order by 1, 2""",
    }
    return {k: conn.execute(query, {"t": rels}).fetchall() for k, query in q.items()}


def hashes_of(conn: psycopg.Connection, tables: list[str]) -> dict[str, str]:
    return {t: table_hash(conn, t) for t in tables}


@pytest.fixture()
def db(migrated: Any) -> Iterator[tuple[Any, list[str]]]:
    """The session database with the test roles; SQL put in the yielded list runs at teardown (drops)."""
    cleanup: list[str] = []
    with pg_connect(migrated, autocommit=True) as pg:
        for role in (READER, OWNER):
            pg.execute(sql.SQL("do $$ begin create role {} nologin; exception when duplicate_object then null; end $$")
                       .format(sql.Identifier(role)))
    yield migrated, cleanup
    with pg_connect(migrated, autocommit=True) as pg:
        for statement in cleanup:
            pg.execute(statement)
        swap.drop_replacements(pg)


def roundtrip(settings: Any, tables: list[str], mutate: list[str], views: list[str] = (),
              restore_tables: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Back up, run `mutate`, restore `tables` through the CLI; assert rows and catalog as they were."""
    with pg_connect(settings) as conn:
        rows, cat = hashes_of(conn, tables), full_catalog(conn, tables, views)
    report = backup(settings)
    assert report["ok"], report
    with pg_connect(settings, autocommit=True) as pg:
        for statement in mutate:
            pg.execute(statement)
        assert hashes_of(pg, tables) != rows
    code, restored = cli_json("restore", report["backup_id"], "--tables", ",".join(restore_tables or tables),
                              timeout=300)
    assert code == 0 and restored["ok"], (restored.get("error"), restored.get("skipped"))
    with pg_connect(settings) as conn:
        assert hashes_of(conn, tables) == rows
        after = full_catalog(conn, tables, views)
        assert not conn.execute("select relname from pg_class where obj_description(oid, 'pg_class') like %s",
                                (MARKER + "%",)).fetchall()
    for key in cat:
        assert after[key] == cat[key], key
    return report, restored


def as_role(settings: Any, role: str, query: str) -> Any:
    with pg_connect(settings) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        return conn.execute(query).fetchone()[0]


def test_row_level_security_policies_and_force_are_carried_over(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists rls_notes")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists rls_notes")
        pg.execute("create table rls_notes (id int primary key, body text not null, visible bool not null)")
        pg.execute("insert into rls_notes select g, 'note ' || g, g % 3 = 0 from generate_series(1, 300) g")
        pg.execute(sql.SQL("alter table rls_notes owner to {}").format(sql.Identifier(OWNER)))
        pg.execute(sql.SQL("grant select on rls_notes to {}").format(sql.Identifier(READER)))
        pg.execute("alter table rls_notes enable row level security")
        pg.execute("alter table rls_notes force row level security")
        pg.execute(sql.SQL("create policy readers_see_visible on rls_notes for select to {} using (visible)")
                   .format(sql.Identifier(READER)))
        pg.execute(sql.SQL("create policy owner_even_ids on rls_notes to {} using (id % 2 = 0) "
                           "with check (id % 2 = 0)").format(sql.Identifier(OWNER)))
        pg.execute(sql.SQL("create policy no_long_bodies on rls_notes as restrictive to {} using (length(body) < 100)")
                   .format(sql.Identifier(READER)))
        pg.execute("comment on policy readers_see_visible on rls_notes is 'readers see visible notes'")
    assert as_role(settings, READER, "select count(*) from rls_notes") == 100
    roundtrip(settings, ["rls_notes"],
              ["delete from rls_notes where id % 4 = 0", "update rls_notes set visible = true"])
    assert as_role(settings, READER, "select count(*) from rls_notes") == 100  # the policy, not nothing
    assert as_role(settings, OWNER, "select count(*) from rls_notes") == 150  # FORCE: the owner is filtered too


def test_a_serial_column_keeps_its_sequence_ownership_and_position(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists serial_items")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists serial_items")
        pg.execute("create table serial_items (id serial primary key, code bigserial, name text)")
        pg.execute("insert into serial_items (name) select 'item ' || g from generate_series(1, 500) g")
        pg.execute("grant usage on sequence serial_items_id_seq to " + READER)
        pg.execute("comment on sequence serial_items_id_seq is 'ids of items'")
    roundtrip(settings, ["serial_items"], ["delete from serial_items where id % 5 = 0",
                                           "insert into serial_items (name) values ('after the backup')"])
    with pg_connect(settings, autocommit=True) as pg:
        assert pg.execute("select last_value from serial_items_id_seq").fetchone()[0] == 501  # never moved back
        assert pg.execute("select obj_description('serial_items_id_seq'::regclass, 'pg_class')").fetchone()[0] == \
            "ids of items"
        assert pg.execute("select has_sequence_privilege(%s, 'serial_items_id_seq', 'usage')", (READER,)).fetchone()[0]
        new = pg.execute("insert into serial_items (name) values ('new') returning id").fetchone()[0]
        assert new > pg.execute("select max(id) from serial_items where id <> %s", (new,)).fetchone()[0]


def test_a_stored_generated_column_is_recomputed_not_copied(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists priced_items")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists priced_items")
        pg.execute("""create table priced_items (id int primary key, price numeric(10, 2) not null, qty int not null,
                      total numeric generated always as (price * qty) stored, note text)""")
        pg.execute("insert into priced_items (id, price, qty, note) select g, g / 10.0, g % 7, 'n' || g "
                   "from generate_series(1, 400) g")
    roundtrip(settings, ["priced_items"], ["update priced_items set qty = qty + 1 where id % 3 = 0",
                                           "delete from priced_items where id > 350"])
    with pg_connect(settings, autocommit=True) as pg:
        assert pg.execute("select total from priced_items where id = 40").fetchone()[0] == 20  # 4.00 * 5
        pg.execute("update priced_items set qty = 10 where id = 40")
        assert pg.execute("select total from priced_items where id = 40").fetchone()[0] == 40


def test_views_and_views_on_views_are_recreated_with_owner_grants_and_comments(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists view_base cascade")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists view_base cascade")
        pg.execute("create table view_base (id int primary key, name text not null, active bool not null)")
        pg.execute("insert into view_base select g, 'name ' || g, g % 2 = 0 from generate_series(1, 200) g")
        pg.execute("create view active_base with (security_barrier) as select id, name from view_base where active")
        pg.execute("create view active_names (label) as select upper(name) from active_base")
        pg.execute("create view base_count as select count(*) as n from view_base")
        pg.execute(sql.SQL("alter view active_base owner to {}").format(sql.Identifier(OWNER)))
        pg.execute(sql.SQL("grant select on view_base to {}").format(sql.Identifier(OWNER)))
        pg.execute(sql.SQL("grant select on active_names to {}").format(sql.Identifier(READER)))
        pg.execute(sql.SQL("grant select (id) on active_base to {}").format(sql.Identifier(READER)))
        pg.execute("comment on view active_base is 'the active ones'")
        pg.execute("comment on column active_names.label is 'shouted'")
    roundtrip(settings, ["view_base"], ["delete from view_base where id < 50"],
              views=["active_base", "active_names", "base_count"])
    with pg_connect(settings) as conn:
        assert conn.execute("select count(*) from active_names").fetchone()[0] == 100
        assert conn.execute("select n from base_count").fetchone()[0] == 200
    assert as_role(settings, READER, "select count(*) from active_names") == 100


def test_column_grants_are_carried_over(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists granted_items")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists granted_items")
        pg.execute("create table granted_items (id int primary key, name text, secret text)")
        pg.execute("insert into granted_items select g, 'n' || g, 's' || g from generate_series(1, 100) g")
        pg.execute(sql.SQL("grant select (id, name), update (name) on granted_items to {}")
                   .format(sql.Identifier(READER)))
        pg.execute(sql.SQL("grant insert (id) on granted_items to {} with grant option").format(sql.Identifier(OWNER)))
    roundtrip(settings, ["granted_items"], ["delete from granted_items where id > 90"])
    assert as_role(settings, READER, "select count(name) from granted_items") == 100


def test_publication_membership_is_carried_over(db: Any) -> None:
    settings, cleanup = db
    cleanup += ["drop publication if exists worktask_kinds_pub", "drop table if exists published_items"]
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop publication if exists worktask_kinds_pub")
        pg.execute("drop table if exists published_items")
        pg.execute("create table published_items (id int primary key, name text, extra text)")
        pg.execute("insert into published_items select g, 'n' || g, 'x' from generate_series(1, 100) g")
        pg.execute("create publication worktask_kinds_pub for table published_items (id, name) where (id > 10)")
    roundtrip(settings, ["published_items"], ["delete from published_items where id > 90"])


def test_replica_identity_is_carried_over(db: Any) -> None:
    settings, cleanup = db
    cleanup += ["drop table if exists ident_full", "drop table if exists ident_index"]
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists ident_full, ident_index")
        pg.execute("create table ident_full (id int primary key, name text)")
        pg.execute("alter table ident_full replica identity full")
        pg.execute("create table ident_index (id int primary key, code text not null)")
        pg.execute("create unique index ident_index_code on ident_index (code)")
        pg.execute("alter table ident_index replica identity using index ident_index_code")
        pg.execute("insert into ident_full select g, 'n' || g from generate_series(1, 100) g")
        pg.execute("insert into ident_index select g, 'c' || g from generate_series(1, 100) g")
    roundtrip(settings, ["ident_full", "ident_index"], ["delete from ident_full where id > 90",
                                                        "delete from ident_index where id > 90"])


def test_an_unlogged_table_stays_unlogged(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists scratch_items")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists scratch_items")
        pg.execute("create unlogged table scratch_items (id bigint generated always as identity primary key, v text)")
        pg.execute("insert into scratch_items (v) select 'v' || g from generate_series(1, 100) g")
    roundtrip(settings, ["scratch_items"], ["delete from scratch_items where id > 90"])


def test_comments_on_indexes_constraints_and_columns_are_carried_over(db: Any) -> None:
    settings, cleanup = db
    cleanup.append("drop table if exists commented_items")
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists commented_items")
        pg.execute("""create table commented_items (id int constraint commented_items_pk primary key,
                      qty int constraint qty_positive check (qty > 0), name text)""")
        pg.execute("create index commented_items_name on commented_items (name) with (fillfactor = 80)")
        pg.execute("create statistics commented_items_stats (ndistinct) on qty, name from commented_items")
        pg.execute("insert into commented_items select g, 1 + g % 5, 'n' || g from generate_series(1, 100) g")
        pg.execute("comment on index commented_items_name is 'lookup by name'")
        pg.execute("comment on index commented_items_pk is 'the key index'")
        pg.execute("comment on constraint qty_positive on commented_items is 'no empty lines'")
        pg.execute("comment on constraint commented_items_pk on commented_items is 'the key'")
        pg.execute("comment on column commented_items.qty is 'how many'")
        pg.execute("comment on table commented_items is 'items with comments'")
        pg.execute("alter table commented_items set (autovacuum_enabled = false)")
    roundtrip(settings, ["commented_items"], ["delete from commented_items where id > 90"])


def test_partition_leaves_are_restored_in_place(db: Any) -> None:
    """Leaves restore one by one: detached, replaced, attached again with their bound; the parent's keys,
    indexes, checks and a foreign key pointing at the parent stay whole. (Whether the backup lists the parent
    or not, and whether leaves carry partition_of/partition_bound, the restore of leaves is the same.)"""
    settings, cleanup = db
    cleanup += ["drop table if exists event_refs", "drop table if exists events"]
    leaves = ["events_low", "events_high", "events_rest"]
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists event_refs, events")
        pg.execute("""create table events (id int, kind text not null, at date not null default current_date,
                      constraint events_pk primary key (id), constraint events_kind check (kind <> ''))
                      partition by range (id)""")
        pg.execute("create index events_kind_idx on events (kind)")
        pg.execute("create table events_low partition of events for values from (1) to (1000)")
        pg.execute("create table events_high partition of events for values from (1000) to (2000)")
        pg.execute("create table events_rest partition of events default")
        pg.execute("create index events_low_at on events_low (at)")
        pg.execute("insert into events (id, kind) select g, 'k' || (g % 3) from generate_series(1, 2500) g")
        pg.execute("create table event_refs (id int primary key, event_id int not null references events)")
        pg.execute("insert into event_refs select g, g * 2 from generate_series(1, 100) g")
    with pg_connect(settings) as conn:
        parent = hashes_of(conn, ["events"])
    report, _ = roundtrip(settings, leaves + ["event_refs"],
                          ["delete from events where id % 2 = 1", "update events set kind = 'x' where id > 1500"],
                          views=["events"], restore_tables=leaves)
    manifest = manifest_of(settings, report["backup_id"])
    for t in manifest["tables"]:
        if t["name"] in leaves and "partition_of" in t:
            assert t["partition_of"] == "events" and t["partition_bound"]
    with pg_connect(settings) as conn:
        assert hashes_of(conn, ["events"]) == parent
        assert conn.execute("select count(*) from events").fetchone()[0] == 2500
    if all(t.get("partition_of") == "events" for t in manifest["tables"] if t["name"] in leaves):
        code, restored = cli_json("restore", report["backup_id"], "--tables", "events", timeout=300)
        assert code == 0 and sorted(t["name"] for t in restored["tables"]) == sorted(leaves), restored
        with pg_connect(settings) as conn:
            assert hashes_of(conn, ["events"]) == parent
    if any(t["name"] == "events" for t in manifest["tables"]):  # a backup made before parents were left out
        code, restored = cli_json("restore", report["backup_id"], "--tables", "events", timeout=300)
        assert code == 1 and "partitioned table" in restored["skipped"][0]["reason"], restored
        with pg_connect(settings) as conn:
            assert hashes_of(conn, ["events"]) == parent


def test_a_user_table_named_like_a_replacement_survives_a_restore(db: Any) -> None:
    settings, cleanup = db
    cleanup += ["drop table if exists my__restore_x", "drop table if exists plain_items"]
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists my__restore_x, plain_items")
        pg.execute("create table my__restore_x (id int primary key)")
        pg.execute("insert into my__restore_x values (1), (2)")
        pg.execute("create table plain_items (id int primary key, v text)")
        pg.execute("insert into plain_items select g, 'v' from generate_series(1, 10) g")
    roundtrip(settings, ["plain_items"], ["delete from plain_items where id > 5"])
    with pg_connect(settings) as conn:
        assert conn.execute("select count(*) from my__restore_x").fetchone()[0] == 2


LONG_A = "a_table_with_a_rather_long_name_for_tests_number_one"
LONG_B = "a_table_with_a_rather_long_name_for_tests_number_two"


def test_two_long_names_sharing_a_prefix_restore_together(db: Any) -> None:
    settings, cleanup = db
    assert LONG_A[:40] == LONG_B[:40]
    cleanup += [sql.SQL("drop table if exists {}, {}").format(sql.Identifier(LONG_A), sql.Identifier(LONG_B))
                .as_string(None)]
    with pg_connect(settings, autocommit=True) as pg:
        for i, name in enumerate((LONG_A, LONG_B)):
            pg.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))
            pg.execute(sql.SQL("create table {} (id int primary key, v text)").format(sql.Identifier(name)))
            pg.execute(sql.SQL("insert into {} select g, {} from generate_series(1, 50 + {}) g").format(
                sql.Identifier(name), sql.Literal(name), sql.Literal(i * 10)))
    mutate = [sql.SQL("delete from {} where id > 20").format(sql.Identifier(n)).as_string(None)
              for n in (LONG_A, LONG_B)]
    roundtrip(settings, [LONG_A, LONG_B], mutate)
    assert all(len(swap.replacement(n, "abcdef").encode()) <= 63 for n in (LONG_A, LONG_B, "ü" * 63))
    assert swap.replacement(LONG_A, "abcdef") != swap.replacement(LONG_B, "abcdef")


def test_the_next_restore_drops_only_marked_leftovers(db: Any) -> None:
    settings, cleanup = db
    cleanup += ["drop table if exists leftover_items", "drop table if exists leftover_items__restore_dead01",
                "drop table if exists someone_elses"]
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists leftover_items, leftover_items__restore_dead01, someone_elses")
        pg.execute("create table leftover_items (id int primary key, v text)")
        pg.execute("insert into leftover_items select g, 'v' from generate_series(1, 10) g")
    report = backup(settings)
    with pg_connect(settings, autocommit=True) as pg:  # what a killed restore leaves, and two tables that are not
        pg.execute("create table leftover_items__restore_dead01 (id int)")  # a user's, named like one
        killed = swap.create_replacement(pg, "leftover_items", "dead01")
        pg.execute("create table someone_elses (id int)")
        pg.execute("comment on table someone_elses is 'worktask restores are great'")
        assert killed != "leftover_items__restore_dead01"
    code, restored = cli_json("restore", report["backup_id"], "--tables", "leftover_items", timeout=300)
    assert code == 0 and restored["ok"], (restored.get("error"), restored.get("skipped"))
    with pg_connect(settings) as conn:
        assert conn.execute("select to_regclass(%s)", (killed,)).fetchone()[0] is None
        assert conn.execute("select to_regclass('leftover_items__restore_dead01')").fetchone()[0] is not None
        assert conn.execute("select to_regclass('someone_elses')").fetchone()[0] is not None


def test_what_cannot_be_carried_over_is_refused_before_anything_is_written(db: Any) -> None:
    settings, cleanup = db
    cleanup += ["drop table if exists summarised_items cascade"]
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("drop table if exists summarised_items cascade")
        pg.execute("create table summarised_items (id int primary key, v int)")
        pg.execute("insert into summarised_items select g, g from generate_series(1, 20) g")
        pg.execute("create materialized view items_summary as select sum(v) as total from summarised_items")
    report = backup(settings)
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("delete from summarised_items where id > 10")
        changed = hashes_of(pg, ["summarised_items"])
    code, restored = cli_json("restore", report["backup_id"], "--tables", "summarised_items", timeout=300)
    assert code == 1 and restored["tables"] == [], restored
    (skipped,) = restored["skipped"]
    assert skipped["name"] == "summarised_items" and "materialized view items_summary" in skipped["reason"], skipped
    with pg_connect(settings) as conn:
        assert hashes_of(conn, ["summarised_items"]) == changed
        assert not conn.execute("select relname from pg_class where obj_description(oid, 'pg_class') like %s",
                                (MARKER + "%",)).fetchall()
