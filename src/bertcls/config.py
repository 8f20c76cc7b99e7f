"""The run configuration: a YAML file plus dotted `--set` overrides in, a validated `Config` out.

Every key, its type, default and meaning lives here, and nowhere else; so does the `tune` section,
which `bertcls tune` reads and training ignores (it is not part of a run's saved config). A mapping
given with `--set` merges into the section it names, key by key; any other value, a mapping too,
replaces what its key holds. Paths in a config file are relative to the file's folder; paths given
with `--set`, and the default output_dir, are relative to the current folder. All are stored absolute.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from bertcls import machine
from bertcls.errors import ConfigError, clipped, shown
from bertcls.runs import SECTIONS

DATA_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
METRICS = ("accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "loss")
# Experiment trackers, by Accelerate's names for them (bertcls.track): those every Accelerate since 1.0 knows.
TRACKERS = ("tensorboard", "mlflow", "wandb", "comet_ml", "aim", "clearml", "dvclive")
# YAML aliases (*name) may repeat an anchored value; past this many values added by repeating, a file is refused:
# nested aliases grow exponentially (a "billion laughs" file), and a real config repeats a few dozen at most.
MAX_ALIAS_EXPANSION = 10_000
# Problems listed in one config error; the rest are counted.
MAX_ERRORS_SHOWN = 10
# A tune.sampler grid larger than this is refused: optuna lists every point in memory.
MAX_GRID_POINTS = 100_000


def _float_from_yaml(value: Any) -> Any:
    # YAML 1.1 reads `5e-5` (no dot) as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_float_from_yaml)]


def _class_weights(value: Any, info: ValidationInfo) -> Any:
    """`none`, `balanced`, or {label: finite weight > 0} with label names as strings (YAML may give integers)."""
    if value in ("none", "balanced"):
        return value
    if not isinstance(value, dict) or not value:
        raise ValueError(f"training.class_weights: expected none, balanced or a mapping {{label: weight}} (got {shown(value)})")
    weights = {}
    for label, weight in value.items():
        weight = _float_from_yaml(weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
            # 0 too: the weighted loss of a batch holding only that label's rows would be 0 / 0
            raise ValueError(f"training.class_weights.{clipped(str(label))}: a weight must be a finite number above 0 (got "
                             f"{shown(weight)}); to train without a label, remove its rows")
        if label is None or isinstance(label, bool):  # `yes: 3` is read as True: 3, and True names no label
            reading, text = _yaml_reading(label)
            text = _typed_key(label, (info.context or {}).get("typed", {})) or text  # quote what was typed: `on`, not `yes`
            example = f'{{"{text}": {shown(weight)}}}'
            raise ValueError(f"training.class_weights: the key {shown(label)} is no label text; {reading}: quote a label that YAML "
                             f"would read otherwise, e.g. class_weights: {example} in the file, or --set 'training.class_weights={example}'")
        if str(label) in weights:
            first = next(key for key in value if str(key) == str(label))
            raise ValueError(f"training.class_weights: the keys {shown(first)} and {shown(label)} both name the label {str(label)!r}; "
                             "keep one")
        weights[str(label)] = float(weight)
    for written in _renumbered_keys((info.context or {}).get("typed", {})):
        number = yaml.safe_load(written)
        raise ValueError(f"training.class_weights: the key {written} is read by YAML as the number {number!r}, the label "
                         f"{str(number)!r}; to name the label {written}, quote it: \"{written}\"")
    return weights


def _renumbered_keys(typed: dict[tuple[str, ...], str]) -> list[str]:
    """training.class_weights keys typed unquoted that YAML reads as a number written otherwise (`01` is 1, `010` is 8)."""
    found = []
    for path in typed:
        if path[:2] == ("training", "class_weights") and path[3:] == (UNTEXTED_KEY,):
            number = yaml.safe_load(path[2])
            if isinstance(number, (int, float)) and not isinstance(number, bool) and str(number) != path[2]:
                found.append(path[2])
    return found


def _typed_key(label: bool | None, typed: dict[tuple[str, ...], str]) -> str | None:
    """The word typed for a training.class_weights key that YAML read as the boolean `label` (`on` for True), from the
    key paths of `typed`, which keep each key as typed; None when not found (only unquoted weights are recorded there)."""
    for path in typed:
        written = path[-1]
        if path[:2] == ("training", "class_weights") and len(path) == 3 and written.lower() in yaml.SafeLoader.bool_values \
                and yaml.safe_load(written) is label:
            return written
    return None


def _trackers(value: Any) -> Any:
    """One tracker's name, or a list of names, each once; null is none."""
    names = [] if value is None else [value] if isinstance(value, str) else value
    if isinstance(names, list):
        twice = sorted({name for name in names if names.count(name) > 1 and isinstance(name, str)})
        if twice:
            raise ValueError(f"training.report_to: {', '.join(twice)} is listed more than once")
    return names


def _absolute(path: str) -> str:
    # The default (like any relative path not from a config file) is relative to the current folder; the saved config holds it absolute.
    return os.path.normpath(Path(path).expanduser().absolute())


