"""The parts a search is built from, without models: objectives and samplers found by name (an unknown name is
one line offering the nearest), samplers seeded per process, and the one private optuna call still there."""

import inspect

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mmmerge.cli import main
from mmmerge.searching import study as S
from mmmerge.searching.objectives import OBJECTIVES
from mmmerge.searching.samplers import SAMPLERS
from mmmerge.searching.spec import SearchSettings, load_spec

SPEC = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": {"search": [0.0, 1.0]}}},
                                             {"model": "b", "parameters": {"weight": 0.5}}],
        "search": {"trials": 2}}


@pytest.mark.parametrize("key, given, nearest", [("objective", "scroe", "score"), ("objective", "entropi", "entropy"),
                                                 ("sampler", "cma", "cmaes"), ("sampler", "tpee", "tpe")])
def test_an_unknown_name_is_one_line_with_the_nearest(tmp_path, capsys, key, given, nearest):
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump({**SPEC, "search": {**SPEC["search"], key: given}}))
    assert main(["search", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: search.{key}: unknown {key} '{given}'") and "\n" not in err
    assert f"did you mean `{nearest}`?" in err and nearest in (SAMPLERS if key == "sampler" else OBJECTIVES)
    assert not (tmp_path / "out").exists()


def test_every_registered_name_is_accepted():
    for objective in OBJECTIVES:
        for sampler in SAMPLERS:
            spec = load_spec({**SPEC, "search": {**SPEC["search"], "objective": objective, "sampler": sampler}},
                             custom_objective=True)
            assert (spec.settings.objective, spec.settings.sampler) == (objective, sampler)


def first_points(sampler: optuna.samplers.BaseSampler) -> list[float]:
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -(t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2 - t.suggest_float("y", -1.0, 1.0) ** 2,
                   n_trials=4)
    return [v for t in study.trials for v in t.params.values()]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_is_seeded_per_process(name):
    settings = SearchSettings(sampler=name, seed=3, trials=8)
    assert first_points(S.make_sampler(settings)) == first_points(S.make_sampler(settings))
    assert first_points(S.make_sampler(settings)) != first_points(S.make_sampler(settings, rank=1))


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_the_private_optuna_call_still_ends_another_process_trial(tmp_path, storage):
    """optuna has no public call to end a trial that another process started; study.end_trial makes the private
    one optuna's own fail_stale_trials makes. This fails when optuna renames or reshapes it."""
    url = None if storage == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    assert isinstance(study._storage, optuna.storages.BaseStorage)
    assert list(inspect.signature(type(study._storage).set_trial_state_values).parameters)[1:3] == ["trial_id", "state"]
    study.ask()
    other = optuna.load_study(storage=study._storage, study_name="s")  # as a resumed run sees the study
    running = other.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert len(running) == 1 and hasattr(running[0], "_trial_id")
    assert S.fail_abandoned(other) == 1
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL]


def test_a_process_that_opens_the_study_while_another_stamps_its_schema_goes_on(tmp_path, monkeypatch):
    """Two torchrun ranks start together: optuna checks that the database has no schema version, then stamps it,
    with no lock between, so one rank's stamp can land between the other's check and its own stamp (a UNIQUE
    constraint error that failed a CI run). Replayed here: the second process reads no version twice (its check and
    its stamp) on a database the first process has already stamped."""
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'study.db'}"
    S.make_storage(url)  # the first process: tables made and stamped
    heads = MigrationContext.get_current_heads
    calls = []

    def before_the_other_stamped(self):  # its check, then its stamp's own read: both before the other's write
        calls.append(None)
        return () if len(calls) <= 2 else heads(self)

    monkeypatch.setattr(MigrationContext, "get_current_heads", before_the_other_stamped)
    import sqlalchemy.exc
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # the race as optuna meets it
        optuna.storages.RDBStorage(url)
    calls.clear()
    storage = S.make_storage(url)  # the second process: tries again and finds the schema
    assert len(calls) > 2
    assert optuna.create_study(storage=storage, study_name="s").study_name == "s"
