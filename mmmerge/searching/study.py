"""The optuna side of a search: the sampler, the study in its storage, and the trial budget shared by every
process that works on the study.

The study lives in its storage (SQLite in the output folder unless another URL is given), so a search that
was stopped resumes where it was: finished trials are kept, and the budget counts them. Several processes
(torchrun ranks, or other machines given the same storage) each take trials until the study as a whole has
its `trials` finished ones.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..errors import RecipeError
from ..signals import deferred_signals, signals_delivered
from .samplers import SAMPLERS
from .spec import SearchSettings

SQLITE_LOCK_WAIT_SECONDS = 120  # how long a process waits for another's write lock on a shared SQLite study
HEARTBEAT_SECONDS = 30  # a trial whose process stopped beating for twice this is failed and its budget freed


class OneLineWarnings(logging.Handler):
    """optuna's warnings as mmmerge's `warning: ...` lines on the stderr of the moment. A trial that failed by an
    exception is left out: optuna logs it with a traceback, then raises it, and the caller reports it once (one
    line; `--debug` shows the traceback)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.funcName == "_log_failed_trial" and (record.exc_info or " failed with value " in message):
            return  # the raised error (or the other line of the same failure) says it
        lines = message.strip().splitlines()
        print(f"warning: optuna: {lines[0] if lines else record.levelname}", file=sys.stderr)


def quiet_optuna() -> None:
    """optuna says only warnings, one line each (OneLineWarnings), in place of its own handler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    root = logging.getLogger("optuna")
    if not any(isinstance(h, OneLineWarnings) for h in root.handlers):
        root.addHandler(OneLineWarnings())


def default_storage(out: Path) -> str:
    return f"sqlite:///{Path(out).absolute() / 'study.db'}"


SQLITE_HEADER = b"SQLite format 3\x00"


def storage_file(url: str) -> Path | None:
    """The file a storage URL names: an SQLite database (sqlite:///PATH) or an optuna journal (a plain path);
    None for a database server or an in-memory database."""
    if url.startswith(("postgresql", "mysql")):
        return None
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            return None  # sqlite:// is an in-memory database
        path = url.removeprefix("sqlite:///").split("?")[0]
        return None if path in ("", ":memory:") else Path(path)
    return Path(url)


def _is_journal(head: bytes) -> bool:
    """optuna's journal file: one JSON object per line, each naming its operation."""
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and "op_code" in first


def check_storage(url: str) -> None:
    """Before the storage is opened for writing: an existing file must be what the URL says (an SQLite database,
    or an optuna journal), and it, or the folder that will hold it, must be writable. A user's text file named by
    mistake is never appended to; a read-only file system is one line, not a database traceback."""
    path = storage_file(url)
    if path is None:
        return
    kind = "an SQLite database" if url.startswith("sqlite:") else "an optuna journal file"
    if path.exists():
        if not path.is_file():
            raise RecipeError(f"{path}: the study storage is not a file; name {kind}")
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if head and not (head.startswith(SQLITE_HEADER) if url.startswith("sqlite:") else _is_journal(head)):
            raise RecipeError(f"{path}: not {kind}, so not a study storage; name a new file or a study's storage "
                              "(e.g. --storage sqlite:///study.db)")
        writable = path
    else:
        writable = path.absolute().parent
        if not writable.is_dir():
            raise RecipeError(f"{path}: the study storage's folder {writable} does not exist")
    if not os.access(writable, os.W_OK):  # an OSError as the write would raise: the CLI says it in one line
        code = errno.EROFS if os.statvfs(writable).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(path))


SCHEMA_TRIES = 20  # how often a process opens a database whose schema another process is making at that moment


def _schema_race(error: Exception) -> bool:
    """The error a process gets when another made the same table or stamped the same schema version between its
    own check and its write: optuna checks, then writes, with no lock between (two ranks starting together)."""
    import sqlalchemy.exc
    return isinstance(error, sqlalchemy.exc.IntegrityError) or (
        isinstance(error, sqlalchemy.exc.OperationalError) and "already exists" in str(error))


