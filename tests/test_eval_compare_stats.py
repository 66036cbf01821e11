"""eval-compare's statistics against independent computations (a hand-derived McNemar table, scipy, a naive
index-resampling bootstrap, the normal approximation), and its report and chart on evaluation folders."""

import json
import math

import numpy as np
import pytest

from mmmerge.eval import chart
from mmmerge.eval.compare import CompareError, analyse, compare, load_run
from mmmerge.eval.stats import bootstrap_ci, mcnemar_exact, paired_test
from cli_run import one_line_error, run


def test_mcnemar_by_hand():
    # 1 question only A gets right, 6 only B, 10 both, 3 neither: p = 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8 / 128
    a = [1] * 1 + [0] * 6 + [1] * 10 + [0] * 3
    b = [0] * 1 + [1] * 6 + [1] * 10 + [0] * 3
    assert mcnemar_exact(a, b) == (1, 6, 0.125)
    assert mcnemar_exact(a, a)[2] == 1.0 and mcnemar_exact([1] * 5, [0] * 5)[2] == 2 / 32


def test_mcnemar_equals_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(60) < rng.random(), rng.random(60) < rng.random()
        only_a, only_b, p = mcnemar_exact(a, b)
        if only_a + only_b:
            assert p == pytest.approx(scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9)


def naive_bootstrap(x, resamples=4000, seed=1):
    """Resample indices with replacement (the textbook bootstrap), return the means."""
    x = np.asarray(x, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    return x[idx].mean(1)


def test_bootstrap_interval_equals_naive_and_normal_ones():
    rng = np.random.default_rng(2)
    binary = (rng.random(2000) < 0.62).astype(float)
    vqa = rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], size=2000, p=[0.3, 0.1, 0.1, 0.1, 0.4])
    for x in (binary, vqa):
        for level, z in ((0.8, 1.2816), (0.95, 1.96)):
            lo, hi = bootstrap_ci(x, level=level)
            half = z * x.std(ddof=1) / math.sqrt(len(x))  # the normal approximation's half width
            tail = (1 - level) / 2
            n_lo, n_hi = np.quantile(naive_bootstrap(x, resamples=5000), [tail, 1 - tail])
            assert abs(lo - n_lo) < 0.08 * half and abs(hi - n_hi) < 0.08 * half, (level, lo, n_lo, hi, n_hi)
            assert abs(lo - (x.mean() - half)) < 0.08 * half and abs(hi - (x.mean() + half)) < 0.08 * half
    vqa = vqa[:400]
    scipy_stats = pytest.importorskip("scipy.stats")
    res = scipy_stats.bootstrap((vqa,), np.mean, method="percentile", n_resamples=4000, random_state=3)
    assert bootstrap_ci(vqa) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high), abs=0.01)


def test_paired_bootstrap_equals_a_naive_one():
    rng = np.random.default_rng(4)
    base = rng.choice([0.0, 0.3, 0.6, 1.0], size=300)
    model = np.clip(base + rng.choice([-0.3, 0.0, 0.3], size=300, p=[0.25, 0.45, 0.3]), 0, 1)
    result = paired_test(model, base)
    d = model - base
    means = naive_bootstrap(d)
    assert result.test == "paired bootstrap" and result.questions == 300
    assert result.difference == pytest.approx(d.mean())
    assert (result.low, result.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=0.01)
    assert result.p_value == pytest.approx(np.mean(np.abs(means - d.mean()) >= abs(d.mean())), abs=0.02)
    assert paired_test([1, 0, 1, 1], [0, 0, 1, 0]).test == "McNemar exact"


def write_run(folder, scores, types, task="vqav2"):
    """An `mmmerge eval` output folder with the given per-question scores (metrics from them)."""
    folder.mkdir(parents=True)
    overall = round(100 * sum(scores) / len(scores), 2)
    (folder / "metrics.json").write_text(json.dumps({"overall": overall}))
    (folder / "run.json").write_text(json.dumps({"task": task, "headline": "overall"}))
    (folder / "samples.jsonl").write_text("".join(
        json.dumps({"question_id": 100 + i, "answer": "x", "score": s, "answer_type": t}) + "\n"
        for i, (s, t) in enumerate(zip(scores, types))))
    return folder


@pytest.fixture
def runs(tmp_path):
    types = ["yes/no"] * 20 + ["number"] * 12 + ["other"] * 8
    base = [1.0] * 10 + [0.0] * 10 + [1.0] * 3 + [0.0] * 9 + [0.0] * 8
    better = [1.0] * 18 + [0.0] * 2 + [1.0] * 3 + [0.0] * 9 + [0.0] * 8  # 8 more right among yes/no, none lost
    return (write_run(tmp_path / "base", base, types), write_run(tmp_path / "better", better, types),
            {"types": types, "base": base, "better": better})