def _device(value: Any) -> Any:
    # The message (and the valid values) are the ones predict and evaluate give for --device.
    problem = machine.device_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(f"training.device: {problem}")
    return value


def _one_line(value: Any) -> Any:
    # A YAML block (`label_separator: |` and an indented line) ends in a line break, which no label in a row holds.
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        raise ValueError(f"data.label_separator: {value!r} holds a line break, which no row's labels are separated by; "
                         "quote the separator on one line, e.g. label_separator: \"|\"")
    return value


class Section(BaseModel):
    # strict: a string "3" is not an int; extra="forbid": a misspelt key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class DataConfig(Section):
    train: str = Field(min_length=1, description="Training data: a csv/tsv/json/jsonl/parquet file, or a hub dataset `name[:split]`.")
    validation: str | None = Field(None, description="Validation data; if absent, a stratified `validation_split` of train.")
    test: str | None = Field(None, description="Test data, evaluated once at the end with the best checkpoint.")
    text_column: str = Field("text", min_length=1, description="Column holding the text.")
    text_pair_column: str | None = Field(None, description="Optional column with a second text (sentence-pair tasks).")
    label_column: str = Field("label", min_length=1, description="Column holding the label: names or integers; the label set comes from train, sorted.")
    task: Literal["single_label", "multi_label"] = Field("single_label", description="single_label: one label per row (softmax, cross-entropy); multi_label: any number of labels per row (one sigmoid per label, binary cross-entropy).")
    label_separator: Annotated[str, AfterValidator(_one_line)] = Field(";", min_length=1, description="multi_label in csv/tsv: the labels of a row in one string, separated by this (`sport;politics`); in json/jsonl a row's labels are a list.")
    validation_split: Float = Field(0.1, gt=0.0, lt=1.0, description="Share of train held out when no validation file is given.")
    max_length: int = Field(128, ge=8, le=8192, description="Longest input in tokens (special tokens included); how a longer text is read is data.long_text.")
    long_text: Literal["truncate", "head_tail", "sliding_window"] = Field(
        "truncate", description="Texts longer than max_length: truncate keeps the first tokens; head_tail the first quarter and the "
        "last three quarters of the tokens that fit (a review's verdict is often at its end); sliding_window reads the whole "
        "text in windows of max_length tokens (at most 64 per text; the rest is not read, and counted): in training each "
        "window is an example with its text's label, in evaluation and prediction the windows' logits are pooled into "
        "one answer per text, so every metric counts texts. Single texts only: not with data.text_pair_column. "
        "multi_label works with all three (windows' logits pooled per label). Saved with the model: predict, evaluate, "
        "export and serve read texts the same way.")
    stride: int | None = Field(None, ge=0, description="sliding_window: tokens each window shares with the one before (its overlap), at "
                               "most half of max_length; null = a quarter of max_length.")
    window_pooling: Literal["mean", "max"] = Field("mean", description="sliding_window: how the windows' logits become one row per "
                                                   "text: their mean, or their maximum per label (a label any window is sure of wins).")
    max_train_samples: int | None = Field(None, ge=2, description="Use only the first N rows of train (quick experiments); null = all.")
    max_validation_samples: int | None = Field(None, ge=1, description="Use only the first N rows of the validation file; null = all.")


class ModelConfig(Section):
    name: str = Field("tiny", min_length=1, description="Hub id (downloaded on first use), local folder written by save_pretrained, or `tiny`: a 2-layer, hidden-64 random BERT with a WordPiece vocabulary built from the training texts, offline, in a second (for tests; it learns only toy tasks).")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub model. Only for models you trust.")