def make_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # SQLite's writers wait for each other's lock 5 s by default: processes sharing a study on a loaded
            # machine may wait longer, and a wait that runs out fails the whole run
            patient = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_SECONDS}} if url.startswith("sqlite:") else None
            for attempt in range(SCHEMA_TRIES):
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=patient, heartbeat_interval=HEARTBEAT_SECONDS,
                                                      grace_period=2 * HEARTBEAT_SECONDS)
                except Exception as error:  # the other process's schema is there on the next try
                    if not _schema_race(error) or attempt == SCHEMA_TRIES - 1:
                        raise
                    time.sleep(0.25)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


def make_sampler(settings: SearchSettings, *, rank: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler the spec names (samplers.py), seeded: each parallel process with its own seed, so they do not
    propose the same points."""
    return SAMPLERS.find(settings.sampler)(settings.seed + 1000 * rank, settings)


def open_study(settings: SearchSettings, storage_url: str, *, rank: int = 0, create: bool = True,
               wait_seconds: float = 600) -> optuna.Study:
    """The study in its storage: created (or loaded) by the main process; other processes wait for it."""
    storage = make_storage(storage_url)
    sampler = make_sampler(settings, rank=rank)
    if create:
        return optuna.create_study(storage=storage, study_name=settings.study, direction="maximize", sampler=sampler,
                                   load_if_exists=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return optuna.load_study(storage=storage, study_name=settings.study, sampler=sampler)
        except KeyError:  # created in a moment by the main process
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


SPEC_ATTR = "mmmerge_spec"  # the study's user attribute holding spec.fingerprint of the spec that made it


def check_spec(study: optuna.Study, fingerprint: str, where: str, *, record: bool) -> None:
    """Refuse to go on with a study another spec made (its trials and best candidate belong to that spec);
    `record`: the process that owns the study stores the fingerprint in a study that has none yet."""
    known = study.user_attrs.get(SPEC_ATTR)
    if known is None:
        if record:
            study.set_user_attr(SPEC_ATTR, fingerprint)
    elif known != fingerprint:
        raise RecipeError(f"{where}: holds the study {study.study_name!r} of another spec (its searched values, "
                          "tasks or settings differ); pass --force (force=True) to start again there, or choose "
                          "another output folder")


def wait_for_file(path: Path, *, also: Path, seconds: float = 600) -> None:
    """Until the main process has made the study's file (a helper process starts at the same time)."""
    deadline = time.monotonic() + seconds
    while not (path.is_file() and also.is_file()):
        if time.monotonic() > deadline:
            raise RecipeError(f"{path}: no study appeared within {seconds:.0f} s; start the main search first")
        time.sleep(0.5)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def fail_abandoned(study: optuna.Study) -> int:
    """Trials left running by a process that was killed (the study is resumed by its only process): failed, so
    their budget is taken again. Returns how many."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        end_trial(study, t, TrialState.FAIL)
    return len(running)


def end_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState) -> None:
    """The one call into optuna's private API: optuna offers no public call to end another process's trial, and
    its own `fail_stale_trials` makes this one (tests/test_search_parts.py fails when optuna changes it)."""
    study._storage.set_trial_state_values(trial._trial_id, state)


def wait_for_others(study: optuna.Study, *, poll: float = 1.0) -> None:
    """Until no trial of the study is running (other processes finish theirs; dead ones are failed by their
    missing heartbeat)."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll)


def run_trials(study: optuna.Study, objective, settings: SearchSettings, *, trials: int | None = None,
               timeout: float | None = None) -> None:
    """Take trials until the study has `trials` finished ones (all processes together) or `timeout` passed. A
    process finishes the trial it started, so N processes may finish up to N - 1 trials beyond the budget."""
    trials = trials if trials is not None else settings.trials
    timeout = timeout if timeout is not None else settings.timeout
    callbacks = []
    if trials is not None:
        if finished(study) >= trials:
            return
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE,)))

    def trial(t):
        with signals_delivered():
            return objective(t)

    with deferred_signals():  # Ctrl-C and SIGTERM stop a trial, never optuna's bookkeeping between trials
        study.optimize(trial, timeout=timeout, callbacks=callbacks, catch=(), gc_after_trial=False)
