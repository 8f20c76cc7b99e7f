"""The model card: a finished run's config, data, labels and metrics in, RUN/model/README.md out.

A Hugging Face model card, rendered by the hub as it is: YAML front matter (pipeline_tag, library_name,
base_model for a hub model, tags, datasets for hub data, and a model-index holding every validation and
test metric, built with huggingface_hub's own ModelCardData), then the labels, the results, the data
(file names, rows, sha256 from the manifest), how it was trained, and how to use it. Only file and folder
names go into the card, never a local path, except in "How to use", which `bertcls push` rewrites for the hub.

Training writes it once, at the end, after the best model is final and before metrics.json; a
model/README.md that bertcls did not write is left alone.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertcls import __version__, atomic, manifest, runs

if TYPE_CHECKING:  # pydantic and the data module (torch): only for the annotations
    from bertcls.config import Config
    from bertcls.data import LabelMap, Split

TASK = "text-classification"
USAGE_HEADING = "## How to use"  # the card's last section: `bertcls push` puts the hub's version in its place
EXAMPLE_TEXT = "An example text to classify."
EXAMPLE_PAIR = "A second text, for the pair."
LABELS_SHOWN = 50  # a card lists this many labels; config.json's id2label holds them all
NOT_METRICS = ("num_examples", "threshold")  # numbers in metrics.json that are not scores


def write_card(run: Path, config: Config, splits: Sequence[Split | None], labels: LabelMap, result: dict[str, Any],
               say: Callable[[str], None]) -> Path | None:
    """Write RUN/model/README.md for the finished run (`result`: what metrics.json will hold), unless a card
    someone else wrote is there; then say so and leave it."""
    run = Path(run)
    path, name = run / runs.MODEL_DIR / runs.CARD_FILE, f"{runs.MODEL_DIR}/{runs.CARD_FILE}"
    if (path.exists() or path.is_symlink()) and not runs.wrote(run, name):
        whose = "was changed since bertcls wrote it" if runs.edited(run, name) else "was not written by bertcls"
        say(f"note: {path} {whose}, so it is kept and no model card is written; move it away and train with --overwrite for one")
        return None
    rows = {split.name: len(split) for split in splits if split is not None}
    settings, data = config.to_dict(), (manifest.read_manifest(run) or {}).get("data") or {}
    usage = usage_section(str(run), str(run / runs.MODEL_DIR), settings)
    text = render_card(run.name, settings, rows, list(labels.names), labels.multi_label, result, data, usage)
    runs.record_editable(run, name, text.encode("utf-8"))
    atomic.write_atomic(path, text)
    return path


def render_card(name: str, config: dict[str, Any], rows: dict[str, int], labels: list[str], multi_label: bool,
                result: dict[str, Any], data: dict[str, dict[str, Any]], usage: str) -> str:
    """The card's text: front matter, then the sections. `config`: the resolved config as a dict; `rows`: rows
    per split as trained on; `data`: the manifest's data sources with their sha256."""
    evaluated = {split: result[split] for split in ("validation", "test") if isinstance(result.get(split), dict)}
    sources = split_sources(config["data"])
    sections = [
        _summary(name, config, labels, multi_label, result),
        _labels_section(labels, multi_label, evaluated.get("validation", {})),
        _results_section(evaluated),
        _data_section(rows, sources, data, config["data"]),
        _training_section(config, result.get("train") or {}),
        usage,
    ]
    return f"---\n{front_matter(name, config, multi_label, evaluated, sources)}\n---\n\n" + "\n\n".join(sections) + "\n"


