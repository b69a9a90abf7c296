"""The project's own promises about how it is installed and tested stay true.

* CI (`.ci/run`) runs exactly the README's test command, so what a newcomer types is what CI proves.
* Every lower bound in pyproject.toml is pinned in constraints-lowest.txt, so `.ci/run --lowest`
  runs the suite on the versions the project claims to support.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"# 2\. The tests[^\n]*\n(?P<command>[^\n]+)\n", text)
    assert match, "README: no '# 2. The tests' line followed by the command"
    return match["command"].strip()


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = readme_test_command()
    assert "pytest" in command
    assert command in ci
    assert "python3 -m venv" in ci and "--system-site-packages" not in ci


def declared_lower_bounds() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    bounds = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement.strip())
        assert match, f"pyproject.toml: {requirement!r} has no '>=' lower bound"
        bounds[match[1].lower().replace("_", "-")] = match[2]
    return bounds


def test_lowest_constraints_pin_every_declared_lower_bound():
    pins = {}
    for line in (ROOT / "constraints-lowest.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    bounds = declared_lower_bounds()
    assert pins.keys() == bounds.keys()
    for name, bound in bounds.items():
        pinned = pins[name].split(".")
        assert pinned[: len(bound.split("."))] == bound.split("."), f"{name}: declared >={bound}, pinned {pins[name]}"
