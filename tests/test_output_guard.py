"""The output-folder guard, through every writing command as a user runs it: `--out` pointed at an input, at a folder
holding one, inside one, through a symlink, at '' or '.', or at a folder mmmerge did not write, with `--force`: each is
one `error:` line, and every file of the input or folder is byte for byte what it was. `--force` replaces a previous
mmmerge output (it carries the marker) and an empty folder; outputs are created with the user's umask."""

import json
import os
import stat

import pytest

from cli_run import one_line_error, run
from tiny_world import build_world, snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def commands(w):
    """command -> (argv without --out, the model inputs it reads)."""
    vqa = w["vqa"]
    return {
        "merge": (["merge", w["recipe"], "--quiet"], [w["lm"], w["ft"]]),
        "convert": (["convert", w["vision"]], [w["vision"]]),
        "stitch": (["stitch", "--vision", w["vision"], "--language", w["lm"], "--projector-type", "linear", "--quiet"],
                   [w["vision"], w["lm"]]),
        "extract-lora": (["extract-lora", "--base", w["lm"], "--model", w["ft"], "--rank", "2", "--quiet"],
                         [w["lm"], w["ft"]]),
        "merge-loras": (["merge-loras", w["lora1"], w["lora2"]], [w["lora1"], w["lora2"]]),
        "eval": (["eval", w["llava"], "--task", "vqav2", "--questions", vqa["questions"], "--annotations",
                  vqa["annotations"], "--images", vqa["images"], "--max-new-tokens", "2", "--quiet"],
                 [w["llava"], vqa["images"]]),
        "demo": (["demo", "--quiet"], []),
        "moe": (["moe", moe_config(w), "--quiet"], [w["lm"], w["ft"]]),
    }


def moe_config(w):
    """A mergekit-moe config of the world's two LMs (random gates), beside them."""
    config = w["lm"].parent / "moe.yml"
    config.write_text(json.dumps({"base_model": str(w["lm"]), "gate_mode": "random", "experts": [
        {"source_model": str(w["lm"])}, {"source_model": str(w["ft"])}]}))
    return config


COMMANDS = ["merge", "convert", "stitch", "extract-lora", "merge-loras", "eval", "demo", "moe"]


@pytest.mark.parametrize("command", COMMANDS)
def test_force_never_replaces_an_input(world, tmp_path, command):
    argv, inputs = commands(world)[command]
    before = {p: snapshot(p) for p in inputs}
    link = tmp_path / "link"
    for x in inputs:
        link.unlink(missing_ok=True)
        link.symlink_to(x, target_is_directory=True)
        for out, needle in ((x, "would replace"), (x.parent, "would replace"), (link, "would replace"),
                            (x / "sub", "inside the input" if x.name != "val2014" else None)):
            if needle is None:
                continue  # an image folder is data, not a model: an output beside the images is allowed
            r = run(*argv, "--out", out, "--force")
            one_line_error(r, needle)
            assert {p: snapshot(p) for p in inputs} == before, (command, out)
            assert not (x / "sub").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_or_dot_output_is_refused(world, tmp_path, command, monkeypatch):
    argv, _ = commands(world)[command]
    (tmp_path / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    for out in ("", ".", "./", str(tmp_path), str(tmp_path.parent)):
        r = run(*argv, "--out", out, "--force")
        one_line_error(r, "'.'" if out in ("", ".", "./") else "working folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("command", COMMANDS)
def test_force_leaves_a_folder_mmmerge_did_not_write(world, tmp_path, command):
    argv, _ = commands(world)[command]
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    one_line_error(run(*argv, "--out", mine), "not empty", "--force")
    one_line_error(run(*argv, "--out", mine, "--force"), "--force replaces only", ".mmmerge-output")
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no lock file, no temporary folder
    (mine / ".mmmerge-output").symlink_to(mine / "notes" / "thesis.tex")  # a link is not the marker
    one_line_error(run(*argv, "--out", mine, "--force"), "--force replaces only")
    assert (mine / "notes" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("command", ["merge", "convert", "stitch", "extract-lora", "merge-loras", "eval", "moe"])
def test_force_replaces_an_empty_folder_and_a_previous_output(world, tmp_path, command):
    argv, _ = commands(world)[command]
    out = tmp_path / "out"
    out.mkdir()
    assert run(*argv, "--out", out).returncode == 0  # an empty folder needs no --force
    assert (out / ".mmmerge-output").is_file()
    one_line_error(run(*argv, "--out", out), "not empty")
    r = run(*argv, "--out", out, "--force")
    assert r.returncode == 0, r.stderr
    assert (out / ".mmmerge-output").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary, old or lock files left


def test_merge_never_replaces_a_file_its_recipe_reads(world, tmp_path):
    """PREV, a previous merge output, holds the statistics files a regmean recipe reads, and the recipe itself:
    `merge RECIPE --out PREV --force` is one line and PREV is byte for byte what it was."""
    import yaml

    from mmmerge.calibration import collect_statistics

    prev = tmp_path / "prev"
    assert run("merge", world["recipe"], "--out", prev, "--quiet").returncode == 0
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text('{"text": "is there a circle ? yes"}\n{"text": "the shape is red"}\n')
    for name in ("lm", "ft"):
        collect_statistics(world[name], calibration, prev / f"{name}.safetensors", device="cpu")
    recipe = {"merge_method": "regmean", "models": [
        {"model": str(world[name]), "parameters": {"statistics": str(prev / f"{name}.safetensors")}}
        for name in ("lm", "ft")]}
    outside = tmp_path / "regmean.yml"
    outside.write_text(yaml.safe_dump(recipe))
    before = snapshot(prev)
    one_line_error(run("merge", outside, "--out", prev, "--force", "--quiet"), ".safetensors", "which this run reads")
    assert snapshot(prev) == before
    inside = prev / "regmean.yml"
    inside.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(world[name]), "parameters": {"weight": 1}} for name in ("lm", "ft")]}))
    before = snapshot(prev)
    one_line_error(run("merge", inside, "--out", prev, "--force", "--quiet"), "regmean.yml", "which this run reads")
    assert snapshot(prev) == before


def test_outputs_follow_the_umask(world, tmp_path):
    old = os.umask(0o027)
    try:
        assert run("merge", world["recipe"], "--out", tmp_path / "new" / "out", "--quiet").returncode == 0
    finally:
        os.umask(old)
    out = tmp_path / "new" / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and stat.S_IMODE(out.parent.stat().st_mode) == 0o750
    for name in ("model.safetensors", "config.json", ".mmmerge-output"):  # (copied side files keep their mode)
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640, name


def test_api_refuses_the_same(world, tmp_path):
    """The Python API: the same guard, MMMergeError subclasses."""
    from mmmerge.engine import merge
    from mmmerge.stitching import stitch
    from mmmerge.errors import UnsafeOutputError
    from mmmerge.lora.combine import merge_loras
    from mmmerge.lora.extract import extract_lora

    before = snapshot(world["lm"])
    with pytest.raises(UnsafeOutputError, match="would replace"):
        merge(world["recipe"], world["lm"], force=True, quiet=True)
    with pytest.raises(UnsafeOutputError, match="would replace"):
        stitch(world["vision"], world["lm"], world["lm"], projector_type="linear", force=True, progress=False)
    with pytest.raises(UnsafeOutputError, match="would replace"):
        extract_lora(world["lm"], world["ft"], world["lm"], rank=2, force=True)
    with pytest.raises(UnsafeOutputError, match="would replace"):
        merge_loras([world["lora1"], world["lora2"]], world["lora1"].parent, force=True)
    assert snapshot(world["lm"]) == before
