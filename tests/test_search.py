"""`mmmerge search`: optuna chooses merge coefficients, candidates merged in memory and scored on a dev split.

The checks are independent of the search's own code: a planted optimum computed from the models'
transformers weights; the written best recipe merged by `mmmerge merge` and scored by `mmmerge eval`; the
entropy recomputed with a plain forward pass; a study killed with SIGKILL and resumed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import eval_data
from make_tiny_models import make_finetune
from tiny_llava import build_tiny_llava
from mmmerge import merge
from mmmerge.cli import main
from mmmerge.errors import RecipeError
from mmmerge.eval import evaluate
from mmmerge.searching import search
from mmmerge.searching.candidate import Candidates

ROOT = Path(__file__).resolve().parents[1]
PROBE = "model.language_model.layers.0.self_attn.q_proj.weight"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).state_dict()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base and two "fine-tunes" (tiny LLaVAs; the base's weights moved a little), and VQAv2 files whose gold answers are, for half the questions,
    what the base answers: candidates near the base score higher, so the score carries a signal."""
    root = tmp_path_factory.mktemp("search")
    build_tiny_llava(root / "base", seed=1)
    for name, seed in (("a", 2), ("b", 3)):
        make_finetune(root / "base", root / name, seed, scale=0.05)
    files = {}
    for part, n in (("dev", 8), ("test", 6)):
        data = eval_data.vqav2(root / part, n=n)
        evaluate(str(root / "base"), "vqav2", **data, out=root / f"eval-{part}", max_new_tokens=4, progress=False)
        answers = [json.loads(line)["answer"] for line in (root / f"eval-{part}" / "samples.jsonl").read_text().splitlines()]
        ann = json.loads(data["annotations"].read_text())
        for i, a in enumerate(ann["annotations"]):
            if i % 2 == 0:
                a["answers"] = [{"answer": answers[i], "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
        data["annotations"].write_text(json.dumps(ann))
        files[part] = {k: str(Path(v).relative_to(root)) for k, v in data.items()}
    return root, files


def spec_for(root: Path, files: dict, *, method="task_arithmetic", trials=4, objective="score", extra=None,
             sampler="tpe", weights=(0.0, 1.0), **params) -> Path:
    models = [{"model": m, "parameters": {"weight": {"search": list(weights)}}} for m in ("a", "b")]
    spec = {"merge_method": method, "base_model": "base", "models": models, "parameters": params,
            "search": {"trials": trials, "objective": objective, "sampler": sampler, "max_new_tokens": 4,
                       "tasks": [{"task": "vqav2", **files["dev"], "test": files["test"]}], **(extra or {})}}
    path = root / f"spec-{method}-{objective}-{trials}.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_finds_a_planted_optimum(world, tmp_path):
    """The objective is the distance to the task-arithmetic merge at weights (0.3, 0.8), computed from the
    transformers weights of the three models: the search lands next to those weights."""
    root, files = world
    base, a, b = (_weights(root / n)[PROBE] for n in ("base", "a", "b"))
    target = base + 0.3 * (a - base) + 0.8 * (b - base)

    def closeness(model, processor):
        return -float(((model.state_dict()[PROBE] - target) ** 2).sum())

    spec = spec_for(root, files, trials=30, sampler="cmaes")
    result = search(spec, tmp_path / "out", objective=closeness, quiet=True)
    assert result.best_params["models.a.weight"] == pytest.approx(0.3, abs=0.06)
    assert result.best_params["models.b.weight"] == pytest.approx(0.8, abs=0.06)
    assert result.trials == 30


def test_best_candidate_equals_merge_of_best_recipe(world, tmp_path):
    """The weights a candidate holds in memory are the ones `mmmerge merge best_recipe.yml` writes (a random
    method: dare_ties with a seed), and the dev and test scores the search reports are `mmmerge eval`'s."""
    root, files = world
    spec = spec_for(root, files, method="dare_ties", trials=3, extra={"merge_seed": 7}, weights=(0.0, 0.01),
                    density={"search": [0.5, 1.0]})
    out = tmp_path / "out"
    assert main(["search", str(spec), "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    best = out / "best_recipe.yml"
    merge(best, tmp_path / "merged", seed=7, quiet=True)
    cands = Candidates(None, seed=7)
    cands.load(yaml.safe_load(best.read_text()))
    written = _weights(tmp_path / "merged")
    in_memory = cands.model.state_dict()
    assert set(written) == set(in_memory)
    for name, tensor in written.items():
        assert torch.equal(tensor, in_memory[name]), name
    for part in ("dev", "test"):
        data = {k: root / v for k, v in files[part].items()}
        metrics = evaluate(str(tmp_path / "merged"), "vqav2", **data, out=tmp_path / f"eval-{part}", max_new_tokens=4,
                           progress=False)
        assert result[f"{part}_scores"]["vqav2"] == metrics["overall"] > 0  # near the base: its answers score
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 4 and trials[0].startswith("trial,state,value")
    assert result["best_value"] == max(float(line.split(",")[2]) for line in trials[1:])
    assert (out / "history.png").stat().st_size > 0 and (out / "importance.png").stat().st_size > 0


def test_entropy_objective_is_the_first_answer_tokens_entropy(world, tmp_path):
    """The entropy objective equals the mean entropy of the next-token distribution after each dev prompt,
    recomputed here one prompt at a time with the written model."""
    from mmmerge.eval.generate import build_prompt, load_model

    root, files = world
    spec = spec_for(root, files, trials=1, objective="entropy")
    result = search(spec, tmp_path / "out", quiet=True)
    merge(tmp_path / "out" / "best_recipe.yml", tmp_path / "merged", quiet=True)
    model, processor = load_model(tmp_path / "merged", "cpu", progress=False)
    questions = json.loads((root / files["dev"]["questions"]).read_text())["questions"]
    total = 0.0
    from PIL import Image

    for q in questions:
        image = Image.open(root / files["dev"]["images"] / f"COCO_val2014_{q['image_id']:012d}.jpg").convert("RGB")
        prompt = build_prompt(processor, q["question"] + "\nAnswer the question using a single word or phrase.")
        enc = processor(images=[image], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            p = torch.softmax(model(**enc).logits[0, -1].double(), -1)
        total += float(-(p * p.log()).sum())
    assert -result.best_value == pytest.approx(total / len(questions), rel=1e-4)


def test_agreement_of_a_choice_only_search_is_complete(world, tmp_path):
    """A candidate's neighbour moves every searched range; with only a choice of methods there is no range,
    the neighbour is the candidate itself, and every answer agrees."""
    root, files = world
    spec = {"merge_method": {"choice": ["task_arithmetic", "ties"]}, "base_model": "base",
            "models": [{"model": "a", "parameters": {"weight": 0.5, "density": 0.5}},
                       {"model": "b", "parameters": {"weight": 0.5, "density": 0.5}}],
            "search": {"trials": 2, "objective": "agreement", "max_new_tokens": 4, "sampler": "random",
                       "tasks": [{"task": "vqav2", **files["dev"]}]}}
    path = root / "spec-agreement.yml"
    path.write_text(yaml.safe_dump(spec))
    search(path, tmp_path / "out", quiet=True)
    header, *rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert [float(dict(zip(header.split(","), row.split(",")))["value"]) for row in rows] == [100.0, 100.0]


def test_agreement_is_the_share_of_equal_answers_of_two_neighbours(world, tmp_path):
    """The agreement objective equals the share of dev questions that `mmmerge eval` answers the same for the
    candidate and for its neighbour (every searched range moved by agreement_step of its width), both written
    by `mmmerge merge`."""
    root, files = world
    spec = spec_for(root, files, trials=1, objective="agreement", weights=(0.0, 0.02),
                    extra={"agreement_step": 0.25})
    result = search(spec, tmp_path / "out", quiet=True)
    recipe = yaml.safe_load((tmp_path / "out" / "best_recipe.yml").read_text())
    answers = []
    for label, shift in (("candidate", 0.0), ("neighbour", 0.25 * 0.02)):
        moved = yaml.safe_load(yaml.safe_dump(recipe))
        for m in moved["models"]:
            w = m["parameters"]["weight"]
            m["parameters"]["weight"] = w + shift if w + shift <= 0.02 else w - shift
        merge(moved, tmp_path / label, quiet=True)
        evaluate(str(tmp_path / label), "vqav2", **{k: root / v for k, v in files["dev"].items()},
                 out=tmp_path / f"eval-{label}", max_new_tokens=4, progress=False)
        answers.append([json.loads(line)["answer"]
                        for line in (tmp_path / f"eval-{label}" / "samples.jsonl").read_text().splitlines()])
    same = sum(a == b for a, b in zip(*answers))
    assert 0 < same < len(answers[0])  # the neighbours differ on some questions: the check can tell
    assert result.best_value == pytest.approx(100.0 * same / len(answers[0]))


def test_a_gradient_of_searched_points_becomes_a_plain_gradient():
    """Each point of a gradient can be searched; a candidate's recipe holds the plain gradient (which the engine
    interpolates over the layers as mergekit does)."""
    from mmmerge.searching.space import bind, find_dimensions

    recipe = {"merge_method": "linear", "models": [
        {"model": "m/a", "parameters": {"weight": [{"search": [0.0, 1.0]}, {"search": [0.0, 1.0]}]}},
        {"model": "m/b", "parameters": {"weight": 1.0}}]}
    dims = find_dimensions(recipe)
    assert [d.name for d in dims] == ["models.a.weight.0", "models.a.weight.1"]
    plain = bind(recipe, dims, {"models.a.weight.0": 0.2, "models.a.weight.1": 0.9})
    assert plain["models"][0]["parameters"]["weight"] == [0.2, 0.9] and recipe["models"][0]["parameters"]["weight"][0] == {
        "search": [0.0, 1.0]}


def test_a_parameter_the_chosen_method_does_not_read_is_not_searched():
    """With a choice of methods, `density` and `lambda` are searched for ties (which reads them) and left out
    of a linear candidate's recipe (linear does not read them)."""
    from mmmerge.searching.space import active, bind, find_dimensions

    recipe = {"merge_method": {"choice": ["linear", "ties"]}, "base_model": "base",
              "models": [{"model": "m/a", "parameters": {"weight": 1.0, "density": {"search": [0.2, 0.9]}}}],
              "parameters": {"lambda": {"search": [0.5, 1.5], "name": "scale"}}}
    dims = find_dimensions(recipe)
    assert [d.name for d in dims] == ["merge_method", "models.a.density", "scale"]
    assert [d.name for d in active(dims, recipe, {"merge_method": "ties"})] == [d.name for d in dims]
    assert [d.name for d in active(dims, recipe, {"merge_method": "linear"})] == ["merge_method"]
    plain = bind(recipe, dims, {"merge_method": "linear"})
    assert plain["models"][0]["parameters"] == {"weight": 1.0} and plain["parameters"] == {}
    assert bind(recipe, dims, {"merge_method": "ties", "models.a.density": 0.4, "scale": 1.0})["models"][0] == {
        "model": "m/a", "parameters": {"weight": 1.0, "density": 0.4}}


def test_a_killed_search_resumes_without_repeating_finished_trials(world, tmp_path):
    root, files = world
    spec = spec_for(root, files, trials=5, sampler="random")
    out = tmp_path / "out"
    script = f"""
import os, signal, sys
sys.path[:0] = {[str(ROOT / 'tests'), str(ROOT / 'examples')]!r}
from mmmerge.searching import search
calls = []
def objective(model, processor):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(model.state_dict()[{PROBE!r}].sum())
search({str(spec)!r}, {str(out)!r}, objective=objective, quiet=True)
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    import optuna

    study = optuna.load_study(study_name="mmmerge-search", storage=f"sqlite:///{out / 'study.db'}")
    before = {t.number: t.params for t in study.trials if t.state.name == "COMPLETE"}
    assert len(before) == 2 and [t.state.name for t in study.trials][-1] == "RUNNING"
    calls = []

    def objective(model, processor):
        calls.append(1)
        return float(model.state_dict()[PROBE].sum())

    result = search(spec, out, objective=objective, quiet=True)
    study = optuna.load_study(study_name="mmmerge-search", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 5 and states.count("FAIL") == 1 and "RUNNING" not in states
    assert len(calls) == 3  # only the trials left: the failed one and two more
    for number, params in before.items():
        assert study.trials[number].params == params
    assert result.trials == 5


def test_two_processes_share_one_study(world, tmp_path):
    """torchrun with two CPU processes: both take trials of one SQLite study, rank 0 writes the outputs."""
    root, files = world
    spec = spec_for(root, files, trials=10, sampler="random", extra={"max_new_tokens": 16})  # trials long enough
    out = tmp_path / "out"                                      # for the second process to join
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29533", "-m", "mmmerge", "search", str(spec), "--out", str(out), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert 10 <= result["trials"]["complete"] <= 11  # a process finishes the trial it started when the budget is met
    header, *rows = (out / "trials.csv").read_text().splitlines()
    process, state = header.split(",").index("process"), header.split(",").index("state")
    assert {row.split(",")[state] for row in rows} <= {"COMPLETE", "PRUNED"}
    assert len({row.split(",")[process] for row in rows if row.split(",")[state] == "COMPLETE"}) == 2


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("search"), "a search spec is a recipe with a `search:` section"),
    (lambda s: s["search"].pop("trials"), "give a budget"),
    (lambda s: s["models"][0]["parameters"].update(weight={"search": [1.0, 0.0]}), "LOW < HIGH"),
    (lambda s: s["parameters"].update(density={"search": [0.5, 2.0]}), "density = 2.0 does not make a valid recipe"),
    (lambda s: s["search"]["tasks"][0].update(split=0.5), "not both"),
])
def test_bad_specs_are_one_line(world, tmp_path, capsys, change, message):
    root, files = world
    spec = yaml.safe_load(spec_for(root, files, method="ties", trials=2).read_text())
    change(spec)
    path = root / "bad.yml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["search", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_per_component_and_per_layer_group_values(world, tmp_path):
    """A `components:` recipe: the language model's attention and other tensors get their own searched weight
    (filters), the vision tower and projector come from the base; the best recipe merges to the candidate."""
    root, files = world
    group = [{"filter": "self_attn", "value": {"search": [0.0, 1.0], "name": "attention"}},
             {"value": {"search": [0.0, 1.0], "name": "rest"}}]
    spec = {"components": {"vision": {"source": "base"}, "projector": {"source": "base"},
                           "language": {"merge_method": "linear", "models": [
                               {"model": "a", "parameters": {"weight": group}},
                               {"model": "b", "parameters": {"weight": 1.0}}]}},
            "output": {"format": "llava"},
            "search": {"trials": 2, "sampler": "random", "tasks": [{"task": "vqav2", **files["dev"]}]}}
    path = root / "spec-components.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    seen = []
    result = search(path, tmp_path / "out", quiet=True,
                    objective=lambda model, processor: seen.append(model.state_dict()[PROBE].clone()) or 0.0)
    assert set(result.best_params) == {"attention", "rest"}
    best = yaml.safe_load((tmp_path / "out" / "best_recipe.yml").read_text())
    assert best["components"]["language"]["models"][0]["parameters"]["weight"][0]["value"] == result.best_params["attention"]
    merge(tmp_path / "out" / "best_recipe.yml", tmp_path / "merged", quiet=True)
    assert torch.equal(_weights(tmp_path / "merged")[PROBE], seen[0])  # trial 0 is the best of equal scores
    w = result.best_params["attention"]
    a, b = (_weights(root / n)[PROBE] for n in ("a", "b"))
    torch.testing.assert_close(seen[0], (w * a + b) / (w + 1))


def test_the_readme_search_spec_parses_and_binds():
    """The spec README.md shows: its searched values, names and `search:` section as documented, and every
    choice of method binds to a recipe the engine parses."""
    import textwrap

    from mmmerge.engine.recipe import parse_recipe
    from mmmerge.searching.space import bind, find_dimensions
    from mmmerge.searching.spec import SearchSettings

    text = (ROOT / "README.md").read_text()
    start = text.index("  ```yaml\n  merge_method: {choice:")
    block = textwrap.dedent(text[start:text.index("  ```\n", start + 10)].split("\n", 1)[1])
    spec = yaml.safe_load(block)
    settings = SearchSettings.model_validate(spec.pop("search"))
    assert settings.trials == 30 and settings.sampler == "tpe" and settings.objective == "score"
    dims = find_dimensions(spec)
    assert [d.name for d in dims] == ["merge_method", "models.llava-a.weight", "models.llava-a.density",
                                      "models.llava-b.weight", "models.llava-b.density.self_attn", "scale"]
    for method in dims[0].choices:
        recipe = bind(spec, dims, {"merge_method": method})
        assert parse_recipe(recipe).merge.merge_method == method
        assert recipe["models"][1]["parameters"]["density"][0] == {"filter": "self_attn", "value": 0.6}


def test_log_step_and_integer_ranges_are_sampled_as_written():
    """`log`, `step` and `type: int` reach optuna: every sampled value lies in its range, on its step or an integer."""
    import optuna

    from mmmerge.searching.space import find_dimensions

    recipe = {"parameters": {"a": {"search": [1e-4, 1.0], "log": True}, "b": {"search": [0.0, 1.0], "step": 0.25},
                             "c": {"search": [2, 8], "type": "int"}}}
    dims = {d.name: d for d in find_dimensions(recipe)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    study.optimize(lambda t: seen.append({n: d.suggest(t) for n, d in dims.items()}) or 0.0, n_trials=30)
    dists = study.trials[0].distributions
    assert dists["a"].log and dists["b"].step == 0.25 and isinstance(dists["c"], optuna.distributions.IntDistribution)
    assert all(1e-4 <= v["a"] <= 1 and v["b"] in (0, 0.25, 0.5, 0.75, 1) and isinstance(v["c"], int)
               and 2 <= v["c"] <= 8 for v in seen)
    assert dims["a"].default == pytest.approx(1e-2) and dims["c"].default == 5


def test_trials_that_all_score_the_same_get_no_importances(world, tmp_path):
    """Equal scores say nothing about which value matters: result.json and the plot carry a note, not equal bars;
    scores that differ get importances."""
    root, files = world
    spec = spec_for(root, files, trials=3)
    result = search(spec, tmp_path / "same", objective=lambda model, processor: 0.5, quiet=True)
    written = json.loads((tmp_path / "same" / "result.json").read_text())
    assert result.best_value == 0.5 and written["trials"] == {"complete": 3}
    assert written["importance"] is None and written["importance_note"] == "all trials scored the same"
    assert (tmp_path / "same" / "importance.png").stat().st_size > 0

    search(spec, tmp_path / "varied", objective=lambda model, processor: float(model.state_dict()[PROBE].sum()),
           quiet=True)
    written = json.loads((tmp_path / "varied" / "result.json").read_text())
    assert written["importance"] == "importance.png" and written["importance_note"] is None
