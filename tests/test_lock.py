"""The lock of tested versions (constraints.txt): the README's commands install with it, its "Tested versions"
line is made from it, and it pins every declared dependency at a version pyproject.toml's ranges admit."""

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from lock import DECISIVE, LOCK, README, canonical, read_lock, readme_line, tested_versions_line as versions_line  # noqa: E402


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_readme_tested_versions_come_from_the_lock():
    assert readme_line() == versions_line()


def test_both_readme_commands_install_with_the_lock():
    text = README.read_text()
    for mark in ("<!-- main-command -->", "<!-- test-command -->"):
        command = text.split(mark)[1].split("```bash\n")[1].splitlines()[0]
        assert re.search(r"pip install -c constraints\.txt -e ", command), command


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    _, pins = read_lock(LOCK)
    for req in declared():
        version = pins.get(canonical(req.name))
        assert version is not None, f"{req.name} is declared but not in {LOCK.name}"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req}"
    assert all(canonical(name) in pins for name in DECISIVE)


def test_a_lock_line_is_read_as_one_exact_pin(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# made with Python 3.12\nOpen_Clip.Torch==3.3.0\ntorch==2.14.1  # comment\n")
    assert read_lock(lock) == ("3.12", {"open-clip-torch": "3.3.0", "torch": "2.14.1"})
