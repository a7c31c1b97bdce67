"""Every CLI command is in README.md and has --help with an example; docker-compose runs real commands."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import click
import pytest
import yaml

from conftest import ROOT, run_cli
from worker.cli import cli


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        path = prefix + (name,)
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, path)
        else:
            out.append(path)
    return out


@pytest.mark.parametrize("path", all_commands(), ids=" ".join)
def test_every_command_is_in_the_readme_and_its_help_has_an_example(path: tuple[str, ...]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"worktask {' '.join(path)}" in readme
    proc = run_cli(*path, "--help")
    assert proc.returncode == 0 and "Example" in proc.stdout


def test_docker_compose_runs_only_commands_the_project_has() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "aws", "worker", "beat", "flower"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "FLOWER_BASIC_AUTH" in str(services["flower"]["environment"])
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


def run_cli_celery(args: list[str]):
    import subprocess
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    from worker.settings import Settings

    readme = (ROOT / "README.md").read_text()
    assert [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in readme] == []
