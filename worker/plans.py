"""The plan each job family keeps in its job record (worker/jobs.py save_plan/load_plan), as models.

A plan is written once by the family's start task and read by its chunk and finalize tasks; tables
and chunks keep the shapes the backup format gives them (worker/manifest.py, DESIGN §9).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BackupPlan(BaseModel):
    """What a backup reads: the tables with their chunks, under one exported snapshot."""

    created_at: str  # when planning began (ISO 8601, UTC); the manifest's created_at
    started: float  # epoch seconds, for the duration
    snapshot_time: float  # epoch seconds at which the snapshot was exported (the DynamoDB export's instant)
    source: dict[str, Any]  # server version, database, migration head, the DynamoDB table
    options: dict[str, Any]  # the job's options (store, compression, encryption, chunk rows …), no secrets
    encryption: dict[str, Any] | None = None  # the wrapped data key, kept across restarts
    tables: list[dict[str, Any]]  # per table: name, store, columns, keys, planned_rows, chunks [{n, range|ctid}]

    def table(self, name: str) -> dict[str, Any]:
        return next(t for t in self.tables if t["name"] == name)

    def chunk(self, table: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        t = self.table(table)
        return t, next(c for c in t["chunks"] if c["n"] == n)


class RestorePlan(BaseModel):
    """What a restore loads: the manifest's tables it was asked for, and what each step decided."""

    backup_id: str
    tag: str  # marks this restore's replacement tables
    options: dict[str, Any]
    encryption: dict[str, Any] | None = None
    compress: bool
    started: float
    tables: list[dict[str, Any]]  # the manifest's entries of the wanted tables
    skipped: list[dict[str, str]] = Field(default_factory=list)  # {name, reason}: not touched
    ok_tables: list[str] = Field(default_factory=list)  # verified and loadable
    plain_generated: list[str] = Field(default_factory=list)  # tables whose generated columns load as plain ones
    unlisted: list[str] = Field(default_factory=list)  # objects in the backup's folder the manifest does not list

    def table(self, name: str) -> dict[str, Any]:
        return next(t for t in self.tables if t["name"] == name)

    def chunk(self, table: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        t = self.table(table)
        return t, next(c for c in t["chunks"] if c["n"] == n)


class BackupValidatePlan(BaseModel):
    """How the chunks of the backup under validation were written."""

    encryption: dict[str, Any] | None = None
    compressed: bool
