"""The model card a run writes (RUN/model/README.md), read back with huggingface_hub's own parser."""

import hashlib
import json
import re
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from bertcls import atomic, card, push, runs
from bertcls.config import validate_config
from bertcls.data import LabelMap, Split

runner = CliRunner()


def _card(run):
    from huggingface_hub import ModelCard

    return ModelCard.load(run / runs.MODEL_DIR / runs.CARD_FILE)


def test_the_card_is_a_hub_model_card_holding_the_runs_metrics(trained_run):
    parsed = _card(trained_run)
    metrics = json.loads((trained_run / runs.METRICS_FILE).read_text())
    data = parsed.data
    assert (data.pipeline_tag, data.library_name, data.base_model) == ("text-classification", "transformers", None)  # tiny: no hub base
    assert data.tags == ["bertcls", "text-classification", "single-label-classification"]
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    expected = {(split, key): value for split in ("validation", "test") for key, value in metrics[split].items() if isinstance(value, float)}
    assert found == expected and {r.task_type for r in data.eval_results} == {"text-classification"}
    assert f"{runs.MODEL_DIR}/{runs.CARD_FILE}" in runs.read_record(trained_run)["files"]


def test_the_card_says_what_the_model_was_trained_on_and_how(trained_run):
    text = (trained_run / runs.MODEL_DIR / runs.CARD_FILE).read_text()
    config = yaml.safe_load((trained_run / runs.CONFIG_FILE).read_text())
    for split, rows in (("train", 240), ("validation", 60), ("test", 60)):
        path = config["data"][split]
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert f"| {split} | {split}.csv | {rows} | `{digest}` |" in text  # the file's name, never its folder
    assert "| 0 | negative |\n| 1 | positive |" in text
    assert f"| training.learning_rate | {config['training']['learning_rate']} |" in text
    assert str(trained_run.parent) not in text.partition(card.USAGE_HEADING)[0]  # local paths only where the user runs it


def test_the_cards_pipeline_snippet_runs_as_written(trained_run, capsys):
    from bertcls.predict import load_predictor

    text = (trained_run / runs.MODEL_DIR / runs.CARD_FILE).read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S)[1]
    exec(compile(snippet, "README.md", "exec"), {})
    printed = eval(capsys.readouterr().out)  # what the snippet prints: [{'label': ..., 'score': ...}]
    ours = load_predictor(trained_run, device="cpu").predict([card.EXAMPLE_TEXT])[0]
    assert printed[0]["label"] == ours.label and printed[0]["score"] == pytest.approx(ours.score, abs=1e-4)