class TrainingConfig(Section):
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Train exactly this many optimizer steps, over as many epochs as that "
                                  "takes (the last one cut short); overrides epochs, and the learning-rate schedule spans them. null = epochs decide.")
    batch_size: int = Field(32, ge=1, le=65536, description="Examples per device (per process) per micro-batch; the effective batch is this x processes x gradient_accumulation_steps.")
    eval_batch_size: int = Field(128, ge=1, le=65536, description="Examples per batch when evaluating.")
    learning_rate: Float = Field(5e-5, gt=0.0, le=1.0, description="Peak learning rate of AdamW.")
    weight_decay: Float = Field(0.01, ge=0.0, le=1.0, description="Decoupled weight decay; never applied to biases and LayerNorm weights.")
    warmup_ratio: Float = Field(0.1, ge=0.0, lt=1.0, description="Share of optimizer steps spent warming the learning rate up from 0.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay of the learning rate after warmup: linear or cosine to 0, or constant.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    max_grad_norm: Float | None = Field(1.0, gt=0.0, description="Clip the gradient norm to this; null = no clipping.")
    device: Annotated[str, BeforeValidator(_device)] = Field(
        "auto", pattern=machine.DEVICE_PATTERN, description="auto (CUDA when present), cpu, cuda or cuda:N.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 where the hardware runs it natively, else fp32.")
    fsdp: bool = Field(False, description="Shard weights, gradients and optimizer state across GPUs (FSDP2) for models too big for one; needs >= 2 GPU processes.")
    eval_every_steps: int | None = Field(None, ge=1, description="Evaluate on validation every N optimizer steps, and after the last step: "
                                         "the best model is kept and early_stopping_patience counted on these evaluations. null = after each epoch.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement; null = off.")
    metric_for_best: Literal[METRICS] = Field("f1_macro", description="Validation metric that picks the best checkpoint.")  # type: ignore[valid-type]
    log_every_steps: int = Field(50, ge=1, description="Write a training log line every this many optimizer steps.")
    num_threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for torch; null = torch's default.")
    save_every_steps: int | None = Field(None, ge=1, description="Write a resumable checkpoint every N optimizer steps (after the "
                                         "evaluation when one falls on the same step); null = after each evaluation.")
    keep_checkpoints: int = Field(1, ge=1, le=1000, description="Resumable checkpoints to keep (the newest), besides the best model/.")
    keep_checkpoints_at_end: bool = Field(False, description="Keep the resumable checkpoints once the run has finished. They only serve to "
                                          "resume an unfinished run and hold the weights plus twice their size of optimizer state "
                                          "(about 270 MB for MiniLM, 1.3 GB for bert-base), so by default a finished run keeps "
                                          "model/ and its traced graph alone.")
    class_weights: Annotated[str | dict[str, float], BeforeValidator(_class_weights)] = Field(
        "none", description="Weighted cross-entropy: none, balanced (n / (classes x class count)), or {label: weight} (others weigh 1; "
        "quote a label that YAML reads as no text: {\"yes\": 3}).")
    threshold: Float = Field(0.5, gt=0.0, lt=1.0, description="multi_label: a label is predicted when its probability is at least this.")
    tune_threshold: bool = Field(False, description="multi_label: pick the threshold with the best micro-F1 on validation instead "
                                  "(so not with training.threshold set to another value than 0.5); saved with the model.")
    loss_curve: bool = Field(True, description="Draw RUN/loss.png (training and validation loss) from log.jsonl at the end.")
    report_figures: bool = Field(True, description="Draw the figures in RUN/reports/ (confusion matrix, ROC and PR curves, reliability) "
                                 "at the end: about 0.3 s each, most of a tiny run's finish. predictions.csv and metrics.json are "
                                 "written either way, and `bertcls evaluate` draws them for any run.")
    report_to: Annotated[list[Literal[TRACKERS]], BeforeValidator(_trackers)] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Experiment trackers to log to, through Accelerate: the config, each log line "
        "(loss, lr, examples/s), each evaluation and the test metrics. tensorboard writes RUN/tensorboard/; mlflow logs to "
        "$MLFLOW_TRACKING_URI, else MLflow's default (in the current folder), with the reports as artifacts; the others use "
        "their own settings. Each needs its package (pip install tensorboard, mlflow, ...). [] = none.")
    save_torchscript: bool = Field(True, description="At the end, also save the model as a traced TorchScript graph "
                                   "(RUN/model/bertcls-torchscript.pt, one more copy of the weights): `bertcls predict` "
                                   "on the CPU then starts without importing transformers, about 3x sooner.")


