"""Job reports: pydantic models, also the `--json` output (DESIGN §11)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobReport(BaseModel):
    job_id: str
    kind: str
    state: Literal["succeeded", "failed"]
    ok: bool
    started_at: datetime | None = None
    finished_at: datetime | None = None
    dry_run: bool = False
    error: str | None = None


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    hint: str | None = None  # what to do about a failing check (health)


class HealthReport(JobReport):
    kind: str = "health"
    status: Literal["healthy", "degraded", "unhealthy"]
    checks: list[Check] = Field(default_factory=list)


class Progress(BaseModel):
    """What `jobs show` and the progress bar read from Redis while a job runs."""

    job_id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed"]
    created_at: datetime | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    rows: int = 0
    bytes: int = 0
    rate_chunks_per_s: float | None = None
    rate_rows_per_s: float | None = None
    eta_seconds: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


class MigrateReport(JobReport):
    kind: str = "migrate"
    action: Literal["upgrade", "downgrade"]
    before: str | None = None
    after: str | None = None
    versions: list[str] = Field(default_factory=list)  # applied or rolled back, in order
    pending: list[str] = Field(default_factory=list)
    drift: list[str] = Field(default_factory=list)
    sql: str | None = None  # a dry run's SQL
    migrations_path: str = ""
    ensured: list[str] = Field(default_factory=list)  # state outside PostgreSQL put back


class SeedSet(BaseModel):
    name: str
    created: int = 0
    skipped: int = 0
    unchanged: int = 0
    conflicts: int = 0
    updated: int = 0
    conflict_keys: list[str] = Field(default_factory=list)


class SeedReport(JobReport):
    kind: str = "seed"
    config_only: bool = False
    sets: list[SeedSet] = Field(default_factory=list)


class BackupTable(BaseModel):
    name: str
    store: Literal["postgres", "dynamodb"]
    rows: int
    chunks: int
    bytes_raw: int
    bytes_stored: int
    seconds: float = 0.0
    capture: dict[str, Any] | None = None  # DynamoDB: {"method": "export", "at"} or {"method": "scan", "window"}


class BackupReport(JobReport):
    kind: str = "backup"
    backup_id: str
    tables: list[BackupTable] = Field(default_factory=list)
    totals: dict[str, Any] = Field(default_factory=dict)
    encrypted: bool = True
    compressed: bool = True
    restarts: int = 0  # fresh snapshots taken after the holder was lost


class BadChunk(BaseModel):
    table: str
    chunk: int
    path: str
    reason: str


class ValidateBackupReport(JobReport):
    kind: str = "backup_validate"
    backup_id: str
    chunks_checked: int = 0
    rows_checked: int = 0
    bad_chunks: list[BadChunk] = Field(default_factory=list)


class DrillTable(BaseModel):
    """One table of a restore drill: what the manifest recorded at backup time against what was restored."""

    name: str
    store: Literal["postgres", "dynamodb"]
    rows_expected: int
    rows_found: int | None = None
    hash_expected: str | None = None
    hash_found: str | None = None
    outcome: Literal["match", "mismatch", "hash not recorded", "not restored"]
    reason: str | None = None


class DrillReport(JobReport):
    """`backup verify ID --restore-test`: per table match / mismatch / hash not recorded / not restored; `marker`
    is what was written to verified.json. ok only when every table matches (or, without hashes, its count)."""

    kind: str = "backup_verify"
    backup_id: str | None
    tables: list[DrillTable] = Field(default_factory=list)
    marker: dict[str, Any] | None = None
    skipped: str | None = None


class CleanupReport(JobReport):
    kind: str = "backup_cleanup"
    retention_days: int
    policy: dict[str, int] = Field(default_factory=dict)  # retention_days, keep_last/_daily/_weekly/_monthly in force
    deleted: list[dict[str, Any]] = Field(default_factory=list)  # {backup_id, state, created_at, bytes_stored, reason}
    kept: int = 0  # how many backups stay (scripts read it)
    # every backup: {backup_id, created_at, state, bytes_stored, action: keep|delete, reasons: [...]}, newest first
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    aborted_uploads: list[str] = Field(default_factory=list)  # keys of unfinished uploads (a dry run: would abort)
    # every quarantine of fixes (worker/quarantine.py), newest first: {job_id, objects, bytes, last_write,
    # action: keep|delete, reason, error (only when deleting it failed)}
    quarantines: list[dict[str, Any]] = Field(default_factory=list)


class RestoreTable(BaseModel):
    name: str
    store: Literal["postgres", "dynamodb"]
    rows: int  # restored (a dry run: that would be written)
    chunks: int
    removed: int = 0  # rows replaced (PostgreSQL, dry run) or items deleted (DynamoDB --exact)
    seconds: float = 0.0


class RestoreReport(JobReport):
    kind: str = "restore"
    backup_id: str
    tables: list[RestoreTable] = Field(default_factory=list)
    skipped: list[dict[str, str]] = Field(default_factory=list)
    totals: dict[str, Any] = Field(default_factory=dict)
    unlisted: list[str] = Field(default_factory=list)  # objects in the backup's folder it does not list: not read


class TestDataReport(JobReport):
    __test__ = False  # not a pytest class
    kind: str = "testdata_generate"
    seed: int | None = None
    tasks: int = 0
    todos: int = 0
    deliverables: int = 0
    quality_checks: int = 0
    analysis_items: int = 0
    files: int = 0


class Issue(BaseModel):
    severity: Literal["error", "warning", "info"]
    category: Literal["schema", "referential", "consistency", "performance"]
    table: str
    key: str
    message: str
    fixable: bool = False
    fixed: bool = False
    kind: str | None = None  # the fix kind that repairs it (worker/fixes.py), when fixable
    pending: bool = False  # fixable, but left alone by this run (too young, first seen too recently): `note` says
    note: str | None = None  # why a fixable issue was not fixed (pending, not among the run's kinds, changed)


class ValidationReport(JobReport):
    kind: str = "validate"
    fix: bool = False
    records_checked: int = 0
    records_valid: int = 0
    issues: list[Issue] = Field(default_factory=list)
    by_severity: dict[str, int] = Field(default_factory=dict)
    by_category: dict[str, int] = Field(default_factory=dict)
    by_table: dict[str, int] = Field(default_factory=dict)
    fixed: int = 0
    fix_kinds: list[str] = Field(default_factory=list)  # the kinds this run could apply (with fix)
    pending: int = 0
    quarantine: str | None = None  # where what the fixes removed or overwrote is kept (worktask validate undo)
    quarantined: int = 0  # rows and items kept there


class PipelineStep(BaseModel):
    """One step of a pipeline (init, maintenance): the report of its job, or why it was skipped or failed."""

    name: str
    state: Literal["succeeded", "failed", "skipped"]
    job_id: str | None = None  # the step's job (none when skipped, or failed before its job was made)
    report: dict[str, Any] | None = None  # the step's job report; {"reason": …} when skipped or not submitted


class InitReport(JobReport):
    kind: str = "init"
    steps: list[PipelineStep] = Field(default_factory=list)  # migrate, seed, testdata, validate, backup


class MaintenanceReport(JobReport):
    kind: str = "maintenance"
    steps: list[PipelineStep] = Field(default_factory=list)  # backup_cleanup, validate, optimize


class OptimizeTable(BaseModel):
    name: str  # schema.table
    action: Literal["vacuumed", "skipped", "would vacuum"]
    why: str  # the figure that chose it
    reason: str | None = None  # why skipped (lock not granted within lock_timeout)
    before: dict[str, Any] = Field(default_factory=dict)  # n_live_tup, n_dead_tup, last_vacuum, last_autovacuum, …
    after: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class OptimizeReport(JobReport):
    kind: str = "optimize"
    dead_ratio: float  # the threshold of n_dead_tup / (n_live_tup + n_dead_tup)
    lock_timeout: float
    tables: list[OptimizeTable] = Field(default_factory=list)
    checked: int = 0  # user tables looked at


class UndoTable(BaseModel):
    store: Literal["postgres", "dynamodb"]
    table: str
    restored: int = 0  # put back (a dry run, or an undo refused: would be; nothing was)
    already: int = 0  # the live row is the one before the fix: nothing to do
    conflicts: int = 0  # changed since the fix: not put back


class UndoConflict(BaseModel):
    store: Literal["postgres", "dynamodb"]
    table: str
    key: str  # `id=123`, `todo_id=1 depends_on_todo_id=2`, `PK=TASK#1 SK=ANALYSIS`
    why: str  # key reused, moved on since the fix, gone since the fix, ...


class UndoSkipped(BaseModel):
    object: str  # the quarantine object
    why: str


class UndoReport(JobReport):
    """`worktask validate undo JOB_ID`: job_id is the validation job whose fixes are undone."""

    kind: str = "validate_undo"
    undo_id: str | None = None  # the undo's own job record (it holds the live restore lock); none for a dry run
    objects: list[str] = Field(default_factory=list)  # the quarantine objects read
    tables: list[UndoTable] = Field(default_factory=list)
    conflicts: list[UndoConflict] = Field(default_factory=list)
    skipped: list[UndoSkipped] = Field(default_factory=list)  # documents whose fixing transaction rolled back
