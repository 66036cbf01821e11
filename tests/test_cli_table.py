"""The command line is generated from one table (mmmerge/commands.py) and one set of shared flags
(mmmerge/cli_flags.py): every flag a command passes on is a keyword of the function it calls, a flag not given
is not passed (the function's default is the default, and `--help` shows it), and the shared flags are written
once."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import mmmerge
from mmmerge import cli_flags
from mmmerge.cli import build_parser, main
from mmmerge.cli_flags import api_defaults, api_function
from mmmerge.commands import COMMANDS
from mmmerge.stitching.options import NAMES as STITCH_OPTIONS

PACKAGE = Path(mmmerge.__file__).parent


def keywords(command):
    fn = api_function(command.api)
    params = inspect.signature(fn).parameters
    names = set(params)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        names |= set(STITCH_OPTIONS)  # stitch(**options)
    return names


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_passed_on_is_a_keyword_of_the_function_the_command_calls(name):
    command = COMMANDS[name]
    accepted = keywords(command)
    passed = {f.dest for f in command.flags if f.api and f.dest != "quiet"}
    assert passed <= accepted, f"{name}: flags the function does not take: {passed - accepted}"
    if command.quiet is not None:
        assert command.quiet in accepted, name
    else:  # --quiet, if the command has it, is read by its report alone
        assert all(not (f.dest == "quiet" and f.api) or "quiet" not in accepted for f in command.flags)


def test_a_flag_not_given_is_not_passed_and_a_given_one_is(monkeypatch, tmp_path):
    seen = {}

    def fake_merge(recipe, out, **kwargs):
        seen.update(recipe=recipe, out=out, **kwargs)

    monkeypatch.setattr(mmmerge.engine, "merge", fake_merge)
    assert main(["merge", "r.yml", "--out", str(tmp_path / "o")]) == 0
    assert seen == {"recipe": "r.yml", "out": tmp_path / "o", "quiet": False}  # the function's own defaults apply
    seen.clear()
    assert main(["merge", "r.yml", "--out", str(tmp_path / "o"), "--device", "cuda", "--offline", "--seed", "3",
                 "--quiet", "--force"]) == 0
    assert seen == {"recipe": "r.yml", "out": tmp_path / "o", "device": "cuda", "offline": True, "seed": 3,
                    "quiet": True, "force": True}


def test_help_shows_each_default_from_the_function_signature(capsys):
    for name, expected in (("merge", "(default: cpu)"), ("eval", "(default: cuda when available)")):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        said = re.search(r"--device DEVICE where the arithmetic runs: cpu or cuda (\(default: [^)]*\))", text)
        assert said and said.group(1) == expected, text
        assert api_defaults(COMMANDS[name].api)["device"] == {"merge": "cpu", "eval": None}[name]
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    size = inspect.signature(mmmerge.evaluate).parameters["batch_size"].default
    assert f"--batch-size BATCH_SIZE examples per forward pass (default: {size})" in text


@pytest.mark.parametrize("name", ["--force", "--quiet", "--device", "--offline", "--debug", "--seed", "--out",
                                  "--max-image-pixels", "--out-shard-size"])
def test_shared_flags_are_written_once(name):
    text = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    where = [str(p.relative_to(PACKAGE)) for p, t in text.items() if re.search(rf'["\']{name}["\']', t)]
    assert where == ["cli_flags.py"], where


def test_every_command_gets_the_shared_flag_objects():
    """A command's --force, --quiet, ... is the shared flag (its help may be the command's own)."""
    shared = {f.names: f for f in (cli_flags.FORCE, cli_flags.QUIET, cli_flags.DEVICE, cli_flags.OFFLINE)}
    for command in COMMANDS.values():
        for f in command.flags:
            if f.names in shared:
                same = {k: v for k, v in f.options.items() if k not in ("help", "choices")}
                assert same == {k: v for k, v in shared[f.names].options.items() if k != "help"}, (command.name, f)


def test_every_command_in_the_parser_and_no_function_over_60_lines():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(commands) == set(COMMANDS)
    for file in ("cli.py", "cli_flags.py", "commands.py"):
        tree = ast.parse((PACKAGE / file).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, f"{file}: {node.name}"
