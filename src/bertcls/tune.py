"""Hyperparameter search: a Config with a `tune` section in, an optuna study of ordinary run folders
and a report out. The search's folder is the config's output_dir, a bertcls folder like a run's:

    OUTPUT_DIR/study.db          the embedded optuna storage (SQLite; its journal survives Ctrl-C and
                                 kill -9), unless --storage names an RDB URL that many machines share
    OUTPUT_DIR/tune.json         the study (and storage) this folder belongs to
    OUTPUT_DIR/tune.lock         held (shared) by every `bertcls tune` working on this folder
    OUTPUT_DIR/trial-N/          trial N's run folder (`bertcls.runs`); its config.yaml holds the sampled values
    OUTPUT_DIR/best.yaml         the best trial's full config, writing to OUTPUT_DIR/best: `bertcls train` it
    OUTPUT_DIR/trials.csv        every trial: number, state, metric, seconds, parameters, run, note
    OUTPUT_DIR/figures/          history.png, importances.png, slice.png (optuna's matplotlib plots)
    OUTPUT_DIR/seed-S/, seeds.json   with tune.seeds: the best config re-trained with seed S; mean ± std

A study counts its completed and pruned trials; running the command again runs only the rest, over the
same space (a range's ends may move; choices, a range's kind and its log scale may not). A trial
whose process died (Ctrl-C, kill -9) is marked failed, counts for nothing, and its values are tried
again in a new trial (at most twice). A pruned trial stops after the evaluation the pruner judged and finishes as a
smaller run folder (metrics.json from its best checkpoint so far). A trial whose loss became NaN
or that ran out of memory is recorded as pruned too, with the reason: its values cannot train.
"""

from __future__ import annotations

import csv
import fcntl
import io
import itertools
import json
import math
import os
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bertcls import atomic, distributed, faults, runs
from bertcls import data as data_mod
from bertcls.config import Config, Dimension, TuneConfig, set_dotted, validate_config
from bertcls.errors import (
    BertclsError,
    ConfigError,
    Interrupted,
    ModelError,
    RunError,
    Terminated,
    TrainingError,
    UsageError,
    clipped,
    first_line,
    shown,
)
from bertcls.model import check_model_source
from bertcls.train import Callback, check_inputs, train

try:
    import optuna
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
except ModuleNotFoundError as exc:  # an optional extra: say how to get it instead of a traceback
    raise BertclsError(f'bertcls tune needs {exc.name}, which is not installed; install the extra with: pip install -e ".[tune]"') from None

STUDY_FILE = "study.db"
TUNE_FILE = runs.SEARCH_FILE
LOCK_FILE = "tune.lock"
BEST_FILE = "best.yaml"
BEST_DIR = "best"  # where best.yaml trains
TRIALS_FILE = "trials.csv"
FIGURES_DIR = "figures"
FIGURES = ("history.png", "importances.png", "slice.png")
SEEDS_FILE = "seeds.json"
TRIAL_PREFIX = runs.TRIAL_PREFIX
SEED_PREFIX = "seed-"
EMBEDDED = "embedded"  # tune.json's name for the default storage, which moves with the folder
# A worker records a heartbeat this often while its trial runs; a running trial silent for GRACE_S is
# taken as dead (its worker was killed), marked failed and queued again (at most RETRIES times).
HEARTBEAT_S, GRACE_S, RETRIES = 10, 30, 2
# Seconds a worker waits for another to let go of an SQLite file before giving up.
SQLITE_TIMEOUT_S = 60
# The pip package of a database driver SQLAlchemy imports, where the names differ (postgresql:// is psycopg from SQLAlchemy 2.1 on)
DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Options:
    """What the command line adds to the config's tune section."""

    trials: int | None = None  # instead of tune.trials
    timeout: float | None = None  # seconds after which no new trial starts
    storage: str | None = None  # an RDB URL; default: the embedded SQLite file
    study: str | None = None  # default: the output folder's name
    keep: str = "best"  # best: delete the losing trials' model/ at the end; all: keep them


@dataclass
class Search:
    """One worker's search: the base config, its folder, the study, and how many trials it must reach."""

    config: Config
    config_file: Path | None
    folder: Path
    metric: str
    target: int
    study: optuna.Study
    storage_shown: str
    say: Callable[[str], None]
    warn_data: bool = True  # the next trial prints the data checks' warnings (once, unless the space changes the data)


