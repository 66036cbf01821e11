"""`mmmerge search`: optuna chooses merge coefficients, candidates merged in memory and scored on a dev split.

The checks are independent of the search's own code: a planted optimum computed from the models'
transformers weights; the written best recipe merged by `mmmerge merge` and scored by `mmmerge eval`; the
entropy recomputed with a plain forward pass; a study killed with SIGKILL and resumed.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import eval_data
from cli_run import one_line_error, run
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


def test_a_study_resumes_only_with_the_spec_that_made_it(world, tmp_path):
    """Run again with another spec on the same output: one line, and the output is byte for byte what the first
    spec's search wrote; the first spec with a larger budget resumes it."""
    root, files = world
    out = tmp_path / "out"

    def objective(model, processor):
        return float(model.state_dict()[PROBE].sum())

    first = spec_for(root, files, trials=2, sampler="random")
    search(first, out, objective=objective, quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = yaml.safe_load(first.read_text())
    other["models"][0]["parameters"]["weight"] = {"search": [0.5, 1.0]}
    path = root / "spec-other.yml"
    path.write_text(yaml.safe_dump(other))
    with pytest.raises(RecipeError, match="of another spec"):
        search(path, out, objective=objective, quiet=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert search(first, out, objective=objective, quiet=True, trials=3).trials == 3


def test_force_never_replaces_what_the_search_reads(world, tmp_path):
    """`--out PREV --force`, PREV a previous search output holding the dev questions the spec reads, and `--out`
    inside an input model: one line each, and every file is what it was."""
    from tiny_world import snapshot

    root, files = world
    prev = tmp_path / "prev"
    search(spec_for(root, files, trials=1), prev, objective=lambda model, processor: 0.0, quiet=True)
    for key in ("questions", "annotations", "images"):
        (shutil.copytree if key == "images" else shutil.copy)(root / files["dev"][key], prev / key)
    dev = {key: str(prev / key) for key in ("questions", "annotations", "images")}
    spec = spec_for(root, files, trials=1, extra={"tasks": [{"task": "vqav2", **dev}]})
    before = snapshot(prev)
    one_line_error(run("search", spec, "--out", prev, "--force"), "which this run reads")
    assert snapshot(prev) == before

    model = snapshot(root / "a")
    one_line_error(run("search", spec_for(root, files, trials=1), "--out", root / "a" / "searched"),
                   "inside the input")
    assert snapshot(root / "a") == model and not (root / "a" / "searched").exists()


@pytest.mark.parametrize("url", ["{notes}", "sqlite:///{notes}"])
def test_a_storage_that_is_no_study_is_never_written(world, tmp_path, url):
    """`--storage` naming a user's text file: one line before anything opens it, and the file is as it was."""
    root, files = world
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    r = run("search", spec_for(root, files, trials=1), "--out", tmp_path / "out", "--storage", url.format(notes=notes))
    one_line_error(r, str(notes), "not an")
    assert notes.read_text() == "my notes\n" and not (tmp_path / "out").exists()


def test_a_storage_on_a_read_only_file_system_is_one_line(world, tmp_path):
    """Needs mount rights (root); skipped elsewhere."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({r.stderr.strip()})")
    try:
        root, files = world
        r = run("search", spec_for(root, files, trials=1), "--out", tmp_path / "out", "--storage",
                f"sqlite:///{mnt / 'study.db'}")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"error: {mnt / 'study.db'}: the file system is read-only"), r.stderr
        assert not (tmp_path / "out").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_processes_sharing_a_sqlite_study_wait_for_each_others_lock(tmp_path):
    """SQLite's own wait for another writer's lock (5 s) runs out on a loaded machine and fails the whole run: the
    study's connections wait as long as SQLITE_LOCK_WAIT_SECONDS, read back from SQLite itself."""
    from mmmerge.searching.study import SQLITE_LOCK_WAIT_SECONDS, make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    with storage.engine.connect() as connection:
        waits_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert waits_ms == SQLITE_LOCK_WAIT_SECONDS * 1000


def test_two_processes_share_one_study(world, tmp_path):
    """torchrun with two CPU processes: both take trials of one SQLite study, rank 0 writes the outputs."""
    root, files = world
    spec = spec_for(root, files, trials=10, sampler="random", extra={"max_new_tokens": 16})  # trials long enough
    out = tmp_path / "out"                                      # for the second process to join
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "mmmerge", "search", str(spec), "--out", str(out), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
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
    (lambda s: s["parameters"].update(density={"search": [0.2, 0.8], "type": "int"}), "holds no integer"),
    (lambda s: s.update(merge_method="linear") or s["parameters"].update(density={"search": [0.2, 1.0]}),
     "merge method linear never reads `density`"),
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


@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "trials must be at least 1, got 0"),
    (["--trials", "-3"], "trials must be at least 1, got -3"),
    (["--timeout", "0"], "timeout must be above 0"),
])
def test_a_budget_that_runs_no_trial_is_refused_at_once(world, tmp_path, flags, message):
    root, files = world
    r = run("search", spec_for(root, files, trials=2), "--out", tmp_path / "out", *flags)
    one_line_error(r, message)
    assert not (tmp_path / "out").exists()


