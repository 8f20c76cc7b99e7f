"""The run configuration: a YAML file plus dotted `--set` overrides in, a validated `Config` out.

Every key, its type, default and meaning lives here, and nowhere else. Paths in a config file
are relative to the file's folder; paths given with `--set`, and the default output_dir, are
relative to the current folder. All are stored absolute.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from bertcls import machine
from bertcls.errors import ConfigError, clipped, shown

DATA_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
METRICS = ("accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "loss")
# YAML aliases (*name) may repeat an anchored value; past this many values added by repeating, a file is refused:
# nested aliases grow exponentially (a "billion laughs" file), and a real config repeats a few dozen at most.
MAX_ALIAS_EXPANSION = 10_000
# Problems listed in one config error; the rest are counted.
MAX_ERRORS_SHOWN = 10


def _float_from_yaml(value: Any) -> Any:
    # YAML 1.1 reads `5e-5` (no dot) as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_float_from_yaml)]


def _class_weights(value: Any) -> Any:
    """`none`, `balanced`, or {label: weight >= 0} with label names as strings (YAML may give integers)."""
    if value in ("none", "balanced"):
        return value
    if not isinstance(value, dict) or not value:
        raise ValueError(f"training.class_weights: expected none, balanced or a mapping {{label: weight}} (got {shown(value)})")
    weights = {}
    for label, weight in value.items():
        weight = _float_from_yaml(weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"training.class_weights.{clipped(str(label))}: a weight must be a number >= 0 (got {shown(weight)})")
        weights[str(label)] = float(weight)
    if not any(weights.values()):
        raise ValueError("training.class_weights: at least one weight must be above 0")
    return weights


def _absolute(path: str) -> str:
    # The default (like any relative path not from a config file) is relative to the current folder; the saved config holds it absolute.
    return os.path.normpath(Path(path).expanduser().absolute())


def _device(value: Any) -> Any:
    # The message (and the valid values) are the ones predict and evaluate give for --device.
    problem = machine.device_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(f"training.device: {problem}")
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
    label_separator: str = Field(";", min_length=1, description="multi_label in csv/tsv: the labels of a row in one string, separated by this (`sport;politics`); in json/jsonl a row's labels are a list.")
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
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement; null = off.")
    metric_for_best: Literal[METRICS] = Field("f1_macro", description="Validation metric that picks the best checkpoint.")  # type: ignore[valid-type]
    log_every_steps: int = Field(50, ge=1, description="Write a training log line every this many optimizer steps.")
    num_threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for torch; null = torch's default.")
    save_every_steps: int | None = Field(None, ge=1, description="Write a resumable checkpoint every N optimizer steps; null = after each epoch.")
    keep_checkpoints: int = Field(1, ge=1, le=1000, description="Resumable checkpoints to keep (the newest), besides the best model/.")
    keep_checkpoints_at_end: bool = Field(False, description="Keep the resumable checkpoints once the run has finished. They only serve to "
                                          "resume an unfinished run and hold the weights plus twice their size of optimizer state "
                                          "(about 270 MB for MiniLM, 1.3 GB for bert-base), so by default a finished run keeps "
                                          "model/ and its traced graph alone.")
    class_weights: Annotated[str | dict[str, float], BeforeValidator(_class_weights)] = Field(
        "none", description="Weighted cross-entropy: none, balanced (n / (classes x class count)), or {label: weight} (others weigh 1).")
    threshold: Float = Field(0.5, gt=0.0, lt=1.0, description="multi_label: a label is predicted when its probability is at least this.")
    tune_threshold: bool = Field(False, description="multi_label: pick the threshold with the best micro-F1 on validation instead; saved with the model.")
    loss_curve: bool = Field(True, description="Draw RUN/loss.png (training and validation loss) from log.jsonl at the end.")
    save_torchscript: bool = Field(True, description="At the end, also save the model as a traced TorchScript graph "
                                   "(RUN/model/bertcls-torchscript.pt, one more copy of the weights): `bertcls predict` "
                                   "on the CPU then starts without importing transformers, about 3x sooner.")


class Config(Section):
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds data order, initialisation and dropout: the same config and seed give the same metrics on the CPU.")
    output_dir: Annotated[str, AfterValidator(_absolute)] = Field("runs/run", min_length=1, description="The run folder, where everything a run writes goes (see docs/training.md#the-run-folder).")
    data: DataConfig = Field(description="Where the examples come from and how they are read: files or hub datasets, columns, labels, length.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The pretrained encoder to fine-tune; a fresh classification head is put on it.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="The training loop: optimisation, schedule, device and precision, evaluation and checkpoints.")

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        if self.data.text_pair_column is not None and self.data.text_pair_column == self.data.text_column:
            raise ValueError("data.text_pair_column must differ from data.text_column")
        if self.data.label_column in (self.data.text_column, self.data.text_pair_column):
            raise ValueError("data.label_column must differ from the text columns")
        _check_long_text(self.data)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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


# Keys whose values are paths to resolve (model.name only when it names a local folder).
PATH_KEYS = ("output_dir", "data.train", "data.validation", "data.test", "model.name")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override, resolve and validate a config file; raise ConfigError naming what is wrong."""
    path = Path(path)
    raw = _read_yaml(path)
    base = path.resolve().parent
    raw = _resolve_paths(raw, base)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, _resolve_path_value(key, value, Path.cwd()))
    return validate_config(raw)


