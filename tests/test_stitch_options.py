"""One set of stitch options for the API and the CLI: every StitchOptions field has its flag and every flag its field,
the command line builds the options a keyword call builds, and a keyword stitch does not know is refused before
anything is written."""

import dataclasses

import pytest
from safetensors.torch import load_file

import mmmerge
from mmmerge.cli import build_parser, stitch_options
from mmmerge.errors import UntrainedProjectorWarning
from mmmerge.stitching import StitchOptions
from stitch_parts import make_lm, make_vision

REQUIRED = ["stitch", "--vision", "v", "--language", "l", "--projector-type", "linear", "--out", "o"]
NOT_OPTIONS = {"command", "command_row", "debug", "vision", "language", "out", "quiet"}  # inputs, and the CLI's own flags


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("parts")
    return make_vision(d / "vision"), make_lm(d / "lm")


def test_cli_flags_and_option_fields_are_the_same_set():
    fields = {f.name for f in dataclasses.fields(StitchOptions)}
    flags = set(vars(build_parser().parse_args(REQUIRED))) - NOT_OPTIONS
    assert flags | {"progress"} == fields  # --quiet is progress=False


def test_cli_defaults_are_the_option_defaults_and_flags_set_their_option():
    assert stitch_options(build_parser().parse_args(REQUIRED)) == StitchOptions(projector_type="linear")
    args = build_parser().parse_args(REQUIRED + ["--alpha", "0.5", "--train-steps", "3", "--vision-feature-layer", "-1",
                                                 "--fit", "procrustes", "--transfer", "--dtype", "bfloat16", "--quiet"])
    assert stitch_options(args) == StitchOptions(projector_type="linear", alpha=0.5, train_steps=3,
                                                 vision_feature_layer=-1, fit="procrustes", transfer=True,
                                                 dtype="bfloat16", progress=False)
    layers = build_parser().parse_args(REQUIRED + ["--vision-feature-layer", "-2", "-1"])
    assert stitch_options(layers).vision_feature_layer == [-2, -1]


def test_unknown_keyword_is_refused_by_name_before_anything_is_written(parts, tmp_path):
    vision, lm = parts
    with pytest.raises(TypeError, match="'projector_typ'"):
        mmmerge.stitch(vision, lm, tmp_path / "out", projector_typ="linear")
    with pytest.raises(TypeError, match="StitchOptions"):
        mmmerge.stitch(vision, lm, tmp_path / "out", options={"projector_type": "linear"})
    assert list(tmp_path.iterdir()) == []


def test_options_and_keywords_make_the_same_folder(parts, tmp_path):
    vision, lm = parts
    with pytest.warns(UntrainedProjectorWarning) as caught:
        by_keywords = mmmerge.stitch(vision, lm, tmp_path / "kw", projector_type="mlp2x_gelu", seed=3, progress=False)
        options = mmmerge.StitchOptions(projector_type="linear", seed=3, progress=False)
        by_options = mmmerge.stitch(vision, lm, tmp_path / "opt", options=options, projector_type="mlp2x_gelu")
    assert [w.filename for w in caught] == [__file__] * 2  # the warning names the caller's line, not mmmerge's
    assert by_options.projector == by_keywords.projector == "new mlp2x_gelu (seed 3)"  # the keyword won
    a, b = load_file(tmp_path / "kw" / "model.safetensors"), load_file(tmp_path / "opt" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
