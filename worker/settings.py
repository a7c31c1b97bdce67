"""One settings class for every variable of the guide (DESIGN §4), read from the environment and `.env`.

A bad value becomes one BadInput line that names the variable and what it accepts.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dotenv.parser import parse_stream
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.constants import RETENTION_DAYS_MAX  # the one bound of RETENTION_DAYS and --retention-days
from worker.errors import BadInput
from worker.fixes import DEFAULT_KINDS as FIX_KINDS_DEFAULT
from worker.fixes import parse_kinds

BOOL = "true or false"
SECRET_FIELDS = ("postgres_password", "backup_encryption_key", "flower_basic_auth")


def _f(default: Any, accepts: str, **kw: Any) -> Any:
    return Field(default, description=accepts, **kw)


CRONTAB_ACCEPTS = ("a crontab of 5 fields, minute hour day-of-month month day-of-week (UTC), "
                   "e.g. '0 1 * * *' or '*/15 * * * *'")
DEFAULT_BACKUP_SCHEDULE = "0 1 * * *"  # 01:00 UTC; clean-up 02:30 (CLEANUP_HOUR/MINUTE), maintenance 03:30
DEFAULT_MAINTENANCE_SCHEDULE = "30 3 * * *"
DEFAULT_DRILL_SCHEDULE = "0 5 * * 0"  # Sundays 05:00 UTC: a restore drill of the newest complete backup


def parse_crontab(expr: str) -> Any:
    """celery's crontab for a 5-field expression; ValueError (with the reason) when it is not one."""
    from celery.schedules import ParseException, crontab

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} field(s), not 5")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                       day_of_week=day_of_week)
    except (ParseException, ValueError, TypeError, IndexError) as err:
        raise ValueError(str(err) or type(err).__name__) from None