def model_name_warning(cfg: Config) -> str | None:
    """A warning when the config never named its model: the default, `tiny`, is a random BERT that learns only toy tasks."""
    if "name" in cfg.model.model_fields_set:
        return None
    return ("model.name is not set, so this trains `tiny`, a small random BERT that learns only toy tasks (and little at "
            "the default learning rate); set model.name: bert-base-uncased (or another hub id or model folder), "
            "or model.name: tiny for a smoke test")


def validate_config(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f"; ... and {len(errors) - MAX_ERRORS_SHOWN} more problem(s)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ConfigError("; ".join(_format_error(err) for err in errors[:MAX_ERRORS_SHOWN]) + more) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = load_yaml(text, str(path))
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config is empty; it needs at least `data: {{train: FILE}}`")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (seed, output_dir, data, model, training), not a {type(raw).__name__}")
    return raw


def load_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, refusing aliases that expand past MAX_ALIAS_EXPANSION values or refer to themselves.

    PyYAML builds an aliased value once and shares it, so loading a "billion laughs" file is quick;
    the damage comes later, from anything that walks it whole (an error message quoting it, a
    merge key expanding it). The check counts the composed nodes, before anything is built.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            added = _expanded_size(node, {}) - len(_distinct_nodes(node))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if added > MAX_ALIAS_EXPANSION:
            raise ConfigError(f"{where}: its aliases (*name) repeat more than {MAX_ALIAS_EXPANSION:,} values "
                              "(nested aliases, a \"billion laughs\"?); write the values out instead")
        return loader.construct_document(node)
    finally:
        loader.dispose()


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


def _distinct_nodes(node: yaml.Node) -> set[int]:
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            todo += [part for pair in current.value for part in pair]
        elif isinstance(current, yaml.SequenceNode):
            todo += current.value
    return seen


def parse_override(item: str) -> tuple[str, Any]:
    """`training.epochs=1` -> ("training.epochs", 1); the value is read as YAML, like the file."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep and key and " " not in key:
        raise ConfigError(f"--set {item}: no value; write --set {key}=VALUE, with `=` and no spaces")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE with a dotted key, e.g. --set training.epochs=1")
    try:
        value = load_yaml(text, f"--set {clipped(key)}") if text.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = text
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {clipped(key)}: {clipped('.'.join(parts[: i + 1]))} is not a section")
        node = child
    node[parts[-1]] = value


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in PATH_KEYS:
        section, _, leaf = key.rpartition(".")
        node = raw.get(section) if section else raw
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = _resolve_path_value(key, node[leaf], base)
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
    # Data: a file by extension or existence; anything else is a hub dataset name.
    looks_local = resolved.exists() or resolved.suffix.lower() in DATA_EXTENSIONS or value.startswith((".", "/", "~"))
    return str(resolved) if looks_local else value


def _format_error(err: dict[str, Any]) -> str:
    loc = [str(part) for part in err["loc"]]
    key = clipped(".".join(loc)) or "config"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key{_suggest(loc)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    return f"{key}: {err['msg'].lower()} (got {shown(given) if not isinstance(given, dict) else 'a mapping'})"


# Names other tools use for our keys: difflib alone cannot see that `lr` means `learning_rate`.
ALIASES = {
    "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs", "bs": "batch_size",
    "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "eval_batch_size",
    "warmup": "warmup_ratio", "grad_accum": "gradient_accumulation_steps", "patience": "early_stopping_patience",
    "model_name": "name", "model_name_or_path": "name", "text": "text_column", "label": "label_column",
    "labels": "label_column", "dev": "validation", "valid": "validation", "val": "validation", "eval": "validation",
    "max_seq_length": "max_length", "output": "output_dir", "out_dir": "output_dir", "fp16": "precision", "bf16": "precision",
}


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
