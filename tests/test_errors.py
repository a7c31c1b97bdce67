"""One error tree (worker/errors.py): every exception class of the project is defined there, with its exit code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker import errors

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("name", "base", "exit_code"), [
    ("BadInput", errors.WorktaskError, 2), ("ServiceUnavailable", errors.WorktaskError, 3),
    ("JobFailed", errors.WorktaskError, 1), ("JobTimeout", errors.WorktaskError, 1),
    ("PoisonChunk", errors.WorktaskError, 1), ("MigrationFailed", errors.JobFailed, 1),
    ("SnapshotLost", errors.JobFailed, 1)])
def test_worktask_errors_keep_their_exit_codes(name: str, base: type, exit_code: int) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, base) and cls.exit_code == exit_code


@pytest.mark.parametrize("name", ["CorruptChunk", "LockTimeout", "ExportPending", "FixPending"])
def test_internal_signals_live_in_the_tree_but_are_no_worktask_errors(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, Exception) and not issubclass(cls, errors.WorktaskError)


def test_the_old_import_paths_name_the_same_classes() -> None:
    from worker import archive, dynamo, migrator, snapshot

    assert archive.CorruptChunk is errors.CorruptChunk and migrator.MigrationFailed is errors.MigrationFailed
    assert snapshot.LockTimeout is errors.LockTimeout and dynamo.ExportPending is errors.ExportPending
    assert errors.LockTimeout("held by pid 7").message == "held by pid 7"


def test_no_exception_class_is_defined_outside_the_tree() -> None:
    found = []
    for path in sorted([*ROOT.glob("worker/*.py"), *ROOT.glob("tasks/*.py")]):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if bases & {"Exception", "BaseException", "WorktaskError", "JobFailed", "BadInput",
                            "ServiceUnavailable", "JobTimeout"} or any(b.endswith("Error") for b in bases):
                    found.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert found == []
