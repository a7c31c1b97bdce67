"""How a PostgreSQL table is split into backup chunks, and which rows a chunk holds.

Every table is cut into ranges of pages by `ctid`, as pgcopydb does: PostgreSQL 14+ reads
`ctid >= '(lo,0)' and ctid < '(hi,0)'` as a TID Range Scan (sequential reads of those pages only, no
index, any table, with or without a key). The plan costs no scan: the table's size in pages now and its
rows per page from a sample of SAMPLE_PAGES pages spread over it (the catalog's statistics can be far off:
a table emptied and filled again since its last ANALYZE). The first chunk starts at page 0 and the last
has no upper bound, so the chunks tile the table whatever it grew to after planning (rows added after
the snapshot are invisible to it anyway); `check_tiling` proves that of a plan before its manifest is written.

A chunk in the plan and the manifest is one of
    {"n": 0, "ctid": [lo, hi]}     pages lo <= page < hi (hi null = to the end)
    {"n": 0}                       the whole table
    {"n": 0, "range": [lo, hi]}    key range lo <= key < hi (text of the key's type; null = unbounded):
                                   backups made before ctid planning (format 1 recorded integers as numbers);
                                   restores still read them
"""

from __future__ import annotations

import math
import re
from typing import Any

from worker.sqltext import ident

TYPE_NAME = re.compile(r'[A-Za-z0-9_ ."]+(\[\])?')  # what regtype prints: bigint, "My Type", public.x
SAMPLE_PAGES = 32  # pages read to learn a table's rows per page,
SAMPLE_RUNS = 8  # in this many runs of consecutive pages spread evenly over the table


def plan_page_chunks(pages: int, rows: float, chunk_rows: int) -> list[dict[str, Any]]:
    """Page ranges of about `chunk_rows` rows each for a table of `pages` pages holding about `rows` rows."""
    if rows <= chunk_rows or pages <= 1:
        return [{"n": 0}]
    n = math.ceil(rows / chunk_rows)
    step = max(1, math.ceil(pages / n))
    starts = list(range(0, pages, step))
    return [{"n": i, "ctid": [lo, starts[i + 1] if i + 1 < len(starts) else None]} for i, lo in enumerate(starts)]


def check_tiling(table: str, chunks: list[dict[str, Any]]) -> str | None:
    """None when the page-range chunks cover every page once (0 to the end, each starting where the last
    ended) or the table is one whole chunk; else what is wrong."""
    if len(chunks) == 1 and not chunks[0].get("ctid") and not chunks[0].get("range"):
        return None
    edges = [c.get("ctid") for c in sorted(chunks, key=lambda c: c["n"])]
    if any(e is None for e in edges):
        return f"table {table}: a chunk without a page range among page-range chunks"
    if edges[0][0] != 0 or edges[-1][1] is not None:
        return f"table {table}: the chunks do not start at page 0 and run to the end"
    for prev, nxt in zip(edges, edges[1:]):
        if prev[1] != nxt[0]:
            return f"table {table}: pages {prev[1]}..{nxt[0]} fall between two chunks"
    return None


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