def test_hub_model_hub_data_multi_label_and_pairs_reach_the_card():
    from huggingface_hub import ModelCard

    config = {"seed": 1, "data": {"train": "ag_news:train", "validation": None, "validation_split": 0.1, "test": "/data/test.jsonl",
                                  "max_length": 64, "task": "multi_label", "text_pair_column": "b"},
              "model": {"name": "bert-base-uncased"}, "training": {"epochs": 1}}
    result = {"best_epoch": 1, "metric_for_best": "f1_micro",
              "validation": {"num_examples": 5, "accuracy": 0.5, "f1_micro": 0.75, "threshold": 0.4},
              "test": {"num_examples": 6, "accuracy": 0.25, "f1_micro": 0.5, "threshold": 0.4, "roc_auc": 0.625}}  # none on validation
    usage = card.usage_section("/runs/r", "/runs/r/model", config)
    text = card.render_card("r", config, {"train": 9, "validation": 1, "test": 6}, ["a", "b|c"], True, result, {}, usage)
    data = ModelCard(text).data
    assert (data.base_model, data.datasets, data.tags[-1]) == ("bert-base-uncased", ["ag_news"], "multi-label-classification")
    assert {(r.dataset_split, r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results} == {
        ("train (10% held out)", "ag_news:train", "accuracy"): 0.5, ("train (10% held out)", "ag_news:train", "f1_micro"): 0.75,
        ("test", "test.jsonl", "accuracy"): 0.25, ("test", "test.jsonl", "f1_micro"): 0.5, ("test", "test.jsonl", "roc_auc"): 0.625}
    assert "| validation | ag_news:train (10% held out) | 1 | - |" in text and "| 1 | b\\|c |" in text
    assert "| roc_auc | - | 0.6250 |" in text  # a metric one split lacks is still shown for the other
    scored_on_test = {**config, "data": {**config["data"], "validation": "ag_news:test", "test": "ag_news"}}
    text = card.render_card("r", scored_on_test, {"train": 9, "validation": 1, "test": 6}, ["a", "b|c"], True, result, {}, usage)
    assert {(r.metric_name, r.dataset_split) for r in ModelCard(text).data.eval_results if r.metric_type == "accuracy"} == {
        ("validation accuracy", "test"), ("test accuracy", "test")}  # the hub's split each was scored on, not its role
    assert "at least 0.4." in text and "fine-tuned by bertcls 0.1.0 from [`bert-base-uncased`](https://huggingface.co/bert-base-uncased)" in text
    assert f'print(classifier({{"text": "{card.EXAMPLE_TEXT}", "text_pair": "{card.EXAMPLE_PAIR}"}}, top_k=None))' in text
    assert f'--pair "{card.EXAMPLE_PAIR}"' in text


def test_the_pipeline_snippet_is_python_whatever_the_folder_is_called():
    config = {"data": {"text_pair_column": None, "task": "single_label"}}
    folder = "/runs/bob's \"best\" run: #1 ü/model"
    snippet = card.usage_section("/runs/x", folder, config).partition("```python\n")[2].partition("```")[0]
    called = re.search(r"^classifier = (pipeline\(.*\))$", snippet, re.M)[1]
    assert eval(called, {"pipeline": lambda task, model: (task, model)}) == ("text-classification", folder)


def test_how_a_model_reads_long_texts_reaches_the_card():
    config = {"seed": 1, "data": {"train": "/data/train.csv", "validation": None, "validation_split": 0.1, "test": None, "max_length": 64,
                                  "task": "single_label", "text_pair_column": None, "long_text": "sliding_window", "stride": 16,
                                  "window_pooling": "max"},
              "model": {"name": "bert-base-uncased"}, "training": {"epochs": 1}}
    usage = card.usage_section("/runs/r", "/runs/r/model", config)
    result = {"best_epoch": 1, "metric_for_best": "accuracy", "validation": {"num_examples": 1, "accuracy": 1.0}}
    text = card.render_card("r", config, {"train": 9, "validation": 1}, ["a", "b"], False, result, {}, usage)
    assert "| data.long_text | sliding_window |\n| data.stride | 16 |\n| data.window_pooling | max |" in text
    assert "| data.text_pair_column |" not in text  # not set: not shown
    assert "trained with data.long_text: sliding_window, which bertcls predict applies" in text.partition(card.USAGE_HEADING)[2]
    truncating = {**config, "data": {**config["data"], "long_text": "truncate", "stride": None, "window_pooling": "mean"}}
    assert "data.long_text" not in card.usage_section("/runs/r", "/runs/r/model", truncating)


def _write_card_again(run):
    """What the end of training does, from the run's own files."""
    config = validate_config(yaml.safe_load((run / runs.CONFIG_FILE).read_text()))
    said = []
    splits = [Split(name, ["x"] * n, None, ["positive"] * n) for name, n in (("train", 240), ("validation", 60), ("test", 60))]
    written = card.write_card(run, config, splits, LabelMap(("negative", "positive")), json.loads((run / runs.METRICS_FILE).read_text()),
                              said.append)
    return written, said


def test_a_card_someone_else_wrote_or_edited_is_kept(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    card_file = run / runs.MODEL_DIR / runs.CARD_FILE
    ours = card_file.read_text()
    assert _write_card_again(run) == (card_file, [])  # ours, unchanged: written again
    assert card_file.read_text() == ours.replace(str(trained_run), str(run))
    # edited (a section added at the end, as a model card invites): the user's now, through a fresh start and a push
    edited = card_file.read_text() + "\n## Limitations\n\nNot for medical use.\n"
    card_file.write_text(edited)
    written, said = _write_card_again(run)
    assert written is None and card_file.read_text() == edited
    assert said == [f"note: {card_file} was changed since bertcls wrote it, so it is kept and no model card is written; "
                    "move it away and train with --overwrite for one"]
    runs.prepare_run_dir(run, overwrite=True)  # what --overwrite removes before training again
    assert card_file.read_text() == edited and not (run / runs.MODEL_DIR / "model.safetensors").exists()
    saved = atomic.temp_dir_for(run / runs.MODEL_DIR)  # the new run's first best model put in place
    (saved / "model.safetensors").write_bytes(b"weights")
    runs.record_files(run, f"{runs.MODEL_DIR}/model.safetensors")
    runs.publish_dir(saved, run / runs.MODEL_DIR)
    assert card_file.read_text() == edited
    hub_card = push.plan(trained_run, "me/x").card_text.decode()  # the untouched run: the usage section ends the card
    assert hub_card.rstrip().endswith("```")
    shutil.copytree(trained_run, tmp_path / "pushed")
    (tmp_path / "pushed" / runs.MODEL_DIR / runs.CARD_FILE).write_text(edited.replace(str(run), str(tmp_path / "pushed")))
    hub_card = push.plan(tmp_path / "pushed", "me/x").card_text.decode()
    assert hub_card.endswith("\n## Limitations\n\nNot for medical use.\n") and str(tmp_path) not in hub_card
    assert 'pipeline("text-classification", model="me/x")' in hub_card
    card_file.rename(tmp_path / "edited.md")  # a folder in the card's place is not bertcls's either
    card_file.mkdir()
    (card_file / "notes.md").write_text("mine")
    runs.prepare_run_dir(run, overwrite=True)
    assert not runs.wrote(run, f"{runs.MODEL_DIR}/{runs.CARD_FILE}") and (card_file / "notes.md").read_text() == "mine"
    # a card someone else wrote, where bertcls's was removed
    run = tmp_path / "other"
    shutil.copytree(trained_run, run)
    card_file = run / runs.MODEL_DIR / runs.CARD_FILE
    runs.remove_ours(run, f"{runs.MODEL_DIR}/{runs.CARD_FILE}")
    card_file.write_text("my own card")
    written, said = _write_card_again(run)
    assert written is None and card_file.read_text() == "my own card"
    assert said == [f"note: {card_file} was not written by bertcls, so it is kept and no model card is written; "
                    "move it away and train with --overwrite for one"]
