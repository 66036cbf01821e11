"""`mmmerge calibrate` end to end: the file it writes is what mmmerge.calibration.collect_statistics writes when
called directly (a tiny Llama on text, a tiny LLaVA on image questions); bad input is one `error:` line, exit 2,
and no file; `statistics:` paths in a recipe file are relative to the recipe's folder and checked at plan time."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmmerge.calibration import collect_statistics
from mmmerge.cli import main
from mmmerge.engine import merge
from tiny_llava import build_tiny_llava
from tiny_world import make_lm

TEXT = [{"question": "what color is the shape ?", "answers": ["red"]}, {"text": "is there a circle ? yes"},
        {"question": "describe the picture . it shows a small object"}]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def same_file(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    return make_lm(root / "lm", seed=3), write_jsonl(root / "calib.jsonl", TEXT)


def test_calibrate_a_causal_lm_writes_what_collect_statistics_writes(lm, tmp_path, capsys):
    model, calib = lm
    code, out, err = run(["calibrate", str(model), "--data", str(calib), "--out", str(tmp_path / "s" / "cli.safetensors"),
                          "--batch-size", "2", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "wrote" in out and "calibrate" in err  # the summary, and the progress bar on stderr
    direct = collect_statistics(model, calib, tmp_path / "direct.safetensors", batch_size=2, device="cpu")
    same_file(tmp_path / "s" / "cli.safetensors", direct)
    with safe_open(str(direct), framework="pt") as f:
        meta = f.metadata()
    assert meta["written_by"].startswith("mmmerge") and meta["kinds"] == "gram,fisher" and meta["examples"] == "3"
    assert leftovers(tmp_path / "s") == []
    assert oct((tmp_path / "s" / "cli.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    # --kinds, --limit, --quiet; an existing file needs --force, which replaces only a file mmmerge wrote
    one = tmp_path / "gram.safetensors"
    code, out, err = run(["calibrate", str(model), "--data", str(calib), "--out", str(one), "--kinds", "gram",
                          "--limit", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and out == "" and err == ""
    assert {k.split(":")[0] for k in load_file(one)} == {"gram"}
    same_file(one, collect_statistics(model, calib, tmp_path / "gram2.safetensors", kinds="gram", max_examples=2,
                                      device="cpu"))
    code, _, err = run(["calibrate", str(model), "--data", str(calib), "--out", str(one), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "exists; pass --force to replace it" in err
    code, _, err = run(["calibrate", str(model), "--data", str(calib), "--out", str(one), "--kinds", "fisher",
                        "--device", "cpu", "--quiet", "--force"], capsys)
    assert code == 0, err
    assert {k.split(":")[0] for k in load_file(one)} == {"fisher"}
    (tmp_path / "mine.safetensors").write_bytes(b"not mmmerge's")
    code, _, err = run(["calibrate", str(model), "--data", str(calib), "--out", str(tmp_path / "mine.safetensors"),
                        "--force"], capsys)
    assert code == 2 and "replaces only a statistics file written by mmmerge" in err
    assert (tmp_path / "mine.safetensors").read_bytes() == b"not mmmerge's"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_calibrate_a_llava_on_image_questions(tmp_path, capsys):
    model = build_tiny_llava(tmp_path / "llava", seed=2)
    images = tmp_path / "pictures"
    images.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(images / "red.png")
    Image.new("RGB", (40, 40), (10, 10, 200)).save(images / "blue.png")
    (tmp_path / "data").mkdir()
    calib = write_jsonl(tmp_path / "data" / "calib.jsonl",
                        [{"image": "red.png", "question": "what is the color ?", "answers": ["red"]},
                         {"image": "blue.png", "question": "is it a dog ?"},
                         {"image": "red.png", "question": "what shape is it ?", "answer": "square"}])
    out = tmp_path / "llava.stats.safetensors"
    code, _, err = run(["calibrate", str(model), "--data", str(calib), "--image-folder", str(images), "--out", str(out),
                        "--batch-size", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    same_file(out, collect_statistics(model, calib, tmp_path / "direct.safetensors", batch_size=2, device="cpu",
                                      image_folder=images))
    keys = load_file(out).keys()
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        assert any(part in k and k.startswith("gram:") for k in keys), part
        assert any(part in k and k.startswith("fisher:") for k in keys), part
    # without --image-folder the images are looked for beside the JSONL: one line, before the model loads
    code, _, err = run(["calibrate", str(model), "--data", str(calib), "--out", str(tmp_path / "x.safetensors")],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and "line 1: no such image file" in err and str(calib) in err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("case", ["missing data", "no question", "not json", "unknown kind", "no kind", "zero batch",
                                  "out in the model", "out is the data", "out is a folder"])
def test_bad_input_is_one_line_and_no_file(lm, tmp_path, capsys, case):
    model, calib = lm
    out = tmp_path / "out" / "s.safetensors"
    argv = ["calibrate", str(model), "--data", str(calib), "--out", str(out), "--device", "cpu"]
    named = str(calib)
    if case == "missing data":
        argv[3] = named = str(tmp_path / "nowhere.jsonl")
        message = "no such calibration file"
    elif case == "no question":
        argv[3] = named = str(write_jsonl(tmp_path / "bad.jsonl", [TEXT[0], {"answer": "red"}]))
        message = "line 2: a calibration example needs a 'question' (or 'text') string"
    elif case == "not json":
        argv[3] = named = str(write_jsonl(tmp_path / "bad.jsonl", [TEXT[0], "{oops"]))
        message = "line 2: not valid JSON"
    elif case == "unknown kind":
        argv += ["--kinds", "gram,hessian"]
        named, message = "'hessian'", "is not a kind of statistics; use gram or fisher"
    elif case == "no kind":
        argv += ["--kinds", ""]
        named, message = "kinds", "no kind of statistics given"
    elif case == "zero batch":
        argv += ["--batch-size", "0"]
        named, message = "batch size", "must be a positive integer, got 0"
    elif case == "out in the model":
        argv[5] = named = str(model / "s.safetensors")
        message = "would be written into the input model"
    elif case == "out is the data":
        argv[5] = named = str(calib)
        message = "would replace"
    else:
        out.mkdir(parents=True)
        named, message = str(out), "is a folder"
    before = sorted(p.name for p in Path(model).iterdir())
    code, stdout, err = run(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and named in err, err
    assert stdout == ""
    assert sorted(p.name for p in Path(model).iterdir()) == before
    assert not out.is_file() and not (tmp_path / "out").exists() or case == "out is a folder"
    assert json.loads(Path(calib).read_text().splitlines()[0]) == TEXT[0]


def test_a_recipe_files_statistics_are_relative_to_its_folder(lm, tmp_path, monkeypatch, capsys):
    """A recipe in another folder, with model and statistics paths relative to it, merges from any working folder
    as it does with absolute paths; a missing file is one line at plan time (a dry run reads no tensor)."""
    model, calib = lm
    project = tmp_path / "project"
    for i in range(2):
        make_lm(project / "models" / f"m{i}", seed=i + 5)
        collect_statistics(project / "models" / f"m{i}", calib, project / "stats" / f"m{i}.safetensors",
                           device="cpu")
    recipe = {"merge_method": "regmean", "dtype": "float32",
              "models": [{"model": f"models/m{i}", "parameters": {"statistics": f"stats/m{i}.safetensors"}}
                         for i in range(2)]}
    (project / "recipes").mkdir()
    shutil.move(project / "models", project / "recipes" / "models")
    shutil.move(project / "stats", project / "recipes" / "stats")
    (project / "recipes" / "merge.yml").write_text(yaml.safe_dump(recipe))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(["merge", str(project / "recipes" / "merge.yml"), "--out", "merged", "--quiet"], capsys)
    assert code == 0, err
    absolute = {"merge_method": "regmean", "dtype": "float32",
                "models": [{"model": str(project / "recipes" / "models" / f"m{i}"),
                            "parameters": {"statistics": str(project / "recipes" / "stats" / f"m{i}.safetensors")}}
                           for i in range(2)]}
    merge(absolute, tmp_path / "absolute", quiet=True)
    got = load_file(elsewhere / "merged" / "model.safetensors")
    want = load_file(tmp_path / "absolute" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    name = "model.layers.0.mlp.down_proj.weight"
    thetas = [load_file(project / "recipes" / "models" / f"m{i}" / "model.safetensors") for i in range(2)]
    assert not torch.allclose(got[name], (thetas[0][name] + thetas[1][name]) / 2, atol=1e-5)  # statistics used

    # a recipe given as a dict keeps the working folder: from `project/recipes` the same relative paths work
    monkeypatch.chdir(project / "recipes")
    merge(recipe, tmp_path / "from_dict", quiet=True)
    d = load_file(tmp_path / "from_dict" / "model.safetensors")
    assert all(torch.equal(d[k], want[k]) for k in want)

    # a missing statistics file: one line naming the parameter, the model and the resolved path, at plan time
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    recipe["models"][1]["parameters"]["statistics"] = "stats/gone.safetensors"
    (project / "recipes" / "broken.yml").write_text(yaml.safe_dump(recipe))
    code, _, err = run(["merge", str(project / "recipes" / "broken.yml"), "--out", "broken", "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "model models/m1" in err and "parameter `statistics`" in err
    assert str(project / "recipes" / "stats" / "gone.safetensors") in err and "no such file" in err
    # not a safetensors file: one line too
    (project / "recipes" / "stats" / "gone.safetensors").write_text("junk")
    code, _, err = run(["merge", str(project / "recipes" / "broken.yml"), "--out", "broken", "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a readable safetensors file" in err, err
    assert not (elsewhere / "broken").exists()


def test_statistics_in_the_slices_of_a_recipe_file_are_relative_to_it(lm, tmp_path, monkeypatch, capsys):
    model, calib = lm
    folder = tmp_path / "recipes"
    folder.mkdir()
    save_file({"gram:model.layers.0.self_attn.q_proj.weight": torch.eye(32)}, str(folder / "s.safetensors"))
    other = make_lm(tmp_path / "other", seed=9)
    recipe = {"merge_method": "regmean", "slices": [{"sources": [
        {"model": str(model), "layer_range": [0, 1], "parameters": {"statistics": "s.safetensors"}},
        {"model": str(other), "layer_range": [0, 1], "parameters": {"statistics": "missing.safetensors"}}]}]}
    (folder / "r.yml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code, _, err = run(["merge", str(folder / "r.yml"), "--out", "o", "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert str(folder / "missing.safetensors") in err and "parameter `statistics`" in err
    assert str(folder / "s.safetensors") not in err


@pytest.mark.parametrize("change, message", [
    ("nan", "weight model.layers.0.mlp.up_proj.weight holds 1 non-finite value(s)"),
    ("overflow", "non-finite value(s) (NaN/inf) on the calibration data; nothing was written")])
def test_non_finite_weights_or_statistics_are_refused_and_nothing_is_written(lm, tmp_path, capsys, change, message):
    """A NaN weight, or finite weights whose activations overflow float32 (up_proj x 1e30: the down_proj Gram
    matrix is far over float32's 3.4e38), would give statistics that poison every merge reading them."""
    model, calib = lm
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    tensors = load_file(bad / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    if change == "nan":
        tensors[name][0, 0] = float("nan")
    else:
        tensors[name] = tensors[name] * 1e30
        assert torch.isfinite(tensors[name]).all()
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out" / "s.safetensors"
    code, stdout, err = run(["calibrate", str(bad), "--data", str(calib), "--out", str(out), "--device", "cpu",
                             "--quiet"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and str(bad) in err, err
    assert not (tmp_path / "out").exists()
