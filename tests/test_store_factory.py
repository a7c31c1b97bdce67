"""One store factory (backups.store_for) and one place that decides the default backup folder
(Settings.backup_folder), used by the job options, the health check and the stack alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import backups, store
from worker.settings import Settings


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BACKUP_DIR", "S3_BUCKET_NAME", "WORKTASK_STATE_DIR", "BACKUP_PREFIX"):
        monkeypatch.delenv(var, raising=False)


def test_the_default_folder_is_backups_in_the_state_folder_made_absolute(clean_env: None, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings(_env_file=None)
    assert s.backup_folder == (tmp_path / ".worktask" / "backups").resolve()
    assert backups.store_options(s)["backup_dir"] == str(s.backup_folder)
    s = Settings(_env_file=None, worktask_state_dir=tmp_path / "state")
    assert s.backup_folder == tmp_path / "state" / "backups"
    s = Settings(_env_file=None, worktask_state_dir=tmp_path / "state", backup_dir=Path("elsewhere"))
    assert s.backup_folder == tmp_path / "elsewhere"


def test_one_factory_without_options_is_the_processs_own_store(clean_env: None, tmp_path: Path) -> None:
    s = Settings(_env_file=None, backup_dir=tmp_path / "b")
    own, by_options = backups.store_for(s), backups.store_for(s, backups.store_options(s))
    assert isinstance(own, store.LocalStore) and own.url() == by_options.url() == f"file://{tmp_path / 'b'}"
    s3 = backups.store_for(Settings(_env_file=None, s3_bucket_name="bucket-a"))
    assert isinstance(s3, store.S3Store) and s3.url() == "s3://bucket-a/"
    # a job's options win over the worker's own configuration (the submitting CLI chose the store)
    theirs = backups.store_for(s, {**backups.store_options(s), "backup_dir": str(tmp_path / "c")})
    assert theirs.url() == f"file://{tmp_path / 'c'}"
    assert not hasattr(store, "get_store")
