"""`mmmerge inspect` reads what mmmerge writes besides checkpoints: a LoRA folder (checked against peft's own reading
of its config and the file's tensors), an eval output (against what `evaluate` returned), a search output (against
what `search` returned) and a statistics file (against its safetensors header); a file inside one, or a folder of
them, is named in one line."""

import json
import shutil

import pytest
import yaml
from safetensors import safe_open

import mmmerge
from cli_run import one_line_error, run
from make_tiny_models import make_finetune
from mmmerge.calibration import collect_statistics
from mmmerge.eval import evaluate
from mmmerge.searching import search
from tiny_world import make_lm


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, model_dir, vqa):
    root = tmp_path_factory.mktemp("outputs")
    make_lm(root / "lm", seed=3)
    make_finetune(root / "lm", root / "lm-ft", seed=1, scale=0.05)
    assert run("extract-lora", "--base", root / "lm", "--model", root / "lm-ft", "--rank", 2, "--out",
               root / "lora").returncode == 0
    (root / "calib.jsonl").write_text(json.dumps({"text": "is there a circle ? yes"}) + "\n")
    collect_statistics(root / "lm", root / "calib.jsonl", root / "stats.safetensors", device="cpu", progress=False)
    metrics = evaluate(model_dir, "vqav2", **vqa, out=root / "eval", max_new_tokens=4, progress=False)
    for name, seed in (("a", 2), ("b", 3)):
        make_finetune(model_dir, root / name, seed, scale=0.05)
    spec = {"merge_method": "task_arithmetic", "base_model": str(model_dir),
            "models": [{"model": str(root / m), "parameters": {"weight": {"search": [0.0, 1.0]}}} for m in "ab"],
            "search": {"trials": 2, "max_new_tokens": 4,
                       "tasks": [{"task": "vqav2", **{k: str(v) for k, v in vqa.items()}, "split": 0.5}]}}
    (root / "spec.yml").write_text(yaml.safe_dump(spec))
    result = search(root / "spec.yml", root / "searched", quiet=True)
    return root, metrics, result


def inspected(path) -> dict:
    r = run("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_lora_folder_shows_its_base_rank_and_targets(outputs):
    from peft import LoraConfig

    root = outputs[0]
    config = LoraConfig.from_pretrained(root / "lora")
    with safe_open(str(root / "lora" / "adapter_model.safetensors"), "pt") as f:
        modules = sum(k.endswith("lora_A.weight") for k in f.keys())
    s = inspected(root / "lora")
    assert s["kind"] == "peft LoRA adapter" and s["base_model"] == config.base_model_name_or_path
    assert s["rank"] == config.r and s["modules"] == modules > 0
    targets = config.target_modules
    assert s["target_modules"] == (sorted(targets) if isinstance(targets, (set, list)) else targets)
    text = run("inspect", root / "lora").stdout
    assert f"rank: {config.r}" in text and str(root / "lm") in text


def test_an_eval_output_shows_its_task_and_metrics(outputs, model_dir):
    root, metrics, _ = outputs
    s = inspected(root / "eval")
    assert s["kind"] == "mmmerge eval output" and s["task"] == "vqav2" and s["model"] == str(model_dir)
    assert s["headline"] == "overall" and s["score"] == metrics["overall"] and s["questions"] == 8
    assert "task: vqav2" in run("inspect", root / "eval").stdout


def test_a_search_output_shows_its_best_values_and_trials(outputs):
    root, _, result = outputs
    s = inspected(root / "searched")
    assert s["kind"] == "mmmerge search output"
    assert s["best_params"] == result.best_params and s["best_value"] == result.best_value
    assert sum(s["trials"].values()) == result.trials == 2
    assert s["test_scores"] == result.test_scores
    assert "best_params: models." in run("inspect", root / "searched").stdout


def test_a_statistics_file_shows_its_model_kinds_and_tensors(outputs):
    root = outputs[0]
    with safe_open(str(root / "stats.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    s = inspected(root / "stats.safetensors")
    assert s["kind"] == "mmmerge statistics (calibrate)" and s["model"] == meta["model"]
    assert s["kinds"] == meta["kinds"] and s["tensors"] == len(keys) > 0
    assert sum(s["tensors_per_kind"].values()) == len(keys)


def test_a_file_inside_or_a_folder_of_outputs_is_named_in_one_line(outputs, tmp_path):
    root = outputs[0]
    r = run("inspect", root / "searched" / "result.json")
    assert r.returncode == 0 and r.stdout.count("\n") == 1
    assert "search output" in r.stdout and str(root / "searched") in r.stdout
    r = run("inspect", root / "eval" / "samples.jsonl")
    assert r.returncode == 0 and "eval output" in r.stdout
    r = run("inspect", root)
    assert r.returncode == 0 and r.stdout.count("\n") == 1
    for kind, name in (("model folder", "lm-ft"), ("LoRA adapter", "lora"), ("eval output", "eval"),
                       ("search output", "searched"), ("statistics file", "stats.safetensors")):
        assert kind in r.stdout and name in r.stdout, (kind, r.stdout)
    assert inspected(root)["holds"]["LoRA adapter"] == ["lora"]
    (tmp_path / "data").mkdir()
    shutil.copy(root / "calib.jsonl", tmp_path / "data")
    r = run("inspect", tmp_path / "data")
    one_line_error(r, "calib.jsonl", "LoRA folder, eval or search output, statistics file")
    assert "recognised formats" not in r.stderr


def test_describe_reads_them_too(outputs):
    root = outputs[0]
    assert "kind: peft LoRA adapter" in mmmerge.describe(root / "lora")
