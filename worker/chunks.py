"""How a PostgreSQL table is split into backup chunks, and which rows a chunk holds.

Chunks follow rows, not key span: a table with a primary key is cut at every CHUNK_ROWS-th value of its
leading key column (any orderable type: integers, text, uuid, timestamps), read in key order through the
backup's snapshot; a table without a primary key is cut into ranges of pages by `ctid` (as pgcopydb
does), sized by its rows per page. The first chunk has no lower bound and the last no upper bound, so no
bound is ever computed past the largest value (the full `bigint` range round-trips).

A chunk in the plan and the manifest is one of
    {"n": 0, "range": [lo, hi]}    key range lo <= key < hi (text of the key's type; null = unbounded)
    {"n": 0, "ctid": [lo, hi]}     pages lo <= page < hi (hi null = to the end)
    {"n": 0}                       the whole table
Manifests of format 1 recorded integer ranges as numbers; they are read the same way.
"""

from __future__ import annotations

import math
import re
from typing import Any

import psycopg
from psycopg import sql

from worker.sqltext import ident

TYPE_NAME = re.compile(r'[A-Za-z0-9_ ."]+(\[\])?')  # what regtype prints: bigint, "My Type", public.x


def plan_key_chunks(conn: psycopg.Connection, table: str, key: str, count: int,
                    chunk_rows: int) -> list[dict[str, Any]]:
    """Key ranges of about `chunk_rows` rows each, cut at every chunk_rows-th key value (an index scan)."""
    if count <= chunk_rows:
        return [{"n": 0, "range": [None, None]}]
    cuts = conn.execute(sql.SQL("""
        select k::text from (select {k} as k, row_number() over (order by {k}) as rn from {t}) s
        where mod(s.rn, {every}) = 1 and s.rn > 1 order by s.rn""").format(
        k=sql.Identifier(key), t=sql.Identifier(table), every=sql.Literal(chunk_rows))).fetchall()
    bounds: list[str | None] = [None]
    for (value,) in cuts:
        if value != bounds[-1]:  # a composite key's leading column may repeat: never an empty range
            bounds.append(value)
    bounds.append(None)
    return [{"n": i, "range": [bounds[i], bounds[i + 1]]} for i in range(len(bounds) - 1)]


def plan_page_chunks(conn: psycopg.Connection, table: str, count: int, chunk_rows: int) -> list[dict[str, Any]]:
    """Page ranges (by ctid) holding about `chunk_rows` rows each, for a table without a primary key."""
    if count <= chunk_rows:
        return [{"n": 0}]
    pages = conn.execute("select pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                         (ident(table),)).fetchone()[0]
    n = math.ceil(count / chunk_rows)
    step = max(1, math.ceil(pages / n))
    starts = list(range(0, max(pages, 1), step))
    return [{"n": i, "ctid": [lo, starts[i + 1] if i + 1 < len(starts) else None]} for i, lo in enumerate(starts)]


def row_filter(table: dict[str, Any], chunk: dict[str, Any], first_param: int = 1) -> tuple[str, list[Any]]:
    """The WHERE clause (with $n parameters, for asyncpg) that selects a chunk's rows, and its arguments;
    ("", []) for a whole table. The bounds are parameters; the key column is an identifier (sqltext.ident);
    the key's type, a name as regtype prints it, is checked against TYPE_NAME before it is written."""
    conds: list[str] = []
    args: list[Any] = []
    if chunk.get("ctid"):
        column, cast, (lo, hi) = "ctid", "::text::tid", chunk["ctid"]
        lo, hi = f"({lo},0)", (f"({hi},0)" if hi is not None else None)
    elif chunk.get("range") and any(v is not None for v in chunk["range"]):
        key_type = table.get("key_type")
        if key_type and not TYPE_NAME.fullmatch(key_type):
            raise ValueError(f"not a type name: {key_type!r}")
        column, cast, (lo, hi) = ident(table["key"]), (f"::text::{key_type}" if key_type else ""), chunk["range"]
        if key_type:
            lo, hi = (None if lo is None else str(lo)), (None if hi is None else str(hi))
    else:
        return "", []
    for op, value in ((">=", lo), ("<", hi)):
        if value is not None:
            args.append(value)
            conds.append(f"{column} {op} ${first_param + len(args) - 1}{cast}")
    return " where " + " and ".join(conds), args