@dataclass(frozen=True)
class Dimension:
    """One key of tune.space: a list of `choices`, or a range from `low` to `high` (integers when both
    are), on a log scale or in steps of `step`."""

    choices: tuple[Any, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def ends(self) -> list[tuple[str, Any]]:
        """The values a config is checked with before a search: every choice, or both ends of the range."""
        if self.choices is not None:
            return [("choice", choice) for choice in self.choices]
        return [("low", self.low), ("high", self.high)]

    def grid(self) -> list[Any] | None:
        """Every value, when there are finitely many: the choices, or the range in steps (1 for integers); else None."""
        if self.choices is not None:
            return list(self.choices)
        if self.integer:
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            return None
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


RANGE_KEYS = ("low", "high", "log", "step")


def _space(value: Any) -> dict[str, Dimension]:
    """tune.space as written ({dotted.key: [choices] or {low, high, log?, step?}}, sections may nest, as
    `--set tune.space.training.epochs=[1,2]` makes them) to one Dimension per dotted key."""
    if not isinstance(value, dict):
        raise ValueError(f"tune.space: expected a mapping of config keys to choices or ranges (got {shown(value)})")
    flat: dict[str, Any] = {}
    for written, spec in _space_entries(value):
        name = ".".join(written)
        if isinstance(spec, dict) and isinstance(flat.get(name), dict):  # `--set tune.space.KEY.step=...` adds to KEY's range
            flat[name] = {**flat[name], **spec}
        else:
            flat[name] = spec
    return {key: _dimension(key, spec) for key, spec in flat.items()}


def _space_entries(node: dict[str, Any], written: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(the keys as written, the spec) for each key of tune.space, whose sections may nest."""
    for key, spec in node.items():
        if isinstance(spec, dict) and spec and not set(spec) & set(RANGE_KEYS):
            yield from _space_entries(spec, (*written, str(key)))
        else:
            yield (*written, str(key)), spec


def _refuse_respelled_space_keys(raw: dict[str, Any], where: Path) -> None:
    """A key of a file's tune.space given both dotted and in nested sections: one would override or merge into the
    other unseen. (A `--set tune.space.KEY.step=...` adding to the file's range is meant, and is not checked here.)"""
    space = raw["tune"].get("space") if isinstance(raw.get("tune"), dict) else None
    seen: dict[str, tuple[str, ...]] = {}
    for written, _ in _space_entries(space) if isinstance(space, dict) else ():
        name = ".".join(written)
        if name in seen:
            first, second = (": ".join(spelling) for spelling in (seen[name], written))  # as the YAML nests them
            raise ConfigError(f"{where}: tune.space.{clipped(name)} is given twice, as {clipped(first)!r} and as {clipped(second)!r}; keep one")
        seen[name] = written


def _dimension(key: str, spec: Any) -> Dimension:
    where = f"tune.space.{clipped(key)}"
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: no choices; list at least one value")
        bad = [c for c in spec if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise ValueError(f"{where}: a choice must be a number, string, boolean or null (got {shown(bad[0])})")
        return Dimension(choices=tuple(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a list of choices or a range {{low: A, high: B}} (got {shown(spec)})")
    unknown = [k for k in spec if k not in RANGE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), RANGE_KEYS, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(RANGE_KEYS)}"
        raise ValueError(f"{where}.{clipped(str(unknown[0]))}: unknown key ({hint})")
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: a range needs both low and high, e.g. {{low: 1.0e-5, high: 1.0e-3, log: true}}")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    step = _number(spec["step"], f"{where}.step") if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log: expected true or false (got {shown(log)})")
    if low > high:
        raise ValueError(f"{where}: low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0 (got {low})")
    if log and step is not None:
        raise ValueError(f"{where}: log and step do not go together; drop one")
    if step is not None and step <= 0:
        raise ValueError(f"{where}.step: must be above 0 (got {step})")
    return Dimension(low=low, high=high, log=log, step=step)


def _number(value: Any, where: str) -> int | float:
    value = _float_from_yaml(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a number (got {shown(value)})")
    return value


class TuneConfig(Section):
    metric: Literal[METRICS] | None = Field(None, description="Validation metric the search optimises: loss is minimised, the others maximised; null = training.metric_for_best. Each trial also picks its best checkpoint by it.")  # type: ignore[valid-type]
    trials: int = Field(20, ge=1, le=100_000, description="Trials in the study, counting completed and pruned ones (not failed); running `bertcls tune` again continues to this count. With the grid sampler, at most the grid's size.")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe: Bayesian (optuna's TPE); random; grid: every combination of the choices (ranges need a step).")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Stop a weak trial after an evaluation: median (worse than the median of earlier trials at the same evaluation), hyperband, or none.")
    startup_trials: int = Field(5, ge=0, le=10_000, description="Trials before the search uses what it learned: TPE samples these at random, and the median pruner stops none until this many have completed.")
    space: Annotated[dict[str, Any], BeforeValidator(_space)] = Field(
        default_factory=dict, description="What to search: `dotted.config.key: [choice, ...]` or `{low: A, high: B, log: false, step: null}` "
        "(integers when low and high are). Every value is checked against the key's own range before any trial starts.")
    seeds: int | None = Field(None, ge=2, le=100, description="Re-train the best configuration with this many new seeds and report the metric's mean ± std, to show whether its lead is bigger than the noise; null = off.")


class Config(Section):
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds data order, initialisation and dropout: the same config and seed give the same metrics on the same CPU with the same number of threads (another thread count rounds differently).")
    output_dir: Annotated[str, AfterValidator(_absolute)] = Field("runs/run", min_length=1, description="The run folder, where everything a run writes goes (see docs/training.md#the-run-folder). Written in a config file, relative to the file's folder; the default, relative to the current folder.")
    data: DataConfig = Field(description="Where the examples come from and how they are read: files or hub datasets, columns, labels, length.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The pretrained encoder to fine-tune; a fresh classification head is put on it.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="The training loop: optimisation, schedule, device and precision, evaluation and checkpoints.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="The hyperparameter search that `bertcls tune` runs; `bertcls train` ignores this section.")

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        if self.data.text_pair_column is not None and self.data.text_pair_column == self.data.text_column:
            raise ValueError("data.text_pair_column must differ from data.text_column")
        if self.data.label_column in (self.data.text_column, self.data.text_pair_column):
            raise ValueError("data.label_column must differ from the text columns")
        _check_long_text(self.data)
        _check_multi_label_keys(self)
        if self.training.tune_threshold and self.training.threshold != TrainingConfig.model_fields["threshold"].default:
            # A value, not model_fields_set: a saved config (RUN/config.yaml, a tune trial's) holds every key, the default too.
            raise ValueError(f"training.threshold={self.training.threshold:g} is not used with training.tune_threshold: true, "
                             "which picks the threshold on validation; set one of them")
        self.tune.space = _checked_space(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The run's config as training reads it (and saves it): without the search's own `tune` section."""
        return self.model_dump(mode="json", exclude={"tune"})


def _checked_space(config: Config) -> dict[str, Dimension]:
    """tune.space with every key a config key, and every choice or end of a range one that the key
    takes (checked by validating the config with it), as the config holds it (`1e-5` a float)."""
    tune, checked = config.tune, {}
    base = config.to_dict() if tune.space else {}
    for key, dim in tune.space.items():
        _check_space_key(key)
        values = [_space_value(base, key, what, value) for what, value in dim.ends()]
        if dim.choices is not None:
            _refuse_repeated_choices(key, dim.choices, values)
            checked[key] = Dimension(choices=tuple(values))
        else:
            checked[key] = Dimension(low=values[0], high=values[1], log=dim.log, step=_step(key, dim.step, values))
        if tune.sampler == "grid" and dim.grid() is None:
            raise ValueError(f"tune.space.{clipped(key)}: tune.sampler grid needs a finite set of values; give a list of choices or a step")
    if tune.sampler == "grid" and math.prod(len(dim.grid()) for dim in checked.values()) > MAX_GRID_POINTS:
        raise ValueError(f"tune.space: the grid has more than {MAX_GRID_POINTS:,} points; narrow it, or use tune.sampler: tpe")
    return checked


def _refuse_repeated_choices(key: str, given: tuple[Any, ...], values: list[Any]) -> None:
    """Choices that are one value as the config holds it (`1e-3` and `0.001`) would train one configuration twice."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ValueError(f"tune.space.{clipped(key)}: choice {shown(given[i])} repeats {shown(given[values.index(value)])}; list each choice once")


def _step(key: str, step: int | float | None, ends: list[Any]) -> int | float | None:
    """A range's step as the key takes it: a whole number for an integer key (16.0 is 16), which draws only integers."""
    if step is None or not all(isinstance(end, int) and not isinstance(end, bool) for end in ends):
        return step
    if not float(step).is_integer():
        raise ValueError(f"tune.space.{clipped(key)}.step: {clipped(key)} takes whole numbers; give a whole-number step (got {step})")
    return int(step)


def _check_space_key(key: str) -> None:
    """Refuse a tune.space key that is not a key of the config, or that the search sets itself."""
    parts, model = key.split("."), Config
    fixed = {"tune": "the search's own settings cannot be searched",
             "output_dir": "each trial writes to OUTPUT_DIR/trial-N; output_dir is not searched",
             "training.metric_for_best": "each trial picks its best checkpoint by tune.metric; set that instead"}
    why = fixed.get(parts[0]) or fixed.get(key)
    if why:
        raise ValueError(f"tune.space.{clipped(key)}: {why}")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            what = "unknown key" if i == len(parts) - 1 else f"unknown section '{clipped(part)}'"
            raise ValueError(f"tune.space.{clipped(key)}: {what}{_suggest(parts[: i + 1]) if i else _suggest_dotted(part)}")
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if is_section and i == len(parts) - 1:
            raise ValueError(f"tune.space.{clipped(key)}: a section; name one of its keys, e.g. {key}.{next(iter(annotation.model_fields))}")
        if not is_section and i < len(parts) - 1:
            raise ValueError(f"tune.space.{clipped(key)}: {'.'.join(parts[: i + 1])} is a key, not a section")
        model = annotation if is_section else model


def _space_value(base: dict[str, Any], key: str, what: str, value: Any) -> Any:
    """`value` as the config holds it at `key`; a ValueError naming the key when the config refuses it."""
    raw = copy.deepcopy(base)
    set_dotted(raw, key, value)
    try:
        node: Any = Config.model_validate(raw)
    except ValidationError as exc:
        reason = _format_error(exc.errors()[0]).removeprefix(f"{key}: ")
        raise ValueError(f"tune.space.{clipped(key)}: {what} {shown(value)} is refused: {reason}") from None
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _check_long_text(data: DataConfig) -> None:
    """data.long_text against the keys it goes with: pairs, and the window keys that only sliding_window reads."""
    mode = data.long_text
    if mode != "truncate" and data.text_pair_column is not None:
        raise ValueError(f"data.long_text: {mode} reads single texts; with data.text_pair_column set, use long_text: truncate")
    if mode != "sliding_window" and (data.stride is not None or data.window_pooling != "mean"):
        key = "data.stride" if data.stride is not None else "data.window_pooling"
        raise ValueError(f"{key} only applies with data.long_text: sliding_window (it is {mode})")
    if data.stride is not None and data.stride > data.max_length // 2:
        raise ValueError(f"data.stride={data.stride} must be at most half of data.max_length={data.max_length} "
                         f"({data.max_length // 2}): it is the overlap of consecutive windows, in tokens")


def _check_multi_label_keys(config: Config) -> None:
    """The keys only multi_label reads, refused with their values changed on a single_label task, not ignored."""
    if config.data.task == "multi_label":
        return
    changed = [key for key, value, default in (("training.threshold", config.training.threshold, 0.5),
                                               ("training.tune_threshold", config.training.tune_threshold, False),
                                               ("data.label_separator", config.data.label_separator, ";")) if value != default]
    if changed:
        raise ValueError(f"{changed[0]} only applies with data.task: multi_label (a single-label model predicts its most "
                         "probable label); set data.task: multi_label, or remove it")


# Keys whose values are paths to resolve (model.name only when it names a local folder).
PATH_KEYS = ("output_dir", "data.train", "data.validation", "data.test", "model.name")


def default_values() -> dict[str, Any]:
    """Every key that has a default, dotted (`training.epochs`), with that default as the config holds it."""
    values: dict[str, Any] = {}
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            values.update({f"{name}.{key}": sub.get_default(call_default_factory=True)
                           for key, sub in annotation.model_fields.items() if not sub.is_required()})
        elif not field.is_required():
            values[name] = field.get_default(call_default_factory=True)
    return values


# PyYAML's words for two mistakes, said with their fix instead.
YAML_FIXES = {"'\\t' that cannot start any token": "a tab where YAML reads only spaces; indent with spaces, not tabs",
              "found another document": "a second YAML document (after a `---` line) follows the config; a config is one document: "
                                        "remove the `---` and what follows it"}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override, resolve and validate a config file; raise ConfigError naming what is wrong."""
    path = Path(path)
    typed: dict[tuple[str, ...], str] = {}
    raw = _read_yaml(path, typed)
    _refuse_respelled_space_keys(raw, path)
    base = path.resolve().parent
    raw = _resolve_paths(raw, base)
    for item in overrides:
        key, value = parse_override(item, typed)
        merge_override(raw, key, value, Path.cwd())
    config = validate_config(raw, typed)
    _refuse_other_bases(config, typed)
    return config


# A number YAML 1.1 (PyYAML) reads in another base: base 60 (`1:30` is 90), octal (`017` is 15), hex, binary.
_OTHER_BASE = re.compile(r"[-+]?(?:[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|0[0-7_]+|0x[0-9a-fA-F_]+|0b[01_]+)")


def _refuse_other_bases(config: Config, typed: dict[tuple[str, ...], str]) -> None:
    """A number typed so that YAML 1.1 reads it in another base is an error: `epochs: 1:30` would train 90 epochs.
    (A text key or value typed so is refused while validating, with the quoted form to use.)"""
    values = config.to_dict()
    for path, text in typed.items():
        if not _OTHER_BASE.fullmatch(text):
            continue
        value: Any = values
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(f"{'.'.join(path)}: YAML reads {text} as the number {value:g}; write it in decimal")


def merge_override(raw: dict[str, Any], key: str, value: Any, base: Path) -> None:
    """`--set KEY=VALUE` into `raw`. A mapping for a section (`data`, `training`) merges into it, key by key, as a
    `--set KEY.SUB=...` for each of its keys would; any other value, a mapping for a key like training.class_weights too,
    replaces what KEY holds. Its paths are resolved against `base`, as a dotted key's are."""
    parts = key.split(".")
    _merge(_parent(raw, parts, key), parts[-1], value, key, base)


def _merge(node: dict[str, Any], name: Any, value: Any, key: str, base: Path) -> None:
    if not (isinstance(value, dict) and _is_section(tuple(key.split(".")))):
        node[name] = _resolve_path_value(key, value, base)
        return
    if not isinstance(node.get(name), dict):
        node[name] = {}
    for sub, sub_value in value.items():  # sub may be no string (`1.0` in class_weights) or hold a dot: never split it
        _merge(node[name], sub, sub_value, f"{key}.{sub}", base)


def model_name_warning(cfg: Config) -> str | None:
    """A warning when the config never named its model: the default, `tiny`, is a random BERT that learns only toy tasks."""
    if "name" in cfg.model.model_fields_set:
        return None
    return ("model.name is not set, so this trains `tiny`, a small random BERT that learns only toy tasks (and little at "
            "the default learning rate); set model.name: bert-base-uncased (or another hub id or model folder), "
            "or model.name: tiny for a smoke test")


def validate_config(raw: dict[str, Any], typed: dict[tuple[str, ...], str] | None = None) -> Config:
    """`raw` as a Config; a ConfigError naming each problem. `typed`: what was typed for the values YAML read as
    no text (`007`, `off`), by key path, so that a hint to quote one quotes what was typed."""
    try:
        return Config.model_validate(raw, context={"typed": typed or {}})
    except ValidationError as exc:
        errors = exc.errors()
        more = f"; ... and {len(errors) - MAX_ERRORS_SHOWN} more problem(s)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ConfigError("; ".join(_format_error(err, typed or {}) for err in errors[:MAX_ERRORS_SHOWN]) + more) from None


def _read_yaml(path: Path, typed: dict[tuple[str, ...], str] | None = None) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file; give the YAML file, e.g. {Path(path) / 'config.yaml'}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = load_yaml(text, str(path), typed)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = next((said for found, said in YAML_FIXES.items() if found in problem), problem)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config is empty; it needs at least `data: {{train: FILE}}`")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys ({', '.join(Config.model_fields)}), not a {type(raw).__name__}")
    for section in SECTIONS:  # `training:` with every key under it commented out: its defaults
        if section in raw and raw[section] is None:
            raw[section] = {}
    return raw


def load_yaml(text: str, where: str, typed: dict[tuple[str, ...], str] | None = None, at: tuple[str, ...] = ()) -> Any:
    """yaml.safe_load, refusing aliases that expand past MAX_ALIAS_EXPANSION values or refer to themselves. `typed`
    gets the text of each scalar read as no text (a number, boolean, null or date), by its key path under `at`.

    PyYAML builds an aliased value once and shares it, so loading a "billion laughs" file is quick;
    the damage comes later, from anything that walks it whole (an error message quoting it, a
    merge key expanding it). The check counts the composed nodes, before anything is built.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes = _distinct_nodes(node)
        try:
            added = _expanded_size(node, {}) - len(nodes)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        _refuse_repeated_keys(nodes.values(), where)
        if added > MAX_ALIAS_EXPANSION:
            raise ConfigError(f"{where}: its aliases (*name) repeat more than {MAX_ALIAS_EXPANSION:,} values "
                              "(nested aliases, a \"billion laughs\"?); write the values out instead")
        if typed is not None:
            typed.update(_untexted_scalars(node, at))
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _untexted_scalars(node: yaml.Node, path: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """The scalars under `node` that YAML reads as no text (`007`, `off`, `~`, `2024-01-01`) or as an empty one (a bare
    `|` or `>` starts a block of text): their text, by key path."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag != "tag:yaml.org,2002:str":
            return {path: node.value}
        return {path: node.style} if node.style in BLOCK_STYLES and not node.value else {}
    pairs = node.value if isinstance(node, yaml.MappingNode) else enumerate(node.value)
    found: dict[tuple[str, ...], str] = {}
    for key, child in pairs:
        found.update(_untexted_scalars(child, (*path, str(getattr(key, "value", key)))))
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:str":  # a key read as no text: `01:` is 1
            found[(*path, key.value, UNTEXTED_KEY)] = key.value
    return found


BLOCK_STYLES = ("|", ">")  # a value starting with either begins a block of text on the lines below
UNTEXTED_KEY = "(key)"  # `typed` records a key YAML read as no text at its own path plus this


def _expanded_size(node: yaml.Node, sizes: dict[int, int | None]) -> int:
    """Nodes in `node` with every alias written out (counted, never built). `sizes`: memo by node id."""
    key = id(node)
    if key in sizes:
        if sizes[key] is None:  # met again while counting itself: an alias inside its own anchor
            raise ValueError("an alias (*name) refers to the value it is part of; a config cannot be recursive")
        return sizes[key]
    sizes[key] = None
    children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else \
        node.value if isinstance(node, yaml.SequenceNode) else []
    sizes[key] = total = 1 + sum(_expanded_size(child, sizes) for child in children)
    return total


def _refuse_repeated_keys(nodes: Iterable[yaml.Node], where: str) -> None:
    """A key written twice in one mapping is an error: PyYAML keeps the last, so the first setting would be silently
    dropped. (A merge key `<<: *base` overriding a key is how YAML means it, not a repeat.)"""
    for node in nodes:
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                raise ConfigError(f"{where}: key {clipped(key.value)!r} is written twice in one section (lines "
                                  f"{lines[key.tag, key.value]} and {line}), and only the last would count; keep one")
            lines[key.tag, key.value] = line


def _distinct_nodes(node: yaml.Node) -> dict[int, yaml.Node]:
    """Every node under `node` once, by id (an alias's node is met again, not copied)."""
    seen: dict[int, yaml.Node] = {}
    todo = [node]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen[id(current)] = current
        if isinstance(current, yaml.MappingNode):
            todo += [part for pair in current.value for part in pair]
        elif isinstance(current, yaml.SequenceNode):
            todo += current.value
    return seen


def parse_override(item: str, typed: dict[tuple[str, ...], str] | None = None) -> tuple[str, Any]:
    """`training.epochs=1` -> ("training.epochs", 1); the value is read as YAML, like the file (`typed`: as load_yaml's)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep and key and " " not in key:
        raise ConfigError(f"--set {item}: no value; write --set {key}=VALUE, with `=` and no spaces")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE with a dotted key, e.g. --set training.epochs=1")
    path, found = tuple(key.split(".")), {}
    try:
        value = load_yaml(text, f"--set {clipped(key)}", found, path) if text.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = text
    if typed is not None:  # forget what was typed for the values this replaces (a section merges: those it names)
        for leaf in _leaves(value, path):
            for stale in [known for known in typed if known[: len(leaf)] == leaf]:
                del typed[stale]
        typed.update(found)
    return key, value


def _leaves(value: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The key paths a `--set` of `value` at `path` replaces: `path` itself, or for a section (which merges) each of its leaves."""
    if not (isinstance(value, dict) and _is_section(path)):
        yield path
        return
    for key, sub in value.items():
        yield from _leaves(sub, (*path, str(key)))


def _is_section(path: tuple[str, ...]) -> bool:
    """Whether `path` names a section of the config (`data`, `training`): a mapping given for one merges into it."""
    model: Any = Config
    for part in path:
        field = model.model_fields.get(part)
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
    return True


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    _parent(raw, parts, key)[parts[-1]] = value


def _parent(raw: dict[str, Any], parts: list[str], key: str) -> dict[str, Any]:
    """The section that holds the last of `parts`, made where missing."""
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or a section whose keys are all left out (`training:` alone)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"--set {clipped(key)}: {clipped('.'.join(parts[: i + 1]))} is not a section")
        node = child
    return node


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as flat dotted keys (`training.epochs`), the inverse of `set_dotted`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in PATH_KEYS:
        section, _, leaf = key.rpartition(".")
        node = raw.get(section) if section else raw
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = _resolve_path_value(key, node[leaf], base)
    space = raw["tune"].get("space") if isinstance(raw.get("tune"), dict) else None
    for key, spec in space.items() if isinstance(space, dict) else ():
        if isinstance(spec, list):  # choices of a path key (model.name: [tiny, ./my-model]) are relative to the file too
            space[key] = [_resolve_path_value(key, choice, base) for choice in spec]
    return raw


def _resolve_path_value(key: str, value: Any, base: Path) -> Any:
    if key not in PATH_KEYS or not isinstance(value, str) or not value:
        return value
    candidate = Path(value).expanduser()
    resolved = Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))
    if key == "output_dir":
        return str(resolved)
    if key == "model.name":
        # A hub id (`bert-base-uncased`, `org/name`) stays as it is unless such a folder exists here.
        is_local = resolved.exists() or value.startswith((".", "/", "~"))
        return str(resolved) if value != "tiny" and is_local else value
    # Data: a file by extension or existence; anything else is a hub dataset name, unless its name (before `:split`)
    # is a folder here: that folder, which data refuses as a folder (the hub's loader would have read it in place).
    looks_local = resolved.exists() or resolved.suffix.lower() in DATA_EXTENSIONS or value.startswith((".", "/", "~"))
    name = value.partition(":")[0]
    return str(resolved) if looks_local else str(base / name) if ":" in value and name and (base / name).is_dir() else value


def _format_error(err: dict[str, Any], typed: dict[tuple[str, ...], str] | None = None) -> str:
    loc = [str(part) for part in err["loc"]]
    key = clipped(".".join(loc)) or "config"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key{_suggest(loc)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    if err["type"] == "model_type":  # a section given as a value: `--set model=null`, `data: train.csv`
        return f"{key}: a section of keys (got {shown(given)}); set its keys, e.g. --set {key}.KEY=VALUE, or {key}: {{KEY: VALUE}} in the file"
    got = "a mapping" if isinstance(given, dict) else f"the date {given}" if isinstance(given, datetime.date) else shown(given)
    problem = f"{key}: {err['msg'].lower()} (got {got})"
    if err["type"] == "string_type" and (given is None or isinstance(given, (bool, int, float, datetime.date))):
        reading, text = _yaml_reading(given)
        text = (typed or {}).get(tuple(loc), text).strip() or text  # quote what was typed: `007`, not YAML's 7
        return f"{problem}; {reading}: quote a text that YAML would read otherwise, e.g. --set '{key}=\"{text}\"', or {loc[-1]}: \"{text}\" in the file"
    if given == "" and (text := (typed or {}).get(tuple(loc))) in BLOCK_STYLES:
        return (f"{problem}; YAML reads a bare {text} as the start of a block of text, here an empty one: quote it, e.g. "
                f"--set '{key}=\"{text}\"', or {loc[-1]}: \"{text}\" in the file")
    return problem


def _yaml_reading(value: None | bool | int | float | datetime.date) -> tuple[str, str]:
    """What YAML made of an unquoted value meant as text, and a text it may have been (for the example)."""
    if value is None:
        return "YAML reads null, ~ and an empty value as null", "null"
    if isinstance(value, bool):
        return "YAML reads yes/no, on/off and true/false as booleans", "yes" if value else "no"
    if isinstance(value, datetime.date):
        return "YAML reads an unquoted date as a date", value.isoformat()
    return "YAML reads an unquoted number as a number", str(value)


# Names other tools use for our keys: difflib alone cannot see that `lr` means `learning_rate`.
ALIASES = {
    "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs", "bs": "batch_size",
    "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "eval_batch_size",
    "warmup": "warmup_ratio", "grad_accum": "gradient_accumulation_steps", "patience": "early_stopping_patience",
    "model_name": "name", "model_name_or_path": "name", "text": "text_column", "label": "label_column",
    "labels": "label_column", "dev": "validation", "valid": "validation", "val": "validation", "eval": "validation",
    "max_seq_length": "max_length", "output": "output_dir", "out_dir": "output_dir", "fp16": "precision", "bf16": "precision",
}


def _suggest_dotted(name: str) -> str:
    """For a tune.space key missing its section (`learning_rate`, `lr`): the dotted key meant."""
    for section, field in Config.model_fields.items():
        keys = getattr(field.annotation, "model_fields", {})
        for candidate in (name, ALIASES.get(name.lower())):
            if candidate in keys:
                return f" (did you mean '{section}.{candidate}'?)"
    return _suggest([name])


def _suggest(loc: list[str]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    alias = ALIASES.get(loc[-1].lower())
    close = [alias] if alias in model.model_fields else difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.5)
    valid = ", ".join(model.model_fields)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {valid})"
