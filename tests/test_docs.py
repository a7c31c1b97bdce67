"""README.md and the CLI agree both ways (every command is in the README, every `worktask …` the README
names is a command) and every command's --help has an example; docker-compose runs real commands."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from conftest import ROOT, run_cli
from worker.cli import cli


def invocable(cmd: click.Command) -> bool:
    """A command one can run as it is: a leaf, or a group that runs without a subcommand (migrate, backup)."""
    return not isinstance(cmd, click.Group) or cmd.invoke_without_command


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        path = prefix + (name,)
        if invocable(cmd):
            out.append(path)
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, path)
    return out


WORD = re.compile(r"[a-z][a-z0-9_-]*")
MENTION = re.compile(r"(?<![\w./-])worktask(?=\s)")  # not worktask-data, `worktask`, worktask.<family>


def readme_mentions(text: str) -> list[list[str]]:
    """The words after each `worktask ` in the text, up to the first that cannot be a command name (an option,
    an ID, a closing backtick or bracket); a line break may fall inside (`worktask migrate\nrollback`)."""
    mentions = []
    for m in MENTION.finditer(text):
        words = []
        for token in text[m.end():m.end() + 200].split():
            word = WORD.match(token)
            if not word:
                break
            words.append(word.group())
            if word.end() != len(token):  # `worktask keygen)` or `worktask health`: the command ends here
                break
        mentions.append(words)
    return mentions


def resolve(words: list[str]) -> tuple[tuple[str, ...], str | None]:
    """The command path the words name, and why they name none (None when they do)."""
    cmd: click.Command = cli
    path: tuple[str, ...] = ()
    for word in words:
        if not isinstance(cmd, click.Group) or word not in cmd.commands:
            break
        cmd, path = cmd.commands[word], path + (word,)
    rest = words[len(path):]
    if not path:
        return path, f"no command {words[0]!r}" if words else None
    if not invocable(cmd) and rest:
        return path, f"no command {' '.join(path + (rest[0],))!r}"
    return path, None


def readme_commands() -> tuple[set[tuple[str, ...]], list[str]]:
    named, unknown = set(), []
    for words in readme_mentions((ROOT / "README.md").read_text()):
        path, problem = resolve(words)
        if problem:
            unknown.append(f"worktask {' '.join(words)}: {problem}")
        elif path:
            named.add(path)
    return named, unknown


def test_the_readme_parser_reads_commands_and_stops_at_arguments() -> None:
    text = ("run `worktask migrate\nrollback` then `worktask restore ID --dry-run`, $(worktask keygen) and "
            "worktask-data; `worktask` calls; worktask.backup.start; worktask frob; worktask stack frob")
    mentions = readme_mentions(text)
    assert mentions == [["migrate", "rollback"], ["restore"], ["keygen"], ["frob"], ["stack", "frob"]]
    assert [resolve(m)[1] for m in mentions] == [None, None, None, "no command 'frob'",
                                                 "no command 'stack frob'"]


def test_every_worktask_command_the_readme_names_exists() -> None:
    named, unknown = readme_commands()
    assert unknown == []
    assert ("backup", "list") in named and ("migrate",) in named


@pytest.mark.parametrize("path", all_commands(), ids=" ".join)
def test_every_command_is_in_the_readme_and_its_help_has_an_example(path: tuple[str, ...]) -> None:
    named, _unknown = readme_commands()
    assert path in named, f"worktask {' '.join(path)} is not in README.md"
    proc = run_cli(*path, "--help")
    assert proc.returncode == 0 and "Example" in proc.stdout


def test_docker_compose_runs_only_commands_the_project_has() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "aws", "worker", "beat", "flower"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "FLOWER_BASIC_AUTH" in str(services["flower"]["environment"])
    # Flower's /metrics and /healthcheck need no auth: published on the host's loopback only
    assert services["flower"]["ports"] and all(str(p).startswith("127.0.0.1:") for p in services["flower"]["ports"])
    checked = 0
    for name in ("worker", "beat", "flower"):
        argv = shlex.split(services[name]["command"]) if isinstance(services[name]["command"], str) \
            else services[name]["command"]
        assert argv[:3] == ["celery", "-A", "worker"], argv
        assert shutil.which("celery", path=str(Path(sys.executable).parent)), "celery is installed"
        proc = run_cli_celery(argv[3:] + ["--help"])  # unknown options fail here
        assert proc.returncode == 0, (argv, proc.stderr)
        checked += 1
    if "command" in services["aws"]:
        assert "moto_server" in str(services["aws"]["command"])
    assert checked == 3


def run_cli_celery(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    from worker.settings import Settings

    readme = (ROOT / "README.md").read_text()
    assert [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in readme] == []


RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
NODE = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")


def reliability_rows() -> list[tuple[str, list[tuple[str, str]]]]:
    """The rows of docs/RELIABILITY.md's tables: (the fault, the tests its last column names)."""
    rows = []
    for line in RELIABILITY.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or set(cells[0]) <= set("-: ") or cells[0] == "Fault":
            continue
        rows.append((cells[0], NODE.findall(cells[-1])))
    return rows


def test_every_row_of_the_reliability_document_names_a_test_that_exists() -> None:
    rows = reliability_rows()
    assert len(rows) > 40, "docs/RELIABILITY.md lost its tables"
    missing = []
    for fault, nodes in rows:
        if not nodes:
            missing.append(f"{fault}: no test named")
        for path, name in nodes:
            source = ROOT / path
            if not source.exists() or not re.search(rf"^def {name}\(", source.read_text(), re.M):
                missing.append(f"{fault}: {path}::{name} does not exist")
    assert not missing, "\n".join(missing)


def test_every_fault_test_has_a_row_in_the_reliability_document() -> None:
    named = {node for _, nodes in reliability_rows() for node in nodes}
    tests = {(f"tests/{p.name}", m.group(1)) for p in (ROOT / "tests").glob("test_fault_*.py")
             for m in re.finditer(r"^def (test_\w+)\(", p.read_text(), re.M)}
    assert tests, "no fault test module found"
    assert not tests - named, sorted(tests - named)
