"""`mmmerge eval` and `mmmerge eval-compare` as a user runs them; two processes under torchrun on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import eval_data
from mmmerge import evaluate
from cli_run import one_line_error, run
from tiny_llava import build_tiny_llava

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=5)


def vqa_args(vqa):
    return ["--task", "vqav2", "--questions", vqa["questions"], "--annotations", vqa["annotations"],
            "--images", vqa["images"]]


def test_eval_command_equals_the_api(model_dir, vqa, tmp_path):
    r = run("eval", model_dir, *vqa_args(vqa), "--out", tmp_path / "cli", "--batch-size", 3, "--max-new-tokens", 8)
    assert r.returncode == 0, r.stderr
    assert '"overall"' in r.stdout and "wrote predictions.json" in r.stdout
    api = evaluate(model_dir, "vqav2", **vqa, out=tmp_path / "api", batch_size=5, max_new_tokens=8, progress=False)
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text()) == api
    for name in ("predictions.json", "samples.jsonl"):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "api" / name).read_text()


def test_eval_limit_and_quiet(model_dir, vqa, tmp_path):
    r = run("eval", model_dir, *vqa_args(vqa), "--out", tmp_path / "o", "--limit", 3, "--quiet")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert len(json.loads((tmp_path / "o" / "predictions.json").read_text())) == 3


def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path):
    files = eval_data.vqav2(tmp_path / "d", n=4)
    args = ["--task", "vqav2", "--questions", files["questions"], "--annotations", files["annotations"],
            "--images", files["images"], "--out", tmp_path / "out"]
    ann = json.loads(files["annotations"].read_text())
    files["annotations"].write_text(json.dumps({**ann, "annotations": ann["annotations"][:3]}))
    one_line_error(run("eval", model_dir, *args), "annotations.json", "question 1001001 has no annotation")
    files["annotations"].write_text(json.dumps(ann))
    files["questions"].write_text(files["questions"].read_text()[:-20])
    one_line_error(run("eval", model_dir, *args), "questions.json", "not valid JSON")
    files = eval_data.vqav2(tmp_path / "d", n=4)
    (files["images"] / "COCO_val2014_000000001000.jpg").unlink()
    r = subprocess.run([sys.executable, "-m", "mmmerge", "eval", str(model_dir), *map(str, args)],
                       capture_output=True, text=True, cwd=REPO)
    one_line_error(r, "questions.json", "question 1000000", "image not found")
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(model_dir, vqa, tmp_path):
    single = evaluate(model_dir, "vqav2", **vqa, out=tmp_path / "one", batch_size=2, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "mmmerge", "eval", str(model_dir), *map(str, vqa_args(vqa)), "--out", str(tmp_path / "two"),
                        "--batch-size", "2", "--device", "cpu", "--quiet"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_info["world_size"] == 2
    assert json.loads((tmp_path / "two" / "metrics.json").read_text()) == single
    for name in ("predictions.json", "samples.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_eval_compare_table_and_chart(model_dir, tmp_path):
    files = eval_data.pope(tmp_path / "pope")
    for name, seed in (("model_a", 5), ("model_b", 6)):
        m = model_dir if seed == 5 else build_tiny_llava(tmp_path / "other", seed=seed)
        evaluate(m, "pope", **files, out=tmp_path / name, batch_size=6, max_new_tokens=4, progress=False)
    r = run("eval-compare", tmp_path / "model_a", tmp_path / "model_b", "--out", tmp_path / "chart.png")
    assert r.returncode == 0, r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["run", "task", "f1"] and "accuracy" in header and "tp" not in header
    assert len(header) == len(set(header))
    for line, name in zip(table[2:], ("model_a", "model_b")):
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert cells["run"] == name and cells["task"] == "pope"
        assert cells["f1"] == f"{metrics['f1']:.2f}" and cells["yes_ratio"] == f"{metrics['yes_ratio']:.2f}"
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(run("eval-compare", tmp_path / "nothing"), "metrics.json", "not found")


def test_a_llava_whose_weights_are_a_pytorch_model_bin_evaluates_as_its_safetensors(model_dir, vqa, tmp_path):
    """transformers reads .bin weights with torch.load(weights_only=True): the same answers as from safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    as_bin = tmp_path / "as_bin"
    shutil.copytree(model_dir, as_bin)
    torch.save(load_file(as_bin / "model.safetensors"), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()
    for model, out in ((model_dir, "st"), (as_bin, "bin")):
        r = run("eval", model, *vqa_args(vqa), "--out", tmp_path / out, "--quiet", "--max-new-tokens", 4)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "bin" / "predictions.json").read_text() == (tmp_path / "st" / "predictions.json").read_text()
