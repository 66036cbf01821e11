"""The `mmmerge` command as a user runs it: output, exit codes, one-line errors, nothing half-written."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
import transformers

from cli_run import one_line_error, run
from tiny import clip_vision_config, llava_config, randomize


def test_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmmerge", "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    one_line_error(r, "no such file or folder")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    randomize(transformers.LlavaForConditionalGeneration(llava_config())).save_pretrained(path)
    return path


def test_inspect_text_and_json(llava_dir):
    r = run("inspect", llava_dir)
    assert r.returncode == 0, r.stderr
    assert "format: transformers-llava" in r.stdout and "vision: CLIPVisionModel" in r.stdout
    r = run("inspect", llava_dir, "--json")
    s = json.loads(r.stdout)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(llava_dir)
    assert s["components"]["language"]["parameters"] == sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    assert s["components"]["vision"]["parameters"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert s["components"]["projector"]["dtypes"] == {"float32": sum(p.numel() for p in model.model.multi_modal_projector.parameters())}


def test_convert_writes_a_loadable_tower(tmp_path):
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1), projection_dim=16))
    randomize(clip).save_pretrained(tmp_path / "clip")
    transformers.CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}).save_pretrained(tmp_path / "clip")
    r = run("convert", tmp_path / "clip", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "not written (not held by CLIPVisionModel): visual_projection.weight" in r.stdout
    model, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(model).__name__ == "CLIPVisionModel" and not any(info.values())
    assert transformers.AutoImageProcessor.from_pretrained(tmp_path / "out").crop_size["height"] == 32
    r = run("convert", tmp_path / "clip", "--out", tmp_path / "out")
    assert r.returncode == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert run("convert", tmp_path / "clip", "--out", tmp_path / "out", "--force").returncode == 0


def test_unknown_input_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(run("inspect", tmp_path), str(tmp_path), "notes.txt", "not a checkpoint", "open_clip", "timm",
                   "LoRA folder")
    one_line_error(run("inspect", tmp_path / "nope"), "no such file or folder")
    (tmp_path / "config.json").write_text("{broken")
    one_line_error(run("inspect", tmp_path), "config.json", "not valid JSON")


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_weights_are_refused(tmp_path):
    transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                             vocab_size=64).save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": Exploit()}, f)
    r = run("inspect", tmp_path)
    one_line_error(r, "pytorch_model.bin", "refused to unpickle")
    assert "pwned" not in r.stdout


def test_convert_without_vision_component_writes_nothing(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)).save_pretrained(tmp_path / "lm")
    one_line_error(run("convert", tmp_path / "lm", "--out", tmp_path / "out"), "has no vision component")
    assert not (tmp_path / "out").exists()


def load_examples():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "make_tiny_models.py"
    spec = importlib.util.spec_from_file_location("make_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["open_clip", "timm"])
def test_convert_open_clip_and_timm(family, tmp_path):
    """The README's example models convert into folders transformers loads, with the source's preprocessing."""
    examples = load_examples()
    getattr(examples, f"make_{family}")(tmp_path / "src")
    r = run("convert", tmp_path / "src", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    model, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values())
    assert type(model).__name__ == {"open_clip": "CLIPVisionModel", "timm": "SiglipVisionModel"}[family]
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")
    inspected = json.loads(run("inspect", tmp_path / "src", "--json").stdout)
    pre = inspected["components"]["vision"]["preprocess"]
    assert list(proc.image_mean) == pytest.approx(pre["mean"]) and list(proc.image_std) == pytest.approx(pre["std"])
