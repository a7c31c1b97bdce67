"""SQL text from names and values (worker/sqltext.py), and catalog text composed safely by the swap."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from worker import swap
from worker.connections import pg_connect
from worker.sqltext import ident, literal


def test_ident_and_literal_are_psycopgs_own_composition() -> None:
    assert ident("work_tasks") == '"work_tasks"' and ident('a"b') == '"a""b"' and ident("ü b") == '"ü b"'
    assert ident("public", "t") == '"public"."t"'
    assert literal("it's") == "'it''s'" and literal(None) == "NULL" and literal(5) == "5"
    assert "E'a\\\\b'" in literal("a\\b")


def test_they_round_trip_through_postgresql(pg: psycopg.Connection) -> None:
    for name in ("plain", "Mixed Case", 'quo"te', "select", "ü ✓"):
        assert pg.execute(f"select {literal(name)}::text, quote_ident({literal(name)})").fetchone()[0] == name
        assert pg.execute(f"select 1 as {ident(name)}").description[0].name == name
    odd = "back\\slash"
    assert pg.execute("select " + literal(odd)).fetchone()[0] == odd


BRACES = "brace_items"


@pytest.fixture()
def braces(settings: Any) -> Any:
    def drop(pg: psycopg.Connection) -> None:
        pg.execute(f"drop view if exists {BRACES}_v; drop table if exists {BRACES}, {BRACES}_parts")
        swap.drop_replacements(pg, "brace1")
    with pg_connect(settings, autocommit=True) as pg:
        drop(pg)
        pg.execute(f"""create table {BRACES} (id int primary key, tags text[] not null default '{{a}}',
                       doc jsonb not null default '{{}}', constraint no_empty check (tags <> '{{}}'),
                       constraint not_x check (doc <> '{{"x": 1}}')) with (fillfactor = 90)""")
        pg.execute(f"insert into {BRACES} values (1, '{{a,b}}', '{{\"y\": 2}}')")
        pg.execute(f"""create view {BRACES}_v as select id, tags, '{{z}}'::text[] as extra from {BRACES}
                       where tags <> '{{q}}'""")
        pg.execute(f"alter view {BRACES}_v alter column tags set default '{{d}}'")
        pg.execute(f"""create table {BRACES}_parts (k text[] not null, v int) partition by list (k)""")
        pg.execute(f"""create table {BRACES}_p1 partition of {BRACES}_parts for values in ('{{a}}')""")
        pg.execute(f"insert into {BRACES}_parts values ('{{a}}', 1)")
    yield settings
    with pg_connect(settings, autocommit=True) as pg:
        drop(pg)


def test_catalog_text_holding_braces_is_carried_over_by_the_swap(braces: Any) -> None:
    """Check constraints, a view's definition and defaults, reloptions and a partition bound holding `{}` (array
    and JSON literals) go through the build and the swap: they are format() arguments, never its template."""
    with pg_connect(braces) as conn:
        before = {t: swap.catalog(conn, t) for t in (BRACES, f"{BRACES}_p1")}
        for t in before:
            swap.create_replacement(conn, t, "brace1")
            conn.execute(f"insert into {ident(swap.replacement(t, 'brace1'))} select * from {ident(t)}")
            swap.build(conn, before[t], "brace1")
        swap.swap(conn, list(before.values()), "brace1")
        conn.commit()
        after = {t: swap.catalog(conn, t) for t in before}
        for t in before:
            assert [c[:3] for c in after[t]["constraints"]] == [c[:3] for c in before[t]["constraints"]]
            assert after[t]["options"] == before[t]["options"] and after[t]["bound"] == before[t]["bound"]
        assert (after[BRACES]["options"] == ["fillfactor=90"]
                and after[f"{BRACES}_p1"]["bound"] == "FOR VALUES IN ('{a}')")
        assert conn.execute(f"select id, tags, extra from {BRACES}_v").fetchall() == [(1, ["a", "b"], ["z"])]
        assert conn.execute(f"""select pg_get_expr(d.adbin, d.adrelid) from pg_attrdef d
                                where d.adrelid = '{BRACES}_v'::regclass""").fetchone()[0] == "'{d}'::text[]"
        assert conn.execute(f"select count(*) from {BRACES}_parts").fetchone()[0] == 1