def front_matter(name: str, config: dict[str, Any], multi_label: bool, evaluated: dict[str, dict[str, Any]],
                 sources: dict[str, str]) -> str:
    """The YAML metadata the hub reads, in the schema of huggingface_hub's ModelCardData (which builds it)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [EvalResult(task_type=TASK, task_name="Text Classification", dataset_type=_dataset_type(sources[split]),
                          dataset_name=_source_name(sources[split]), dataset_split=_dataset_split(split, sources[split], config["data"]),
                          metric_type=key, metric_value=value, metric_name=f"{split} {key}")
               for split, metrics in evaluated.items() for key, value in scores(metrics).items()]
    hub_data = sorted({_hub_dataset(source) for source in sources.values() if _hub_dataset(source)})
    tags = ["bertcls", TASK, "multi-label-classification" if multi_label else "single-label-classification"]
    card = ModelCardData(base_model=base_model(config["model"]["name"]), datasets=hub_data or None, library_name="transformers",
                         pipeline_tag=TASK, tags=tags, model_name=name, eval_results=results or None)
    return card.to_yaml()


def scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The scores of a metrics dict that the model-index and the results table hold: every number but the counts."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in NOT_METRICS}


def base_model(model_name: str) -> str | None:
    """The hub id a run fine-tuned, or None for `tiny` and local folders (config.py made their paths absolute)."""
    return None if model_name == "tiny" or Path(model_name).is_absolute() else model_name


def split_sources(data: dict[str, Any]) -> dict[str, str]:
    """Where each split came from: a local file's path or a hub dataset's id (validation held out: train's)."""
    sources = {"train": data["train"], "validation": data.get("validation") or data["train"]}
    if data.get("test"):
        sources["test"] = data["test"]
    return sources


def _hub_dataset(source: str) -> str | None:
    return None if Path(source).is_absolute() else source.partition(":")[0]


def _source_name(source: str) -> str:
    """What the card shows of a source: a local file's name (never its folder), else the source as it is."""
    return Path(source).name if Path(source).is_absolute() else source


def _dataset_type(source: str) -> str:
    return _hub_dataset(source) or "local"


def _held_out(data: dict[str, Any]) -> str:
    return f"{data['validation_split'] * 100:g}% held out"  # 12.5%, not 12%


def _dataset_split(split: str, source: str, data: dict[str, Any]) -> str:
    """The split of its dataset that `split` was scored on, as the hub reads it: a hub dataset's own split (`name:test`
    as validation is its test split; a bare `name` gave the split named as the role); validation held out of train
    is that share of train's split."""
    held_out = split == "validation" and not data.get("validation")
    named = (source.partition(":")[2] if _hub_dataset(source) else "") or ("train" if held_out else split)
    return f"{named} ({_held_out(data)})" if held_out else named


# ---------------------------------------------------------------------------- the sections

def _summary(name: str, config: dict[str, Any], labels: list[str], multi_label: bool, result: dict[str, Any]) -> str:
    model = config["model"]["name"]
    hub_id = base_model(model)
    base = (f"[`{hub_id}`](https://huggingface.co/{hub_id})" if hub_id else
            "`tiny` (a small random BERT that bertcls builds for tests)" if model == "tiny" else f"a local model (`{Path(model).name}`)")
    kind = "multi-label" if multi_label else "single-label"
    when = f"optimizer step {result['best_step']} (epoch {result['best_epoch']})" if result.get("best_step") else f"epoch {result.get('best_epoch')}"
    best = (f" The weights are those after {when}, the best on validation "
            f"`{result['metric_for_best']}`.") if result.get("best_epoch") else ""
    return f"# {name}\n\nA {kind} text classifier with {len(labels)} labels, fine-tuned by bertcls {__version__} from {base}.{best}"


def _labels_section(labels: list[str], multi_label: bool, validation: dict[str, Any]) -> str:
    lines = ["## Labels", "", "| id | label |", "|---:|---|"]
    lines += [f"| {i} | {_cell(label)} |" for i, label in enumerate(labels[:LABELS_SHOWN])]
    if len(labels) > LABELS_SHOWN:
        lines += ["", f"... and {len(labels) - LABELS_SHOWN} more; `id2label` in config.json lists them all."]
    if multi_label:
        threshold = validation.get("threshold", 0.5)
        lines += ["", f"A text gets every label whose probability (a sigmoid per label) is at least {threshold:g}."]
    return "\n".join(lines)


def _results_section(evaluated: dict[str, dict[str, Any]]) -> str:
    if not evaluated:
        return "## Results\n\nNot evaluated."
    splits = list(evaluated)
    keys = list(dict.fromkeys(key for metrics in evaluated.values() for key in scores(metrics)))  # a split may lack one
    lines = ["## Results", "", "| metric | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    lines += [f"| {key} | " + " | ".join(_number(evaluated[split].get(key)) or "-" for split in splits) + " |" for key in keys]
    lines += ["| examples | " + " | ".join(str(evaluated[split].get("num_examples", "")) for split in splits) + " |"]
    return "\n".join(lines)


def _data_section(rows: dict[str, int], sources: dict[str, str], data: dict[str, dict[str, Any]], data_cfg: dict[str, Any]) -> str:
    digests = {entry.get("source"): entry.get("sha256") for entry in data.values()}
    lines = ["## Training data", "", "| split | source | rows | sha256 |", "|---|---|---:|---|"]
    for split, count in rows.items():
        source, digest = sources.get(split, ""), digests.get(sources.get(split))
        shown = _source_name(source) + (f" ({_held_out(data_cfg)})" if split == "validation" and not data_cfg.get("validation") else "")
        lines.append(f"| {split} | {_cell(shown)} | {count:,} | {f'`{digest}`' if digest else '-'} |")
    return "\n".join(lines)


def _training_section(config: dict[str, Any], train: dict[str, Any]) -> str:
    versions = manifest.library_versions()
    data = config["data"]
    read = ("max_length", "task", "text_pair_column", "long_text", *(("stride", "window_pooling") if data.get("long_text") == "sliding_window" else ()))
    settings = {"seed": config["seed"], **{f"data.{key}": data[key] for key in read if data.get(key) is not None},
                **{f"training.{key}": value for key, value in config["training"].items()}}
    lines = ["## Training procedure", "", f"Trained with bertcls {__version__}, torch {versions.get('torch')} and "
             f"transformers {versions.get('transformers')}" + _how_long(train) + ".", "",
             "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value if isinstance(value, str) else json.dumps(value))} |" for key, value in settings.items()]
    return "\n".join(lines)


def _how_long(train: dict[str, Any]) -> str:
    if not train:
        return ""
    return (f", on {train.get('device')} in {train.get('precision')}: {train.get('optimizer_steps')} optimizer steps over "
            f"{train.get('epochs')} epoch(s) in {train.get('seconds', 0):,.1f} s ({train.get('examples_per_s', 0):,.1f} examples/s)")


def usage_section(bertcls_model: str, pipeline_model: str, config: dict[str, Any], download: str | None = None) -> str:
    """How to use the model: `bertcls predict --model BERTCLS_MODEL` and transformers' pipeline on PIPELINE_MODEL;
    `download`: a hub repo id, fetched with `hf download` first for bertcls (which reads local folders)."""
    pair = bool(config["data"].get("text_pair_column"))
    multi_label = config["data"].get("task") == "multi_label"
    pair_option = f' --pair "{EXAMPLE_PAIR}"' if pair else ""
    folder = shlex.quote(bertcls_model)
    fetch = f"hf download {download} --local-dir {folder}\n" if download else ""
    call_input = f'{{"text": "{EXAMPLE_TEXT}", "text_pair": "{EXAMPLE_PAIR}"}}' if pair else f'"{EXAMPLE_TEXT}"'
    every_label = ", top_k=None" if multi_label else ""  # every label's sigmoid score, not only the top one
    long_text = config["data"].get("long_text", "truncate")
    caveat = ([f"(transformers reads a long text's first tokens only; this model was trained with data.long_text: {long_text}, "
               "which bertcls predict applies.)", ""] if long_text != "truncate" else [])
    return "\n".join([
        USAGE_HEADING, "", "With bertcls:", "", "```bash",
        f'{fetch}bertcls predict --model {folder} "{EXAMPLE_TEXT}"{pair_option}', "```", "",
        "With transformers alone:", "", *caveat, "```python", "from transformers import pipeline", "",
        f"classifier = pipeline({json.dumps(TASK)}, model={json.dumps(pipeline_model, ensure_ascii=False)})",  # Python, too
        f"print(classifier({call_input}{every_label}))", "```",
    ])


def for_hub(text: str, repo_id: str, config: dict[str, Any]) -> str:
    """A card of ours with its usage section naming the hub repo instead of the local folder; the sections
    before and after it stay as they are."""
    head, found, rest = text.rpartition(f"\n{USAGE_HEADING}\n")
    if not found:
        return text
    _, heading, after = rest.partition("\n## ")
    local = repo_id.rpartition("/")[2]
    return f"{head}\n{usage_section(local, repo_id, config, download=repo_id)}\n" + (f"\n## {after}" if heading else "")


def _cell(text: Any) -> str:
    """`text` safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
