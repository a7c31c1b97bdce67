"""SQL text from names and values, for the places no driver composes it for us.

Prefer, in this order: a parameter (`%s`, `$1`, `:name`); psycopg's `sql.SQL(...).format(sql.Identifier(...),
sql.Literal(...))` where a psycopg connection runs the statement; these two helpers where the text goes
elsewhere (asyncpg, SQLAlchemy `text()`, a statement built before any connection exists).

Both are psycopg's own composition, `as_string(None)`: psycopg 3.2+ composes an Identifier without a
connection (double quotes, inner quotes doubled, UTF-8: the same as PostgreSQL's quote_ident but always quoted)
and a Literal with its default adapters (a string as '...' with quotes doubled, E'...' when it holds a
backslash, so it reads the same whatever standard_conforming_strings is; None as NULL; numbers bare).

Not for matching catalog text: pg_get_*def() prints names as quote_ident does (quoted only where needed);
worker/swap.py asks the server for that form where it must match it.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql


def ident(*names: str) -> str:
    """A quoted identifier, dotted when qualified: ident("a") == '"a"', ident("s", "t") == '"s"."t"'."""
    return sql.Identifier(*names).as_string(None)


def literal(value: Any) -> str:
    """A literal: literal("it's") == "'it''s'", literal(None) == "NULL", literal(5) == "5"."""
    return sql.Literal(value).as_string(None)
