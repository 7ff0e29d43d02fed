"""tests/run.sh and the README's Quick start keep out of each other's way.

The Quick start installs the package (not editable) into .venv and starts the server from it;
the test command, run next, used to reinstall it editable into the same .venv, which deleted
the files the running server serves (its dashboard answered 500). The test command has an
environment of its own.
"""

from __future__ import annotations

import re

from tests.support.process import ROOT


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return section


def test_the_test_command_installs_into_its_own_environment() -> None:
    script = (ROOT / "tests" / "run.sh").read_text()
    venv = re.search(r"^venv=(\S+)$", script, re.MULTILINE)
    assert venv is not None and venv.group(1) == ".venv-test"
    lines = [line for line in script.splitlines() if not line.startswith("#")]
    installs = [line for line in lines if "pip install" in line]
    assert installs and all(line.startswith("$venv/bin/python -m pip") for line in installs)
    assert ".venv/" not in "\n".join(lines).replace(".venv-test", "")  # not the Quick start's
    assert "exec $venv/bin/python -m pytest" in script


def test_the_quick_start_installs_into_dot_venv_which_git_ignores() -> None:
    section = quick_start()
    assert "python3 -m venv .venv && .venv/bin/pip install ." in section
    assert "bash tests/run.sh" in section
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".venv/" in ignored and ".venv-test/" in ignored
