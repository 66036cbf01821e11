"""Merged folders carry a model card in the hub's form (YAML front matter, method and paper, inputs with hub IDs
and revisions or paths relative to the output, recipe, version); `eval` adds its results to it and leaves other models' READMEs alone."""

import json

import pytest
import torch
import transformers
import yaml

import eval_data
import mmmerge
from mmmerge.methods import REGISTRY
from tiny import llama_config, randomize
from tiny_llava import build_tiny_llava

REVISION = "0123456789abcdef0123456789abcdef01234567"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def llama(folder, seed):
    torch.manual_seed(seed)
    randomize(transformers.LlamaForCausalLM(llama_config()), seed).save_pretrained(folder)
    return folder


def test_card_of_a_merge(tmp_path):
    base = llama(tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / REVISION, 0)  # a hub cache snapshot
    a, b = llama(tmp_path / "math", 1), llama(tmp_path / "code", 2)
    recipe = {"merge_method": "ties", "base_model": str(base),
              "models": [{"model": str(a), "parameters": {"weight": 0.6, "density": 0.5}},
                         {"model": str(b), "parameters": {"weight": 0.4, "density": 0.5}}]}
    out = mmmerge.merge(recipe, tmp_path / "merged", quiet=True)
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == ["acme/tiny-llama", "../math", "../code"]  # local folders relative to the output
    assert meta["library_name"] == "transformers" and meta["tags"][:3] == ["merge", "mmmerge", "ties"]
    assert "pipeline_tag" not in meta  # a language model, not an image-text-to-text one
    assert "https://arxiv.org/abs/2306.01708" in card and "TIES-Merging" in card  # Yadav et al., NeurIPS 2023
    assert f"[acme/tiny-llama](https://huggingface.co/acme/tiny-llama) (revision `{REVISION}`)" in card
    assert f"A merge made with mmmerge {mmmerge.__version__}." in card
    assert "pypi.org" not in card  # mmmerge has no package index page to link
    assert "- `../math`" in card.split("## Recipe")[0]
    assert str(tmp_path) not in card.split("## Recipe")[0]  # no path of the machine that merged, but the recipe's own
    recorded = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(recorded) == recipe
    # transformers ignores the card: the folder loads as before
    transformers.LlamaForCausalLM.from_pretrained(out)


def test_eval_adds_its_results_to_the_card(tmp_path):
    base, other = build_tiny_llava(tmp_path / "base", seed=3), build_tiny_llava(tmp_path / "other", seed=4)
    recipe = {"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 0.5}},
                                                    {"model": str(other), "parameters": {"weight": 0.5}}]}
    merged = mmmerge.merge(recipe, tmp_path / "merged", quiet=True)
    meta = front_matter((merged / "README.md").read_text())
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["tags"][2] == "linear"
    vqa = eval_data.vqav2(tmp_path / "vqa", n=6)
    pope = eval_data.pope(tmp_path / "pope")
    first = mmmerge.evaluate(merged, "vqav2", **vqa, out=tmp_path / "e1", max_new_tokens=3, progress=False)
    assert f"| vqav2 | `questions.json` | 6 | overall | {first['overall']:.2f} |" in (merged / "README.md").read_text()
    again = mmmerge.evaluate(merged, "vqav2", **vqa, out=tmp_path / "e2", limit=4, max_new_tokens=3, progress=False)
    f1 = mmmerge.evaluate(merged, "pope", **pope, out=tmp_path / "e3", max_new_tokens=3, progress=False)["f1"]
    card = (merged / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| vqav2 ") or line.startswith("| pope ")]
    assert rows == [f"| vqav2 | `questions.json` | 4 | overall | {again['overall']:.2f} |",  # the later run replaced it
                    f"| pope | `{pope['questions'].name}` | 6 | f1 | {f1:.2f} |"]
    # a folder mmmerge did not merge keeps its README as it was
    (base / "README.md").write_text("# my model\n")
    mmmerge.evaluate(base, "vqav2", **vqa, out=tmp_path / "e4", limit=2, max_new_tokens=2, progress=False)
    assert (base / "README.md").read_text() == "# my model\n"
    assert json.loads((tmp_path / "e2" / "run.json").read_text())["questions_file"] == str(vqa["questions"])


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_line_names_its_paper_and_mergekits_link(method):
    """The card's method line is the title the method declares, linked to the reference mergekit gives for the
    same method (methods mergekit lacks: their own link to an arXiv paper); mergekit's own methods without a
    paper are named, not linked."""
    from mergekit import merge_methods
    from mmmerge.model_card import method_line

    spec = REGISTRY[method]
    try:
        link = merge_methods.get(method).spec.reference_url
    except RuntimeError:  # a method mergekit does not have (iso_c, tsv_merge, regmean, fisher, wudi)
        link = spec.reference
        assert link.startswith("https://arxiv.org/abs/")
    line = method_line(method)
    assert spec.title.strip() and "\n" not in spec.title
    assert line == f"`{method}`: " + (f"[{spec.title}]({link})" if link else spec.title)