def search(config: Config, options: Options, config_file: str | Path | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Run trials until the study holds its target of completed and pruned ones (or `options.timeout`
    passes); then write the report, remove the losing trials' models (`options.keep`), and, as the
    last worker out of a complete study, train the seeds."""
    say = say or _stderr
    _check_search(config)
    folder = Path(config.output_dir)
    _check_folder(folder)
    # The data, labels and model, before any trial, as train checks them for a trial (the search's folder is no run's)
    trial = next(folder / f"{TRIAL_PREFIX}{n}" for n in itertools.count() if not (folder / f"{TRIAL_PREFIX}{n}").exists())
    check_inputs(config.model_copy(update={"output_dir": str(trial)}), config_file, resume=False, force=False, overwrite=False)
    _check_searched_models(config)
    _check_searched_data(config)
    with _quiet_optuna():
        server = _server(options)  # its URL and driver, before the folder is claimed: a refused one leaves nothing behind
    folder.mkdir(parents=True, exist_ok=True)
    runs.record_files(folder, TUNE_FILE, STUDY_FILE, LOCK_FILE, BEST_FILE, TRIALS_FILE, SEEDS_FILE, *(f"{FIGURES_DIR}/{name}" for name in FIGURES))
    with _quiet_optuna(), _worker(folder) as worker:
        job = _open(config, options, folder, server, config_file, say)
        if worker.alone and options.storage is None:
            _fail_dead_trials(job.study)
        worker.share()
        _say_start(job)
        try:
            _run_trials(job, options.timeout)
        except BaseException:  # a failed or stopped trial ends the command: the report says so first, as far as it can
            with suppress(Exception):
                write_report(job)
            raise
        best = write_report(job)  # under the shared lock, so no worker's report replaces a later one
        ended = _ended(job.study)
        # The last worker out tidies up: the other workers' trials have all ended by then, so its best is final, and no
        # two workers delete losing models at once (one found the other's files gone, or a trial that had just become
        # the best lost its model to a worker that had not yet seen it end).
        last = worker.last()
        if last and _ended(job.study) != ended:
            best = write_report(job)
        if best is not None and last and options.keep == "best":
            _remove_losing_models(job, best.number)
        if best is not None and config.tune.seeds:
            complete = _count(job.study)[0] >= job.target
            if complete and last:
                run_seeds(job, best, remove_models=options.keep == "best")
            elif not complete:
                say(f"note: the {config.tune.seeds} seeds run once the study holds its {job.target} trials")
    return folder


def report(config: Config, options: Options, say: Callable[[str], None] | None = None) -> Path:
    """Write best.yaml, trials.csv and the figures from the study as it stands; train nothing."""
    say = say or _stderr
    _check_search(config)
    folder = Path(config.output_dir)
    with _quiet_optuna():
        job = _open(config, options, folder, _server(options), None, say, create=False)
        write_report(job, workers_gone=options.storage is None and not _worked_on(folder))
    return folder


def _worked_on(folder: Path) -> bool:
    """Whether a `bertcls tune` worker is on `folder` now (it holds tune.lock)."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no worker ever ran here
        return False
    try:
        return not _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)  # lets go of the lock, if taken


def _check_search(config: Config) -> None:
    if not config.tune.space:
        raise ConfigError("tune.space is empty; name the keys to search in the config, e.g. "
                         "tune: {space: {training.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}}}")
    if distributed.launched():
        raise UsageError("bertcls tune runs its trials one at a time in one process; instead of a launcher, start one "
                         "`bertcls tune` per GPU (each with its own CUDA_VISIBLE_DEVICES): they share the study")


def _check_folder(folder: Path) -> None:
    """The search's folder: new, empty, or a search's; never a training run or someone else's folder."""
    atomic.check_folder_path(folder, "output_dir")
    for slot in (folder, *folder.parents):  # another search trains in its trial-N, seed-S and best folders, later if not yet
        if (slot.parent / TUNE_FILE).is_file() and (slot.name.startswith((TRIAL_PREFIX, SEED_PREFIX)) or slot.name == BEST_DIR):
            raise RunError(f"output_dir {folder} is inside the search {slot.parent}, in {slot.name}/ where it trains; "
                           "choose an output_dir outside that search")
    record = runs.read_record(folder) if folder.is_dir() else None
    if record is not None and record["files"] and TUNE_FILE not in record["files"]:
        raise RunError(f"output_dir {folder} holds a training run, not a search; choose another output_dir for bertcls tune")
    runs.check_run_dir(folder, overwrite=False)


