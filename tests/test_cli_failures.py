"""No traceback for a user's mistake or a fault of the machine: each is one `error:` line and an exit code (2 bad
input, 1 the environment, 130 Ctrl-C, 143 SIGTERM). Only a real bug prints a traceback, and then a line asking for a
report. The faults are raised where the command runs, or built as files the commands read."""

import errno
import json

import pytest
import yaml

import mmmerge.inspect as mmmerge_inspect
from mmmerge.signals import Terminated
from cli_run import one_line_error, run
from tiny_world import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def raising(e):
    def command(*args, **kwargs):
        raise e
    return command


@pytest.mark.parametrize("error, code, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out"), 1,
     "error: /data/out: no space left on the device; free some space or write the output elsewhere"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), 1,
     "error: /ro/out: the file system is read-only; write the output elsewhere"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x", None, "/root/y"), 1,
     "error: /root/x -> /root/y: permission denied"),
    (KeyboardInterrupt(), 130, "error: interrupted (SIGINT): stopped, and no partial output was left"),
    (Terminated(), 143, "error: terminated (SIGTERM): stopped, and no partial output was left"),
    (json.JSONDecodeError("Expecting value", '{"a": }', 6), 2,
     "error: not valid JSON (Expecting value: line 1 column 7)"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2,
     "error: a file is not UTF-8 text (invalid start byte at byte 0)"),
])
def test_environment_faults_and_interrupts_are_one_line(monkeypatch, error, code, line):
    monkeypatch.setattr(mmmerge_inspect, "inspect_path", raising(error))
    r = run("inspect", "anything")
    assert (r.returncode, r.stderr) == (code, line + "\n")


def test_yaml_and_pil_errors_are_one_line(monkeypatch):
    from PIL import Image, UnidentifiedImageError

    for error in (yaml.YAMLError("mapping values are not allowed here"),
                  UnidentifiedImageError("cannot identify x.png"),
                  Image.DecompressionBombError("Image size (1000000000 pixels) exceeds limit")):
        monkeypatch.setattr(mmmerge_inspect, "inspect_path", raising(error))
        one_line_error(run("inspect", "anything"))


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch):
    monkeypatch.setattr(mmmerge_inspect, "inspect_path", raising(ZeroDivisionError("division by zero")))
    r = run("inspect", "anything")
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback") and "ZeroDivisionError: division by zero" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: this is a bug in mmmerge")
    assert "please report it" in r.stderr


def test_invalid_devices_are_one_line(world, tmp_path):
    vqa = world["vqa"]
    for argv in (("merge", world["recipe"], "--out", tmp_path / "o", "--quiet"),
                 ("extract-lora", "--base", world["lm"], "--model", world["ft"], "--rank", "2",
                  "--out", tmp_path / "o"),
                 ("stitch", "--vision", world["vision"], "--language", world["lm"], "--projector-type", "linear",
                  "--out", tmp_path / "o"),
                 ("eval", world["llava"], "--task", "vqav2", "--questions", vqa["questions"], "--annotations",
                  vqa["annotations"], "--images", vqa["images"], "--out", tmp_path / "o")):
        for device, needle in (("bogus", "device 'bogus': not a device name"),
                               ("mps", "device mps: use cpu or cuda")):
            one_line_error(run(*argv, "--device", device), needle)
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_bytes(b"merge_method: linear\n# caf\xe9 in latin-1\n")
    one_line_error(run("merge", recipe, "--out", tmp_path / "o"), f"{recipe}: not UTF-8 text")


@pytest.mark.parametrize("questions", [{"questions": 5}, {"questions": [5]}, {"questions": [{"question_id": [1]}]},
                                       {"questions": [{"question_id": 1, "image_id": "abc", "question": "q"}]},
                                       {"questions": [{"question_id": 1, "image_id": 1000, "question": 7}]}])
def test_malformed_eval_files_are_one_line(world, tmp_path, questions):
    vqa = world["vqa"]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    r = run("eval", world["llava"], "--task", "vqav2", "--questions", tmp_path / "q.json", "--images", vqa["images"],
            "--out", tmp_path / "o")
    one_line_error(r, str(tmp_path / "q.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json"]