def test_report_counts_intervals_and_tests(runs, tmp_path):
    base, better, data = runs
    text = compare([better, base], baseline="base", by="answer_type", chart=tmp_path / "c.png")
    for group, n in [("all", 40), ("yes/no", 20), ("number", 12), ("other", 8)]:
        assert f"| {group} | {n} | " in text
    a = analyse([load_run(better), load_run(base)], by="answer_type", baseline=str(base))
    assert a.baseline["name"] == "base"
    yes_no = a.paired["better"]["yes/no"]
    assert yes_no.test == "McNemar exact" and yes_no.p_value == 2 / 2 ** 8  # 8 discordant pairs, all one way
    assert yes_no.difference == pytest.approx(8 / 20)
    assert a.paired["better"]["other"].p_value == 1.0
    assert a.cells["base"]["all"][0] == pytest.approx(13 / 40)
    assert "+40.0 [" in text and "p=0.008 (n=20)" in text and "McNemar exact" in text
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_requests_are_one_line(runs, tmp_path):
    base, better, _ = runs
    one_line_error(run("eval-compare", base, better, "--by", "colour"), "no field 'colour'", "answer_type")
    one_line_error(run("eval-compare", base, better, "--baseline", "other"), "baseline other", "not among")
    (better / "samples.jsonl").unlink()
    with pytest.raises(CompareError, match="better: no per-question scores"):
        compare([base, better], by="answer_type")
    r = run("eval-compare", base, better, "--out", tmp_path / "fallback.png")  # metrics alone still compare
    assert r.returncode == 0 and "no per-question scores" in r.stdout


def test_bad_scores_and_chart_paths_are_one_line_and_touch_nothing(runs, tmp_path):
    base, better, _ = runs
    for path in (base / "metrics.json", better / "samples.jsonl", base, tmp_path / "chart.txt"):
        before = {f: f.read_bytes() for f in (*base.iterdir(), *better.iterdir())}
        one_line_error(run("eval-compare", base, better, "--out", path), str(path))
        assert {f: f.read_bytes() for f in (*base.iterdir(), *better.iterdir())} == before
    assert not (tmp_path / "chart.txt").exists()
    lines = (better / "samples.jsonl").read_text().splitlines()
    for bad in ('"abc"', "NaN", "true", "[1]"):  # as JSON text: NaN is what Python's json writes for nan
        row = json.dumps({**json.loads(lines[1]), "score": "BAD"}).replace('"BAD"', bad)
        (better / "samples.jsonl").write_text("\n".join([lines[0], row, *lines[2:]]))
        one_line_error(run("eval-compare", base, better), "better/samples.jsonl: line 2: score", "not a finite number")


def test_runs_of_different_tasks_are_refused(runs, tmp_path):
    base, better, data = runs
    pope = write_run(tmp_path / "pope", data["better"], data["types"], task="pope")
    one_line_error(run("eval-compare", base, pope), "different tasks", "base: vqav2", "pope: pope")


def test_a_baseline_sharing_no_question_says_so(runs, tmp_path):
    base, _, data = runs
    other = write_run(tmp_path / "other", data["better"], data["types"])
    rows = [json.loads(line) for line in (other / "samples.jsonl").read_text().splitlines()]
    (other / "samples.jsonl").write_text("".join(json.dumps({**r, "question_id": r["question_id"] + 1000}) + "\n"
                                                 for r in rows))
    r = run("eval-compare", base, other)
    assert r.returncode == 0, r.stderr
    assert "no shared questions" in r.stdout and "p-value ()" not in r.stdout
    a = analyse([load_run(base), load_run(other)])
    assert a.paired == {"other": {}}


def test_chart_marks_baseline_zero_bars_and_every_mark_in_the_legend():
    fig = chart.draw(["all", "a"], ["m1", "m2"], {"m1": {"all": 50.0, "a": 0.0}, "m2": {"all": 70.0, "a": 20.0}},
                     intervals={"m1": {"all": (40.0, 60.0), "a": (0.0, 0.0)},
                                "m2": {"all": (60.0, 80.0), "a": (10.0, 30.0)}},
                     baseline="m1", significant={"m2": {"all": True, "a": False}})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["m1 (baseline)", "m2", "95% bootstrap interval", "differs from the baseline (p < 0.05)"]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("0") == 1 and texts.count("*") == 1
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 2  # the baseline's two bars
    import matplotlib.pyplot as plt

    plt.close(fig)