class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True)

    # The guide's variables, with its defaults.
    aws_region: str = _f("us-east-1", "an AWS region name such as us-east-1", min_length=1)
    dynamo_table_name: str = _f("ai-agent-system", "a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)",
                                pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    postgres_secret_arn: str | None = _f(None,
                                         "a Secrets Manager ARN or name holding username/password/host/port/dbname")
    postgres_host: str = _f("localhost", "a host name, an IP address or a Unix socket folder", min_length=1)
    postgres_port: int = _f(5432, "a TCP port, 1-65535", ge=1, le=65535)
    postgres_database: str = _f("ai_agent_system", "a database name", min_length=1)
    s3_bucket_name: str | None = _f(None, "an S3 bucket name (unset: backups go to BACKUP_DIR)")
    migrations_path: Path | None = _f(None, "a folder holding an Alembic script directory")
    backup_prefix: str = _f("backups", "a key prefix: parts of [0-9A-Za-z_.-] joined by /, none '.' or '..'",
                            pattern=r"^[0-9A-Za-z_.-]+(/[0-9A-Za-z_.-]+)*$")  # pydantic's (Rust) $: end of text
    retention_days: int = _f(30, "a whole number of days, 1-36500", ge=1, le=RETENTION_DAYS_MAX)
    dry_run: bool = _f(False, BOOL)
    skip_existing: bool = _f(False, BOOL)
    tables_only: str | None = _f(None, "a comma-separated list of table names, e.g. services,dependencies")
    compression_enabled: bool = _f(True, BOOL)
    encryption_enabled: bool = _f(True, BOOL)
    skip_migrations: bool = _f(False, BOOL)
    skip_seeding: bool = _f(False, BOOL)
    skip_backup: bool = _f(False, BOOL)
    skip_validation: bool = _f(False, BOOL)
    generate_test_data: bool = _f(False, BOOL)
    test_data_count: int = _f(10, "a whole number of work tasks, 1-10000000", ge=1, le=10_000_000)
    fix_issues: bool = _f(False, BOOL)
    debug: bool = _f(False, BOOL)

    # Added by this project.
    postgres_user: str = _f("postgres", "a PostgreSQL role name", min_length=1)
    postgres_password: SecretStr | None = _f(None, "the PostgreSQL password (or use POSTGRES_SECRET_ARN)")
    postgres_connect_timeout: int = _f(5, "seconds, 1-120", ge=1, le=120)
    celery_broker_url: str = _f("redis://127.0.0.1:6379/0", "a redis:// or redis+socket:// URL",
                                pattern=r"^(redis|rediss|redis\+socket)://")
    celery_result_backend: str | None = _f(None, "a redis:// or redis+socket:// URL (default: the broker)",
                                           pattern=r"^(redis|rediss|redis\+socket)://")
    aws_endpoint_url: str | None = _f(None, "an http(s):// URL of an AWS-compatible endpoint (moto, LocalStack)",
                                      pattern=r"^https?://")
    backup_dir: Path | None = _f(None, "a folder for backups when S3_BUCKET_NAME is unset")
    backup_encryption_key: SecretStr | None = _f(None, "base64 of 32 random bytes (worktask keygen prints one)")
    backup_kms_key_id: str | None = _f(None, "a KMS key id, ARN or alias")
    chunk_rows: int = _f(100_000, "rows per backup chunk, 1000-100000000", ge=1000, le=100_000_000)
    dynamo_segments: int = _f(4, "parallel scan segments, 1-256", ge=1, le=256)
    task_time_limit: int = _f(1800, "seconds a chunk task may run, 10-86400", ge=10, le=86_400)
    visibility_timeout: int = _f(7200, "seconds, above TASK_TIME_LIMIT", ge=60, le=7 * 86_400)
    snapshot_max_lifetime: int = _f(4 * 3600, "seconds a backup may hold its snapshot, 60-86400", ge=60, le=86_400)
    backup_lock_timeout: float = _f(30, "seconds a backup waits to lock each table (ACCESS SHARE), 0.1-3600",
                                    ge=0.1, le=3600)
    backup_rate_limit: int = _f(0, "raw bytes per second per chunk stream, 0 for no limit", ge=0)
    max_chunk_attempts: int = _f(4, "deliveries of one chunk before the job fails, 1-20", ge=1, le=20)
    job_timeout: int = _f(3600, "seconds the CLI waits for a job, 5-604800", ge=5, le=604_800)
    migration_lock_timeout: float = _f(5, "seconds a migration waits for a table lock, 0.1-600", ge=0.1, le=600)
    migration_lock_wait: float = _f(60, "seconds a migrate waits for another migrate to finish, 0-3600", ge=0, le=3600)
    cleanup_hour: int = _f(2, "hour (UTC, 0-23) of the nightly backup retention clean-up", ge=0, le=23)
    cleanup_minute: int = _f(30, "minute (0-59) of the nightly backup retention clean-up", ge=0, le=59)
    health_interval_minutes: int = _f(15, "minutes between scheduled health checks: 1-59, or whole hours up to 1440",
                                      ge=1, le=1440)
    backup_schedule: str = _f(DEFAULT_BACKUP_SCHEDULE, CRONTAB_ACCEPTS)
    cleanup_schedule: str | None = _f(None, CRONTAB_ACCEPTS + " (default: from CLEANUP_HOUR/CLEANUP_MINUTE)")
    maintenance_schedule: str = _f(DEFAULT_MAINTENANCE_SCHEDULE, CRONTAB_ACCEPTS)
    health_schedule: str | None = _f(None, CRONTAB_ACCEPTS + " (default: from HEALTH_INTERVAL_MINUTES)")
    flower_basic_auth: SecretStr | None = _f(None, "user:password for Flower's basic auth")
    worktask_state_dir: Path = _f(Path(".worktask"), "a folder for the embedded stack's state and logs")
    backup_max_age_hours: float = _f(26, "hours (a number, 0.01-8760) before health calls the newest complete "
                                     "backup stale", ge=0.01, le=8760)
    drill_schedule: str = _f(DEFAULT_DRILL_SCHEDULE, CRONTAB_ACCEPTS + " (the restore drill of the newest backup)")
    # Safe fixes (worker/fixes.py): no fix touches a row or item younger than this; which kinds run unattended.
    fix_min_age_minutes: float = _f(60, "minutes (a number, 0-10080) a row must have been left alone before a fix "
                                    "touches it", ge=0, le=10_080)
    fix_kinds: str = _f(FIX_KINDS_DEFAULT, "a comma-separated list of fix kinds, or all (worktask validate --help)")
    # Retention by count, beside RETENTION_DAYS (restic's forget --keep-*): a complete backup is kept when any rule
    # keeps it; 0 turns a rule off. The newest complete, newest validated and newest drilled backups are always kept.
    retention_keep_last: int = _f(0, "the newest N complete backups are kept, 0-100000 (0: off)", ge=0, le=100_000)
    retention_keep_daily: int = _f(0, "the newest backup of each of the last N days is kept (0: off)", ge=0, le=100_000)
    retention_keep_weekly: int = _f(0, "the newest backup of each of the last N ISO weeks is kept (0: off)",
                                    ge=0, le=100_000)
    retention_keep_monthly: int = _f(0, "the newest backup of each of the last N months is kept (0: off)",
                                     ge=0, le=100_000)

    @field_validator("backup_encryption_key")
    @classmethod
    def _key_is_32_bytes(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            try:
                raw = base64.b64decode(v.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not base64") from None
            if len(raw) != 32:
                raise ValueError("not 32 bytes")
        return v

    @field_validator("fix_kinds")
    @classmethod
    def _fix_kinds(cls, v: str) -> str:
        try:
            return ",".join(parse_kinds(v, "FIX_KINDS"))
        except BadInput as err:
            raise ValueError(str(err).split(": ", 1)[1]) from None

    @field_validator("tables_only")
    @classmethod
    def _table_list(cls, v: str | None) -> str | None:
        if v is None:
            return None
        names = [n.strip() for n in v.split(",")]
        if not all(names):
            raise ValueError("an empty table name (unset it to mean every table)")
        return ",".join(names)

    @field_validator("backup_prefix")
    @classmethod
    def _prefix_stays_in_the_store(cls, v: str) -> str:
        if any(part in (".", "..") for part in v.split("/")):
            raise ValueError("a part '.' or '..' would leave the store")
        return v

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and ":" not in v.get_secret_value():
            raise ValueError("expects user:password")
        return v

    @field_validator("backup_schedule", "cleanup_schedule", "maintenance_schedule", "health_schedule",
                     "drill_schedule")
    @classmethod
    def _crontab(cls, v: str | None) -> str | None:
        if v is not None:
            v = " ".join(v.split())
            parse_crontab(v)
        return v

    @model_validator(mode="after")
    def _health_interval_is_a_crontab(self) -> Settings:
        m = self.health_interval_minutes
        if self.health_schedule is None and not (m < 60 or m % 60 == 0):
            raise ValueError(f"HEALTH_INTERVAL_MINUTES={m} is not a crontab step (1-59, or whole hours): "
                             "set HEALTH_SCHEDULE instead")
        return self

    @model_validator(mode="after")
    def _visibility_above_time_limit(self) -> Settings:
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError("VISIBILITY_TIMEOUT must be above TASK_TIME_LIMIT")
        return self

    # Derived values.
    @property
    def result_backend(self) -> str:
        return self.celery_result_backend or self.celery_broker_url

    @property
    def backup_folder(self) -> Path:
        """The one place that decides where backups go when S3_BUCKET_NAME is unset: BACKUP_DIR, else the folder
        `backups` in WORKTASK_STATE_DIR; absolute, so that it means the same to the CLI, the workers and the stack."""
        return (self.backup_dir or self.worktask_state_dir / "backups").expanduser().resolve()

    @property
    def schedules(self) -> dict[str, str]:
        """The effective crontab expression of each scheduled job kind (beat_schedule.py, the start tasks)."""
        m = self.health_interval_minutes
        health = f"*/{m} * * * *" if m < 60 else f"0 */{m // 60} * * *"
        return {"backup": self.backup_schedule,
                "backup_cleanup": self.cleanup_schedule or f"{self.cleanup_minute} {self.cleanup_hour} * * *",
                "maintenance": self.maintenance_schedule,
                "health": self.health_schedule or health,
                "drill": self.drill_schedule}

    def crontab(self, kind: str) -> Any:
        """celery's crontab of the scheduled job kind (validated when the settings were read)."""
        return parse_crontab(self.schedules[kind])

    @property
    def tables(self) -> list[str]:
        return self.tables_only.split(",") if self.tables_only else []

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration, secrets masked; keys are the variable names."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[name.upper()] = value
        return out


def mask_url(url: str) -> str:
    """A URL with its password replaced by ***, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    return url


def describe_error(err: ValidationError) -> str:
    """One line naming the first bad variable and what it accepts."""
    first = err.errors()[0]
    if not first["loc"]:
        return f"invalid configuration: {first['msg'].removeprefix('Value error, ')}"
    name = str(first["loc"][0])
    field = Settings.model_fields.get(name)
    accepts = field.description if field is not None else first["msg"]
    shown = first.get("input")
    if name in SECRET_FIELDS:
        shown = "********"
    elif isinstance(shown, str) and "://" in shown:
        shown = mask_url(shown)
    value = f"={shown!r}" if isinstance(shown, (str, int, float)) else ""
    return f"{name.upper()}{value} is not valid: expects {accepts}"


def stack_overrides(state_dir: Path) -> dict[str, str]:
    """Values written by `worktask stack up` for the services it started (they replace dead ones)."""
    path = state_dir / "stack.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k.lower(): v for k, v in data.get("env", {}).items()}


def check_env_file(path: Path = Path(".env")) -> None:
    """A .env that is not UTF-8 text of NAME=value lines is refused naming its line (pydantic-settings would
    crash on the first and skip the second with a warning)."""
    if not path.is_file():
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise BadInput(f"{path.resolve()} line {line}: not UTF-8 text; fix or remove that line") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise BadInput(f"{path.resolve()} line {binding.original.line}: not a NAME=value setting "
                           f"({binding.original.string.strip()[:40]!r}); fix or remove that line")


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; a bad value raises BadInput naming the variable."""
    check_env_file()
    try:
        base = Settings(**overrides)
        stack = {} if os.environ.get("WORKTASK_IGNORE_STACK") else stack_overrides(base.worktask_state_dir)
        if not stack:
            return base
        for name, value in stack.items():  # e.g. moto's dummy AWS credentials, read by boto3 itself
            if name not in Settings.model_fields:
                os.environ.setdefault(name.upper(), value)
        fields = {k: v for k, v in stack.items() if k in Settings.model_fields}
        return Settings(**{**fields, **overrides})
    except ValidationError as err:
        raise BadInput(describe_error(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