def _check_searched_models(config: Config) -> None:
    """Each model.name choice exists and takes the longest data.max_length searched, as train checks its model: a trial
    that fails on it would leave its values in the study, which then refuses the space without them."""
    space = config.tune.space
    if "model.name" not in space and "data.max_length" not in space:
        return
    names = [name for _, name in space["model.name"].ends()] if "model.name" in space else [config.model.name]
    longest = max(n for _, n in space["data.max_length"].ends()) if "data.max_length" in space else config.data.max_length
    for name in names:
        try:
            check_model_source(config.model.model_copy(update={"name": name}), longest)
        except ModelError as exc:
            raise ModelError(f"tune.space: {exc}") from None


def _check_searched_data(config: Config) -> None:
    """Each data.* choice (or end of a range) reads, as train reads the data: a trial that fails on a missing column or
    file would leave its values in the study, which then refuses the space without them."""
    for key, dim in config.tune.space.items():
        if not key.startswith("data.") or key == "data.max_length":  # max_length: checked with the models
            continue
        for end, value in dim.ends():
            raw = config.to_dict()
            set_dotted(raw, key, value)
            try:
                data_mod.load_splits(validate_config(raw).data, config.seed)
            except BertclsError as exc:
                raise ConfigError(f"tune.space.{key}: {end} {shown(value)}: {exc}") from None


# ---------------------------------------------------------------------------- the study

def _open(config: Config, options: Options, folder: Path, server, config_file, say, create: bool = True) -> Search:
    """The study this folder belongs to (created on first use when `create`), checked against the folder's tune.json;
    in `server` (see _server), else in the folder's embedded SQLite file."""
    metric = config.tune.metric or config.training.metric_for_best
    name = options.study or folder.name
    shown_url = EMBEDDED if options.storage is None else redacted(options.storage)
    _check_tune_file(folder, name, shown_url, create)
    storage = server or _storage(f"sqlite:///{folder / STUDY_FILE}", shown_url)
    study = _study(storage, name, shown_url, config, metric, create)
    if create and not study.get_trials(deepcopy=False) and any(folder.glob(f"{TRIAL_PREFIX}*")):
        raise RunError(f"output_dir {folder} holds trial folders, but study '{name}' in {shown_url} has no trials (was its "
                       f"{STUDY_FILE} deleted?); new trials would clash with them: choose another output_dir")
    if create:
        _check_space(study, config.tune)
        atomic.write_json(folder / TUNE_FILE, {"study": name, "storage": shown_url, "metric": metric})
    tune = config.tune
    grid = math.prod(len(dim.grid()) for dim in tune.space.values()) if tune.sampler == "grid" else math.inf
    target = int(min(options.trials or tune.trials, grid))  # a grid runs each point once
    return Search(config, Path(config_file) if config_file else None, folder, metric, target, study, shown_url, say)


def _study(storage, name: str, shown_url: str, config: Config, metric: str, create: bool) -> optuna.Study:
    """The study `name` (created if missing, when `create`), refused if it optimises another metric."""
    try:
        if create:
            study = optuna.create_study(storage=storage, study_name=name, direction="minimize" if metric == "loss" else "maximize",
                                        load_if_exists=True, sampler=_sampler(config.tune, config.seed), pruner=_pruner(config.tune))
        else:
            study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise RunError(f"no study '{name}' in {shown_url}; run `bertcls tune` with this config first") from None
    found = study.user_attrs.get("metric")
    if found is None and create:
        study.set_user_attr("metric", metric)
    elif found not in (None, metric):
        raise ConfigError(f"study '{name}' optimises {found}, not {metric}; set tune.metric: {found}, or start another study "
                          "(another output_dir, or --study NAME)")
    return study


