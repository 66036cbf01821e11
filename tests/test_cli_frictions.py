"""What a newcomer trips over first: `--debug` after the command, API spellings in CLI errors, unreadable reprs,
transformers' own bars, and a stitched model whose projector nobody trained."""

import warnings

import pytest

import mmmerge
from mmmerge.cli import main
from mmmerge.demo import build_language, build_vision, build_world
from mmmerge.errors import MMMergeError, UntrainedProjectorWarning
from cli_run import one_line_error, run


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    build_vision(root / "vision", seed=0)
    build_language(root / "llama", seed=0)
    world = build_world(root / "world", train_scenes=8, eval_scenes=1, seed=0)
    return root / "vision", root / "llama", world.captions


def test_debug_before_or_after_the_command(tmp_path):
    for argv in (["--debug", "inspect", str(tmp_path / "nope")], ["inspect", str(tmp_path / "nope"), "--debug"]):
        with pytest.raises(MMMergeError, match="no such file"):
            main(argv)
    one_line_error(run("inspect", tmp_path / "nope"), "no such file")


def test_cli_errors_speak_flags_not_keywords(parts, tmp_path):
    vision, _, _ = parts
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    r = run("convert", vision, "--out", tmp_path / "out")
    one_line_error(r, "--force")
    assert "force=True" not in r.stderr


def test_reprs_are_one_short_line(parts):
    vision, llama, _ = parts
    ckpt = mmmerge.load(vision)
    comp = ckpt.component("vision")
    for obj in (ckpt, comp, next(iter(comp.tensors.values()))):
        text = repr(obj)
        assert "\n" not in text and len(text) < 160 and "function" not in text and "lambda" not in text, text
    assert f"{comp.num_params:,} parameters" in repr(comp) and "CLIPVisionModel" in repr(ckpt)
    assert str(comp) == repr(comp)


def test_untrained_projector_warns(parts, tmp_path):
    vision, llama, captions = parts
    with pytest.warns(UntrainedProjectorWarning, match="untrained.*answer noise"):
        report = mmmerge.stitch(vision, llama, tmp_path / "raw", projector_type="mlp2x_gelu", progress=False)
    assert len(report.warnings) == 1 and "untrained" in report.warnings[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedProjectorWarning)
        fitted = mmmerge.stitch(vision, llama, tmp_path / "fit", projector_type="linear", align_data=captions,
                                progress=False)  # closed-form fit
        taken = mmmerge.stitch(vision, llama, tmp_path / "taken", projector=tmp_path / "fit", progress=False)
    assert fitted.warnings == [] and taken.warnings == []
    for quiet in ([], ["--quiet"]):
        r = run("stitch", "--vision", vision, "--language", llama, "--projector-type", "linear", "--out",
                tmp_path / f"cli{len(quiet)}", *quiet)
        assert r.returncode == 0
        assert r.stderr.count("warning: ") == 1 and "untrained" in r.stderr and "Traceback" not in r.stderr


def test_no_transformers_bars_in_stitch(parts, tmp_path):
    vision, llama, captions = parts
    r = run("stitch", "--vision", vision, "--language", llama, "--projector-type", "mlp2x_gelu", "--align-data",
            captions, "--fit", "train", "--train-steps", 2, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "projector training" in r.stderr and "Loading weights" not in r.stderr  # ours shows, transformers' not


def test_api_names_stay_functions_after_their_modules_are_imported(parts, tmp_path):
    """Importing a submodule binds it as an attribute of the package; no submodule may share a name of the public
    API, so `mmmerge.stitch` and `mmmerge.convert` stay functions after the CLI imports their modules."""
    import importlib.util
    import inspect

    import mmmerge.conversion
    import mmmerge.stitching  # noqa: F401

    assert inspect.isfunction(mmmerge.stitch) and inspect.isfunction(mmmerge.convert)
    assert [n for n in mmmerge.__all__ if importlib.util.find_spec(f"mmmerge.{n}") is not None] == []
    vision, _, _ = parts
    assert mmmerge.convert(vision, tmp_path / "out") == []
    assert mmmerge.describe(tmp_path / "out").startswith(str(tmp_path / "out"))


def test_methods_lists_every_method_and_describes_one():
    from mmmerge.methods import REGISTRY

    r = run("methods")
    assert r.returncode == 0
    assert {line.split()[0] for line in r.stdout.splitlines()} == set(REGISTRY)
    r = run("methods", "ties")
    assert r.returncode == 0 and "https://arxiv.org/abs/2306.01708" in r.stdout
    assert r.stdout.startswith(f"ties: {REGISTRY['ties'].title}, ")  # the paper the method declares
    from mmmerge.methods._selection import TIE_BREAKS
    assert f"tie_break (global, one of {' / '.join(TIE_BREAKS)}, default index)" in r.stdout  # words, not a path
    assert "density (per model, number, default 1.0, in (0, 1])" in r.stdout
    assert "weight (per model, number, required)" in r.stdout
    r = run("methods", "tiez")
    assert r.returncode == 2 and "unknown merge method 'tiez'" in r.stderr and r.stderr.count("\n") == 1