class CurrentStderr(io.TextIOBase):
    """Writes to whatever sys.stderr is when written to (a logging handler keeps the stream of its creation)."""

    def write(self, text):
        return sys.stderr.write(text)


def test_a_failed_trial_is_one_line(world, tmp_path, monkeypatch):
    """A dev image that cannot be decoded fails the first trial: the command says so in one `error:` line, with no
    optuna "Trial 0 failed" traceback before it."""
    import logging

    root, files = world
    images = tmp_path / "images"
    shutil.copytree(root / files["dev"]["images"], images)
    next(images.iterdir()).write_bytes(b"not an image")
    # as in a terminal: optuna's handlers write to the stderr `run` captures, pytest's own log capture is left out
    optuna_logger = logging.getLogger("optuna")
    monkeypatch.setattr(optuna_logger, "handlers", [h for h in optuna_logger.handlers
                                                    if not type(h).__module__.startswith("_pytest")])
    for handler in optuna_logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", CurrentStderr())
    spec = spec_for(root, files, trials=2, extra={"tasks": [{"task": "vqav2", **files["dev"], "images": str(images)}]})
    r = run("search", spec, "--out", tmp_path / "out")
    one_line_error(r, "image")
    assert "Trial" not in r.stderr


INTERRUPTED_TELL = """
import ctypes, os, signal, sys
from optuna.study import _optimize
from mmmerge import signals
from mmmerge.cli import main

tell, sent = _optimize._tell_with_warning, []


def c_handler():  # the handler the C library holds for SIGINT: Python's own, unless a library replaced it
    buffer = (ctypes.c_void_p * 32)()
    ctypes.CDLL(None).sigaction(signal.SIGINT, None, buffer)
    return buffer[0]


def interrupted_tell(*args, **kwargs):  # the signal lands inside optuna's bookkeeping, as a Ctrl-C may
    if not sent:
        seen = dict(python=repr(signal.getsignal(signal.SIGINT)), c_is_pythons=c_handler() == PYTHONS,
                    depth=list(signals._depth),
                    replaced=len(signals._replaced),
                    mask=sorted(map(int, signal.pthread_sigmask(signal.SIG_BLOCK, []))))
        sent.append(os.kill(os.getpid(), signal.SIGINT))
        seen["pending after"] = list(signals._pending)
        with open(os.environ["SEEN_AT_TELL"], "w") as f:
            f.write(repr(seen))
    return tell(*args, **kwargs)


_optimize._tell_with_warning = interrupted_tell
PYTHONS = c_handler()
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_optuna_records_a_trial_is_one_line(world, tmp_path):
    """SIGINT arriving while optuna records a finished trial (its own code, between trials; left alone it ends in an
    UnboundLocalError there): the trial is recorded, the next one stops at once, and the command says so in one
    line. In a process of its own, as a user's command runs.

    Twice in full suites on a loaded machine (session 12) the signal went unseen: the search finished, exit 0, no
    output; never when this test ran alone or beside others. The cause is not known; such a run is tried once more
    and what the process held when the signal was sent is given as a warning, for whoever looks next."""
    import warnings

    import optuna

    root, files = world
    spec = spec_for(root, files, trials=3)
    for attempt in (1, 2):
        out, seen = tmp_path / f"out{attempt}", tmp_path / f"seen{attempt}"
        r = subprocess.run([sys.executable, "-c", INTERRUPTED_TELL, "search", str(spec), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                "SEEN_AT_TELL": str(seen)})
        if attempt == 1 and r.returncode == 0 and not r.stderr:
            warnings.warn(f"SIGINT inside optuna's tell went unseen; at the signal: "
                          f"{seen.read_text() if seen.exists() else 'tell never ran'}")
            continue
        break
    assert r.returncode == 130 and r.stderr.count("\n") == 1 and "interrupted (SIGINT)" in r.stderr, r.stderr
    assert f"the study in {out / 'study.db'} keeps every finished trial" in r.stderr  # not "no output"
    study = optuna.load_study(study_name="mmmerge-search", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]


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


def readme_spec() -> dict:
    """The search spec README.md shows, as YAML data."""
    import textwrap

    text = (ROOT / "README.md").read_text()
    start = text.index("  ```yaml\n  merge_method: {choice:")
    return yaml.safe_load(textwrap.dedent(text[start:text.index("  ```\n", start + 10)].split("\n", 1)[1]))


def test_the_readme_search_spec_runs_on_the_tiny_models(world, tmp_path):
    """README.md's spec as it is, its models and files renamed to the tiny ones: trials of both methods run (dare_ties
    with a seed plans the same tensors as ties, in mergekit's order) and the best recipe is one of them."""
    root, files = world
    spec = readme_spec()
    names = {"llava": "base", "llava-a": "a", "llava-b": "b"}
    spec["base_model"] = names[spec["base_model"]]
    for m in spec["models"]:
        m["model"] = names[m["model"]]
    spec["search"].update(trials=4, sampler="random", max_new_tokens=4,
                          tasks=[{"task": "vqav2", **files["dev"], "test": files["test"]}])
    path = root / "spec-readme.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = search(path, tmp_path / "out", quiet=True)
    header, *rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    method = header.split(",").index("merge_method")
    assert {row.split(",")[method] for row in rows} == {"ties", "dare_ties"}
    assert result.trials == 4 and result.best_recipe["merge_method"] == result.best_params["merge_method"]


def test_the_readme_search_spec_parses_and_binds():
    """The spec README.md shows: its searched values, names and `search:` section as documented, and every
    choice of method binds to a recipe the engine parses."""
    from mmmerge.engine.recipe import parse_recipe
    from mmmerge.searching.space import bind, find_dimensions
    from mmmerge.searching.spec import SearchSettings

    spec = readme_spec()
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
                             "c": {"search": [2, 8], "type": "int"}, "d": {"search": [0.5, 2.5], "type": "int"}}}
    dims = {d.name: d for d in find_dimensions(recipe)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    study.optimize(lambda t: seen.append({n: d.suggest(t) for n, d in dims.items()}) or 0.0, n_trials=30)
    dists = study.trials[0].distributions
    assert dists["a"].log and dists["b"].step == 0.25 and isinstance(dists["c"], optuna.distributions.IntDistribution)
    assert all(1e-4 <= v["a"] <= 1 and v["b"] in (0, 0.25, 0.5, 0.75, 1) and isinstance(v["c"], int)
               and 2 <= v["c"] <= 8 and v["d"] in (1, 2) for v in seen)
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