def _check_space(study: optuna.Study, tune: TuneConfig) -> None:
    """Refuse a space that the study's trials did not search, before a trial starts (optuna would fail it midway):
    its choices, and a range's kind (integer or float) and log scale, must stay; a range's ends may move."""
    grid = tune.sampler == "grid"
    new = {key: _distribution(dim, grid) for key, dim in tune.space.items()}
    for trial in study.get_trials(deepcopy=False):
        for key, old in trial.distributions.items():
            if key not in new:
                continue
            try:  # optuna's own rule, the one it would fail the trial with
                optuna.distributions.check_distribution_compatibility(old, new[key])
            except ValueError:
                ends = "" if isinstance(old, CategoricalDistribution) else " (its ends may move)"
                raise ConfigError(f"tune.space.{key}: the study searched {_shown_distribution(old)}; keep that space{ends}, "
                                  "or start a new study (--study NAME or another output_dir)") from None


def _shown_distribution(dist: BaseDistribution) -> str:
    """A distribution as tune.space writes it: [choices] or {low: A, high: B, log: true, step: S}."""
    if isinstance(dist, CategoricalDistribution):
        spec: Any = list(dist.choices)
    else:
        spec = {"low": dist.low, "high": dist.high}
        if dist.log:
            spec["log"] = True
        if dist.step != (1 if isinstance(dist, IntDistribution) else None):
            spec["step"] = dist.step
    return clipped(yaml.safe_dump(spec, default_flow_style=True, sort_keys=False, width=math.inf).strip())


def _check_tune_file(folder: Path, name: str, storage: str, create: bool) -> None:
    """One study per folder: trial numbers start at 0 in each study, and trial-N folders must not clash."""
    path = folder / TUNE_FILE
    if not path.is_file():
        if not create:
            raise RunError(f"{folder} holds no search ({TUNE_FILE} is missing); run `bertcls tune` with this config first")
        return
    found = json.loads(path.read_text(encoding="utf-8"))
    if (found.get("study"), found.get("storage")) != (name, storage):
        raise RunError(f"output_dir {folder} belongs to study '{found.get('study')}' in {found.get('storage')}, not '{name}' in {storage}; "
                       f"its trial folders would clash: choose another output_dir, or pass --study {found.get('study')}"
                       + ("" if found.get("storage") == EMBEDDED else " --storage URL"))


def _server(options: Options):
    """The --storage database, opened (its URL and driver checked); None for the folder's embedded SQLite file."""
    return None if options.storage is None else _storage(options.storage, redacted(options.storage))


def _storage(url: str, shown_url: str):
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES))
    except ImportError as exc:  # optuna re-raises the driver's ModuleNotFoundError as a bare ImportError
        driver = exc.name or getattr(exc.__cause__, "name", None) or "?"
        raise UsageError(f"--storage {shown_url}: its database driver {driver} is not installed; pip install "
                         f"{DRIVER_PACKAGES.get(driver, driver)}, or name an installed driver in the URL "
                         "(postgresql+psycopg2://, mysql+pymysql://)") from None
    except (ValueError, SQLAlchemyError) as exc:
        raise UsageError(f"--storage {shown_url}: cannot open it ({first_line(exc)}); give an RDB URL such as "
                         "postgresql://user:password@host/db, or leave it out for the embedded SQLite file") from None


def redacted(url: str) -> str:
    """An RDB URL to show: its password as ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ValueError, SQLAlchemyError):  # not a URL: _storage refuses it, quoting it as given
        return shown(url)


def _sampler(tune: TuneConfig, seed: int):
    if tune.sampler == "grid":  # the same seed in every worker: GridSampler's order must agree across them
        return optuna.samplers.GridSampler({key: dim.grid() for key, dim in tune.space.items()}, seed=seed)
    if tune.sampler == "random":
        return TrialSeeded(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return TrialSeeded(lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=tune.startup_trials), seed)


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler seeded anew for each trial from the config's seed and the trial's number: one worker's
    search is reproducible, and workers sharing a study (same config, same seed) still draw different
    values, where one seed for all would have them repeat each other's random start."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self.make, self.seed, self.inner = make, seed, make(seed)

    def before_trial(self, study, trial) -> None:
        self.inner = self.make((self.seed + 7919 * (trial.number + 1)) % 2**32)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def _pruner(tune: TuneConfig):
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def _count(study: optuna.Study) -> tuple[int, int]:
    """Trials that count (completed and pruned), and trials running now."""
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    return sum(state in COUNTED for state in states), states.count(TrialState.RUNNING)


def _fail_dead_trials(study: optuna.Study) -> None:
    """With no other worker on the folder, a running trial is one whose process died (kill -9): fail it and queue its values again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        _retry(study, trial.number)


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _retry(study: optuna.Study, number: int) -> bool:
    """Queue a failed trial's values again as a new trial, unless they already ran RETRIES + 1 times; whether queued."""
    trial = _trial(study, number)
    earlier = RetryHeartbeatStaleTrialCallback.retry_history(trial)  # the trials before this one that ran its values
    if trial.state != TrialState.FAIL or len(earlier) >= RETRIES:
        return False
    RetryHeartbeatStaleTrialCallback()(study, trial)
    return True


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's log lines and experimental-feature warnings off: the search says what happens, a line per trial."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


