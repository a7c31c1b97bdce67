"""Configuration: the guide's variables and defaults, bad values exit 2 naming the variable, secrets masked."""

from __future__ import annotations

import pytest

from conftest import run_cli
from worker.errors import BadInput
from worker.settings import Settings, load_settings, mask_url


def test_defaults_are_the_guides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DYNAMO_TABLE_NAME", "POSTGRES_DATABASE", "BACKUP_PREFIX", "RETENTION_DAYS"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None)
    assert s.dynamo_table_name == "ai-agent-system"
    assert s.postgres_database == "ai_agent_system"
    assert s.backup_prefix == "backups"
    assert s.retention_days == 30
    assert s.compression_enabled and s.encryption_enabled
    assert not (s.dry_run or s.skip_existing or s.fix_issues)


def test_every_variable_of_the_guide_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"AWS_REGION": "eu-west-1", "DYNAMO_TABLE_NAME": "t-1", "POSTGRES_SECRET_ARN": "arn:x",
              "POSTGRES_HOST": "db", "POSTGRES_PORT": "6543", "POSTGRES_DATABASE": "d", "S3_BUCKET_NAME": "b",
              "MIGRATIONS_PATH": "/m", "BACKUP_PREFIX": "p/q", "RETENTION_DAYS": "7", "DRY_RUN": "true",
              "SKIP_EXISTING": "1", "TABLES_ONLY": "services, dependencies", "COMPRESSION_ENABLED": "false",
              "ENCRYPTION_ENABLED": "false", "SKIP_MIGRATIONS": "true", "SKIP_SEEDING": "true",
              "SKIP_BACKUP": "true", "SKIP_VALIDATION": "true", "GENERATE_TEST_DATA": "true",
              "TEST_DATA_COUNT": "42", "FIX_ISSUES": "true", "DEBUG": "true"}
    monkeypatch.setenv("WORKTASK_IGNORE_STACK", "1")
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.aws_region, s.dynamo_table_name, s.postgres_secret_arn, s.postgres_host) == (
        "eu-west-1", "t-1", "arn:x", "db")
    assert (s.postgres_port, s.postgres_database, s.s3_bucket_name, str(s.migrations_path)) == (6543, "d", "b", "/m")
    assert (s.backup_prefix, s.retention_days, s.tables) == ("p/q", 7, ["services", "dependencies"])
    assert s.dry_run and s.skip_existing and s.skip_migrations and s.skip_seeding and s.skip_backup
    assert s.skip_validation and s.generate_test_data and s.fix_issues and s.debug
    assert not s.compression_enabled and not s.encryption_enabled
    assert s.test_data_count == 42


@pytest.mark.parametrize("var,value", [("RETENTION_DAYS", "-1"), ("TEST_DATA_COUNT", "abc"), ("DRY_RUN", "maybe"),
                                       ("POSTGRES_PORT", "70000"), ("BACKUP_ENCRYPTION_KEY", "c2hvcnQ="),
                                       ("CELERY_BROKER_URL", "amqp://x"), ("BACKUP_PREFIX", "/abs")])
def test_bad_value_exits_2_with_one_line_naming_the_variable(var: str, value: str) -> None:
    proc = run_cli("config", env={var: value})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0] and "expects" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_key_value_is_not_echoed() -> None:
    proc = run_cli("config", env={"BACKUP_ENCRYPTION_KEY": "c2VjcmV0LXZhbHVl"})
    assert proc.returncode == 2 and "c2VjcmV0LXZhbHVl" not in proc.stderr


def test_config_json_masks_secrets() -> None:
    env = {"POSTGRES_PASSWORD": "hunter2", "CELERY_BROKER_URL": "redis://:pw-in-url@127.0.0.1:6379/9",
           "BACKUP_ENCRYPTION_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "WORKTASK_IGNORE_STACK": "1"}
    from conftest import cli_json
    code, data = cli_json("config", env=env)
    assert code == 0
    assert data["POSTGRES_PASSWORD"] == "********" and data["BACKUP_ENCRYPTION_KEY"] == "********"
    assert "pw-in-url" not in data["CELERY_BROKER_URL"] and data["CELERY_BROKER_URL"].endswith("127.0.0.1:6379/9")
    assert data["RETENTION_DAYS"] == 30


def test_visibility_timeout_must_exceed_task_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_TIME_LIMIT", "600")
    monkeypatch.setenv("VISIBILITY_TIMEOUT", "300")
    with pytest.raises(BadInput, match="VISIBILITY_TIMEOUT"):
        load_settings()


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