# ---------------------------------------------------------------------------- workers on one folder

class _Worker:
    """This process's hold on OUTPUT_DIR/tune.lock. Exclusive at first if it can be had (`alone`: no
    other worker is on the folder, so a trial still marked running there died), else shared once the
    worker holding it has set the study up; shared while trials run; exclusive again at the end if this
    worker is the last one out."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.alone = _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not self.alone and not _flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, tries=40):  # setting a study up takes a moment
            _stderr("waiting for the other bertcls tune on this folder: it holds the folder alone while it sets the study up, "
                    "and at the end while it removes the losing trials' models and runs the seeds")
            fcntl.flock(fd, fcntl.LOCK_SH)

    def share(self) -> None:
        if self.alone:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def last(self) -> bool:
        """Whether no other worker is on the folder now (the lock is let go first, so that of two
        workers ending together, one finds itself last)."""
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return _flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextmanager
def _worker(folder: Path) -> Iterator[_Worker]:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        yield _Worker(fd)
    finally:
        os.close(fd)  # lets go of the lock


def _flock(fd: int, operation: int, tries: int = 1) -> bool:
    """Take the lock without blocking, trying `tries` times 50 ms apart; whether it was taken."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, operation)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- trials

def _run_trials(job: Search, timeout: float | None) -> None:
    """One trial at a time until the study holds its target (other workers' running trials included), or `timeout` passes."""
    started = time.monotonic()
    current: dict[str, int] = {}

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        claim.release()  # the trial is in the study now, counted by the other workers
        try:
            return run_trial(job, trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM before training caught signals (or a second one): stopped all the same
            name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            stopped = Interrupted(name, 0, None, 128 + signal.Signals[name], message=f"stopped by {name} during trial {trial.number}")
            trial.set_user_attr("note", str(stopped))
            raise stopped from None
        except Interrupted as exc:  # a trial is never resumed (its values run again in a new one): no checkpoint to name
            trial.set_user_attr("note", exc.stopped)
            raise
        except Exception as exc:  # the trial fails, and the command with it: trials.csv says why
            trial.set_user_attr("note", first_line(exc))
            raise

    while True:
        claim = _Claim(job.folder)  # held from counting the trials until this worker's new one is in the study
        done, running = _count(job.study)
        if done + running >= job.target:
            claim.release()
            break
        if timeout is not None and time.monotonic() - started >= timeout:
            claim.release()
            job.say(f"--timeout {timeout:g} s passed: no new trial; {done} of {job.target} done, and the same command continues")
            break
        current.clear()
        try:
            job.study.optimize(objective, n_trials=1, gc_after_trial=True, callbacks=[lambda study, trial: job.say(_trial_line(job, trial))])
        except (Interrupted, KeyboardInterrupt) as exc:
            retried = _retry(job.study, current["number"]) if "number" in current else None
            if not isinstance(exc, Interrupted):
                raise
            # A trial is never resumed (its values run again in a new one): say how it stopped, not which checkpoint it left
            stopped = Interrupted("", 0, None, exc.exit_code, message=exc.stopped)
            if retried is not None:
                number = current["number"]
                stopped.hint = (f"trial {number} is marked failed, and its values run again in a new trial; " if retried else
                                f"trial {number} is marked failed; its values ran {RETRIES + 1} times without finishing and are "
                                "not tried again; ")
            raise stopped from None
        except Exception:
            if "number" in current:  # the failed trial's line, with why
                job.say(_trial_line(job, _trial(job.study, current["number"])))
            raise
        finally:
            claim.release()


class _Claim:
    """An exclusive lock on the search's folder itself (no file of its own), between counting the study's trials and
    adding one: workers sharing the folder take turns there, so that together they run the target and no more (two
    that counted at once each added a trial, one past it)."""

    def __init__(self, folder: Path) -> None:
        self.fd: int | None = os.open(folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # lets go of the lock
            self.fd = None


TRIAL_STOPS = "after this step; the same command continues the search"  # a stopped trial is not resumed: its values run again


def run_trial(job: Search, trial: optuna.Trial) -> float:
    """Train one trial in OUTPUT_DIR/trial-N with its sampled values; its validation metric, or TrialPruned."""
    tune = job.config.tune
    grid = tune.sampler == "grid"
    params = {key: _suggest(trial, key, _distribution(dim, grid)) for key, dim in tune.space.items()}
    run = job.folder / _run_name(trial)
    # a trial that runs a failed one's values again comes with its attributes (Optuna copies them): not its note and value
    trial.set_user_attr("note", "")
    trial.set_user_attr("value", None)
    config = trial_config(job.config, params, run, job.metric)
    pruning = PruningCallback(trial, job.metric)
    try:
        with faults.stopping_says(TRIAL_STOPS):
            train(config, quiet=True, callbacks=(pruning,), config_file=job.config_file, warn_data=job.warn_data)
        job.warn_data = any(key.startswith("data.") for key in tune.space)  # the same data: its warnings once
    except TrainingError as exc:  # the loss became NaN, or memory ran out: these values cannot train
        trial.set_user_attr("note", first_line(exc))
        raise optuna.TrialPruned(first_line(exc)) from None
    value = json.loads((run / runs.METRICS_FILE).read_text(encoding="utf-8"))["validation"][job.metric]
    trial.set_user_attr("value", value)
    if pruning.pruned:
        trial.set_user_attr("note", f"pruned after evaluation {pruning.evaluations}")
        raise optuna.TrialPruned(f"pruned after evaluation {pruning.evaluations}")
    return value


def _distribution(dim: Dimension, grid: bool) -> BaseDistribution:
    """What trials draw for one key of tune.space (the study records it with each trial's value)."""
    if grid or dim.choices is not None:  # GridSampler hands out the values of dim.grid()
        return CategoricalDistribution(dim.grid())
    if dim.integer:
        return IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step or 1)
    return FloatDistribution(float(dim.low), float(dim.high), log=dim.log, step=dim.step)


def _suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def trial_config(base: Config, params: dict[str, Any], run: Path, metric: str, kept: bool = False) -> Config:
    """The base config with `params` set, writing to `run`, choosing its best checkpoint by the searched metric.

    Trials skip the TorchScript graph (only a model you keep needs it) and the report figures (their predictions.csv
    and metrics stay; `bertcls evaluate` draws them for any trial), unless `kept` (best.yaml: your settings)."""
    raw = base.to_dict()
    for key, value in params.items():
        set_dotted(raw, key, value)
    raw["output_dir"] = str(run)
    raw["training"]["metric_for_best"] = metric
    raw["training"]["save_torchscript"] = kept and raw["training"]["save_torchscript"]
    raw["training"]["report_figures"] = kept and raw["training"]["report_figures"]
    return validate_config(raw)


class PruningCallback(Callback):
    """Reports each validation result to the trial (its step: the count of evaluations, comparable
    across batch sizes) and stops training when the pruner says so; the run then finishes as usual."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric, self.evaluations, self.pruned = trial, metric, 0, False

    def on_evaluate(self, state, metrics: dict[str, Any]) -> bool:
        self.evaluations += 1
        value = metrics[self.metric]
        if not math.isfinite(value):
            return False
        self.trial.report(value, self.evaluations)
        self.pruned = self.trial.should_prune()
        return self.pruned


def _trial_line(job: Search, trial: optuna.trial.FrozenTrial) -> str:
    value = trial.value if trial.value is not None else trial.user_attrs.get("value")
    parts = [f"trial {trial.number}", *(f"{key} {_shown_value(v)}" for key, v in trial.params.items()),
             f"{job.metric} {value:.4f}" if value is not None else f"{job.metric} -", trial.state.name.lower()]
    if trial.duration is not None:
        parts.append(f"{trial.duration.total_seconds():.1f} s")
    note = trial.user_attrs.get("note")
    return " | ".join(parts) + (f" ({note})" if note and trial.state != TrialState.COMPLETE else "")


def _shown_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _say_start(job: Search) -> None:
    done, running = _count(job.study)
    more = max(job.target - done - running, 0)
    elsewhere = f", {running} running in other workers" if running else ""
    job.say(f"study '{job.study.study_name}' ({job.storage_shown}): {done} of {job.target} trials done{elsewhere}; "
            f"{'running ' + str(more) + ' more' if more else 'nothing to run'} | {job.metric} "
            f"({job.study.direction.name.lower()}d) | {job.folder}")


# ---------------------------------------------------------------------------- the report

def _ended(study: optuna.Study) -> int:
    """How many of the study's trials have ended (completed, pruned or failed)."""
    return sum(trial.state.is_finished() for trial in study.get_trials(deepcopy=False))


def write_report(job: Search, workers_gone: bool = False) -> optuna.trial.FrozenTrial | None:
    """trials.csv, and with a completed trial best.yaml and the figures; the best trial (None if none completed).
    `workers_gone`: no worker is on the folder, so a trial still marked running was left by one that was killed."""
    study, folder = job.study, job.folder
    trials = study.get_trials(deepcopy=False)
    atomic.write_atomic(folder / TRIALS_FILE, _trials_csv(job, trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = ", ".join(f"{sum(t.state == state for t in trials)} {word}" for state, word in
                       ((TrialState.COMPLETE, "completed"), (TrialState.PRUNED, "pruned"), (TrialState.FAIL, "failed")))
    # a stopped trial's values, to run again; and a trial another worker is running, or a killed one left running
    running = "left running by a stopped worker (the next bertcls tune fails it and runs its values again)" if workers_gone else "running"
    counts += "".join(f", {n} {word}" for state, word in ((TrialState.WAITING, "queued"), (TrialState.RUNNING, running))
                      if (n := sum(t.state == state for t in trials)))
    if not complete:
        job.say(f"{len(trials)} trial(s) ({counts}), none completed yet; wrote {folder / TRIALS_FILE}")
        return None
    best = study.best_trial
    config = best_config(job, best)
    atomic.write_atomic(folder / BEST_FILE, f"# The best of {len(complete)} completed trials of study '{study.study_name}': trial "
                        f"{best.number}, {job.metric} {best.value:.4f}.\n# Train it with: bertcls train {folder / BEST_FILE}\n"
                        + yaml.safe_dump(config.to_dict(), sort_keys=False))
    drawn = _write_figures(job, len(complete))
    job.say(f"{len(trials)} trial(s) ({counts}) | best: trial {best.number}, {job.metric} {best.value:.4f}")
    for key, value in best.params.items():
        job.say(f"  {key} = {value}")
    job.say(f"wrote {folder}: {BEST_FILE}, {TRIALS_FILE}" + "".join(f", {FIGURES_DIR}/{name}" for name in drawn))
    job.say(f"train the best configuration with: bertcls train {folder / BEST_FILE}")
    return best


def best_config(job: Search, best: optuna.trial.FrozenTrial) -> Config:
    """The best trial's config, writing to OUTPUT_DIR/best, with the TorchScript graph as the config says."""
    return trial_config(job.config, best.params, job.folder / BEST_DIR, job.metric, kept=True)


def _trials_csv(job: Search, trials: list[optuna.trial.FrozenTrial]) -> str:
    keys = list(job.config.tune.space)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", job.metric, "seconds", *keys, "run", "note"])
    for t in trials:
        value = t.value if t.value is not None else t.user_attrs.get("value")
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration is not None else ""
        writer.writerow([t.number, t.state.name.lower(), "" if value is None else value, seconds,
                         *(t.params.get(key, "") for key in keys), "" if t.state == TrialState.WAITING else _run_name(t), _note(t)])
    return buffer.getvalue()


def _run_name(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    """The folder a trial trains in, told by its own number (a queued retry comes with the failed trial's attributes,
    which name that trial's folder in studies of older bertcls versions)."""
    return f"{TRIAL_PREFIX}{trial.number}"


def _note(trial: optuna.trial.FrozenTrial) -> str:
    """Why a trial was pruned or failed; for a queued retry (which comes with the failed trial's attributes), whose values it runs."""
    if trial.state == TrialState.WAITING:
        earlier = RetryHeartbeatStaleTrialCallback.retry_history(trial)
        return f"queued: runs the values of trial {earlier[-1]} again" if earlier else "queued"
    return trial.user_attrs.get("note", "")


def _write_figures(job: Search, complete: int) -> list[str]:
    """The optimisation history, the parameters' importances (from 2 completed trials on) and the metric
    against each parameter, as PNGs; the names drawn."""
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as plots

    plt.switch_backend("Agg")  # no display needed
    folder = job.folder / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    drawn = []
    for name, plot in zip(FIGURES, (plots.plot_optimization_history, plots.plot_param_importances, plots.plot_slice), strict=True):
        if plot is plots.plot_param_importances and (complete < 2 or len(job.config.tune.space) < 2):
            job.say(f"note: no {name}: it compares two or more searched keys over two or more completed trials")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # e.g. "importances will be equal", a flat axis: the figure still says it
                axes = plot(job.study, target_name=job.metric)
        except (ValueError, RuntimeError) as exc:  # e.g. every completed trial drew the same values
            job.say(f"note: no {name} ({first_line(exc)})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        plt.close(figure)
        atomic.write_atomic(folder / name, buffer.getvalue())
        drawn.append(name)
    return drawn


# ---------------------------------------------------------------------------- the end

def _remove_losing_models(job: Search, best: int) -> None:
    """--keep best: every finished trial but the best loses model/ and its checkpoints; metrics, config and log stay."""
    removed = 0
    for trial in job.study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.FAIL)):
        run = job.folder / _run_name(trial)
        if trial.number == best or not run.is_dir() or runs.training_pid(run) is not None:
            continue
        found = (run / runs.MODEL_DIR).exists() or runs.checkpoints(run)
        try:
            for name in [runs.MODEL_DIR, *(path.name for path in runs.checkpoints(run))]:
                runs.remove_ours(run, name)
        except RunError as exc:  # e.g. a damaged run record: bertcls cannot tell its files there, so it deletes none
            job.say(f"note: {run} keeps its model/: {first_line(exc)}")
            continue
        removed += bool(found)
    if removed:
        job.say(f"removed the model/ of {removed} losing trial(s) in {job.folder} (--keep all keeps them)")


def run_seeds(job: Search, best: optuna.trial.FrozenTrial, remove_models: bool) -> dict[str, Any]:
    """Re-train the best configuration with tune.seeds new seeds and report the metric's mean ± std on
    validation (and test) in seeds.json. With `remove_models` the seed runs keep their metrics and lose
    model/, like the losing trials."""
    base = best_config(job, best)
    results = [_seed_run(job, base, (base.seed + i) % 2**32, remove_models) for i in range(1, job.config.tune.seeds + 1)]
    summary: dict[str, Any] = {"metric": job.metric, "best_trial": best.number, "best_trial_value": best.value, "seeds": results}
    for split in ("validation", "test"):
        values = [result[split] for result in results if split in result]
        if len(values) == len(results):
            summary[split] = {"mean": statistics.fmean(values), "std": statistics.stdev(values)}
    atomic.write_json(job.folder / SEEDS_FILE, summary)
    spread = ", ".join(f"{split} {summary[split]['mean']:.4f} ± {summary[split]['std']:.4f}" for split in ("validation", "test") if split in summary)
    job.say(f"{job.metric} of the best configuration over {len(results)} new seeds: {spread} "
            f"(trial {best.number} found {best.value:.4f} with seed {base.seed}); wrote {job.folder / SEEDS_FILE}")
    return summary


def _seed_run(job: Search, base: Config, seed: int, remove_models: bool) -> dict[str, Any]:
    """OUTPUT_DIR/seed-S: the best config trained with `seed` (a finished run of the same config is kept); its metric."""
    run = job.folder / f"{SEED_PREFIX}{seed}"
    raw = base.to_dict() | {"seed": seed, "output_dir": str(run)}
    raw["training"]["save_torchscript"] = raw["training"]["report_figures"] = False  # its metric is what counts
    config = validate_config(raw)
    if not ((run / runs.METRICS_FILE).is_file() and runs.read_run_config(run) == config.to_dict()):
        job.say(f"seed {seed}: training the best configuration again")
        train(config, overwrite=True, quiet=True, config_file=job.config_file, warn_data=job.warn_data)
        job.warn_data = False
    if remove_models:
        runs.remove_ours(run, runs.MODEL_DIR)
    metrics = json.loads((run / runs.METRICS_FILE).read_text(encoding="utf-8"))
    return {"seed": seed, "run": run.name, **{split: metrics[split][job.metric] for split in ("validation", "test") if split in metrics}}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
