"""A newcomer's first hour: the mistakes and the files a new user brings, each met as they would meet it."""

import csv
import io
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bertcls import tsv
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import BertclsWarning, ModelError
from conftest import make_config, toy_rows, write_csv

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME_WARNING = ("warning: model.name is not set, so this trains `tiny`, a small random BERT that learns only toy tasks "
                      "(and little at the default learning rate); set model.name: bert-base-uncased (or another hub id or "
                      "model folder), or model.name: tiny for a smoke test\n")


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1, result.output
    return result.stderr.removeprefix("Error: ").rstrip("\n")


# ---------------------------------------------------------------------------- a config that leaves things out

def test_first_run_without_model_name_or_output_dir(tmp_path, monkeypatch):
    """The one short training here: the model.name warning (once, first), the default run folder stored
    absolute, and the precision the header line and metrics.json say it trained in."""
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "train.csv", toy_rows(40, 0))
    (tmp_path / "c.yaml").write_text("data: {train: train.csv, max_length: 16}\n"
                                     "training: {epochs: 1, precision: fp32, save_torchscript: false, loss_curve: false}\n")
    result = runner.invoke(app, ["train", "c.yaml"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(MODEL_NAME_WARNING) and result.stderr.count("warning:") == 1
    assert "| device cpu | precision fp32 | model tiny" in result.stderr
    run = tmp_path / "runs" / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["output_dir"] == str(run)
    train = json.loads((run / "metrics.json").read_text())["train"]
    assert (train["device"], train["precision"]) == ("cpu", "fp32")


@pytest.mark.parametrize(("model", "warned"), [(None, True), ("tiny", False)])
def test_the_warning_is_only_for_a_config_that_never_named_the_model(tmp_path, toy_data, model, warned):
    config = make_config(tmp_path, {**toy_data, "train": tmp_path / "nope.csv"})
    raw = yaml.safe_load(config.read_text())
    raw["model"] = {"name": model} if model else {}
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2  # the missing file: the warning comes first, before anything is read
    assert result.stderr.startswith(MODEL_NAME_WARNING) is warned
    assert result.stderr.count("warning:") == int(warned)


def test_the_default_output_dir_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data: {train: a.csv}\n")
    assert load_config("c.yaml").output_dir == str(tmp_path / "runs" / "run")


# ---------------------------------------------------------------------------- paths and --set

def test_a_missing_config_relative_file_names_its_key_and_how_paths_are_read(tmp_path, toy_data):
    (tmp_path / "configs").mkdir()
    config = make_config(tmp_path / "configs", toy_data)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["validation"] = "data/dev.csv"
    config.write_text(yaml.safe_dump(raw))
    assert one_line_error(runner.invoke(app, ["train", str(config)])) == (
        f"data.validation: {tmp_path / 'configs' / 'data' / 'dev.csv'}: no such file (paths in a config file are relative "
        "to the config's folder, paths given with --set to the current folder)")


def test_set_with_a_space_instead_of_equals(tmp_path, toy_data):
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "--set", "training.epochs", "1"])
    assert one_line_error(result) == "--set training.epochs 1: write --set training.epochs=1, with `=` and no spaces"


def test_a_setting_without_set(tmp_path, toy_data):
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "training.epochs=1"])
    assert one_line_error(result) == "training.epochs=1: a setting is given with --set: bertcls train CONFIG --set training.epochs=1"


def test_the_sst2_config_works_as_shipped_and_offline_by_set(tmp_path, monkeypatch):
    """As shipped: hub ids for the model and the dataset (nothing is downloaded to load the config);
    offline: a local folder and files with --set, relative to the current folder."""
    path = ROOT / "configs" / "sst2-minilm.yaml"
    cfg = load_config(path)
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (cfg.data.train, cfg.data.validation, cfg.data.test) == ("stanfordnlp/sst2:train", None, "stanfordnlp/sst2:validation")
    assert cfg.output_dir == str(ROOT / "runs" / "sst2-minilm")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()
    cfg = load_config(path, ["model.name=minilm", "data.train=sst2/train.tsv", "data.validation=sst2/dev.tsv"])
    assert (cfg.model.name, cfg.data.train, cfg.data.validation) == (str(tmp_path / "minilm"), str(tmp_path / "sst2/train.tsv"),
                                                                     str(tmp_path / "sst2/dev.tsv"))


# ---------------------------------------------------------------------------- evaluate's column options

@pytest.mark.parametrize("option", ["--text-column", "--label-column"])  # a pair model's --text-pair-column: test_pairs
def test_evaluate_names_the_option_that_chose_a_wrong_column(tmp_path, trained_run, option):
    data = write_csv(tmp_path / "e.csv", [("great film", "positive"), ("dull", "negative")])
    message = one_line_error(runner.invoke(app, ["evaluate", str(data), "--model", str(trained_run), option, "nope"]))
    assert message == f"evaluate ({data}): no column 'nope' (columns: text, label); pass {option}"


# ---------------------------------------------------------------------------- models that are not what they seem

def bare_encoder(folder: Path) -> Path:
    """A pretrained-looking folder without a classification head: a BertModel and its tokenizer, save_pretrained."""
    import transformers

    from bertcls.model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(["a small vocabulary for a bare encoder"])
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=37, pad_token_id=tokenizer.pad_token_id)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_predict_warns_once_about_a_head_that_was_never_trained(tmp_path, trained_run):
    folder = bare_encoder(tmp_path / "encoder")
    result = runner.invoke(app, ["predict", "--model", str(folder), "a small vocabulary"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("LABEL_")  # it still predicts, from a random head
    assert result.stderr == (f"warning: {folder}: its classification head was never trained (classifier.bias, classifier.weight "
                             f"not in the folder, so random); its predictions mean nothing until it is fine-tuned: bertcls train "
                             f"with model.name: {folder}\n")
    trained = runner.invoke(app, ["predict", "--model", str(trained_run / "model"), "great"])
    assert trained.exit_code == 0 and "warning" not in trained.stderr
    exported = runner.invoke(app, ["export", "--model", str(folder), "--output", str(tmp_path / "onnx")])  # it would lose the warning
    assert exported.exit_code == 2 and exported.stderr == (
        f"Error: {folder}: its classification head was never trained, so its export would predict at random; fine-tune it first "
        f"(bertcls train with model.name: {folder}); nothing was exported\n")
    assert not (tmp_path / "onnx").exists()


def test_a_model_folder_without_its_tokenizer_files_is_refused(tmp_path, trained_run, toy_data):
    """transformers reads a folder without tokenizer files as an empty vocabulary: every word unknown, one answer for all."""
    folder = tmp_path / "copied"
    shutil.copytree(trained_run / "model", folder, ignore=shutil.ignore_patterns("tokenizer*", "*.pt"))
    vocabulary = json.loads((folder / "config.json").read_text())["vocab_size"]
    reason = (f"its tokenizer knows 5 tokens and the model {vocabulary:,}, so its tokenizer files (tokenizer.json, or vocab.txt "
              "and the like) are missing or not the model's; copy them from the model it was trained from")
    for command in (["predict", "--model", str(folder), "great"], ["evaluate", str(toy_data["validation"]), "--model", str(folder)]):
        assert one_line_error(runner.invoke(app, command)) == f"{folder}: {reason}"
    config = make_config(tmp_path, toy_data, model={"name": str(folder)})
    assert one_line_error(runner.invoke(app, ["train", str(config)])) == f"model.name {str(folder)!r}: {reason}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_id_that_cannot_be_downloaded_is_said_plainly(monkeypatch, offline):
    import transformers
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from bertcls.config import ModelConfig
    from bertcls.model import load_model

    if not offline:  # as transformers fails after its retries when the network is down (never reach for it here)
        def unreachable(*args, **kwargs):
            try:
                raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
            except LocalEntryNotFoundError as exc:
                raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from exc

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", unreachable)
    with pytest.raises(ModelError) as error:
        load_model(ModelConfig(name="no-such-org/no-such-model"), {0: "a", 1: "b"}, 32)
    fix = ("not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, so it was not downloaded; give a local model folder, "
           "or unset HF_HUB_OFFLINE to download it") if offline else (
           "could not be downloaded from the Hugging Face hub (and is not in the local cache); check the network and the hub id, "
           "or give a local model folder (set HF_HUB_OFFLINE=1 to fail at once instead of retrying)")
    assert str(error.value) == f"model.name 'no-such-org/no-such-model': {fix}"


def test_the_hubs_retries_are_one_warning_not_a_dozen_lines(caplog):
    """What huggingface_hub logs while it retries an unreachable hub (its own words): one warning says it instead."""
    import logging

    from bertcls.model import _quiet_transformers

    _quiet_transformers()
    hub = logging.getLogger("huggingface_hub.utils._http")
    url = "https://huggingface.co/bert-base-uncased/resolve/main/config.json"
    with caplog.at_level(logging.WARNING), pytest.warns(BertclsWarning) as said:
        for attempt in range(1, 6):
            hub.warning(f"'[Errno -2] Name or service not known' thrown while requesting HEAD {url}")
            hub.warning(f"Retrying in {2 ** (attempt - 1)}s [Retry {attempt}/5].")
        hub.warning("something else the hub says")
    assert [str(w.message) for w in said] == ["the Hugging Face hub does not answer ([Errno -2] Name or service not known); "
                                              "retrying for about half a minute (set HF_HUB_OFFLINE=1 to fail at once)"]
    assert [r.getMessage() for r in caplog.records if r.name == hub.name] == ["something else the hub says"]


def test_an_onnx_folder_without_onnxruntime_says_how_to_install_it(tmp_path, monkeypatch):
    from bertcls.predict import ONNX_FILE

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / ONNX_FILE).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails, as when it is not installed
    message = one_line_error(runner.invoke(app, ["predict", "--model", str(folder), "hi"]))
    assert message == f'{folder} is an exported ONNX model, which needs onnxruntime; install it with: pip install -e ".[onnx]" in the bertcls repository'


# ---------------------------------------------------------------------------- TSV as pandas and the csv module write it

ODD_TEXTS = ["a\ttab inside", "a line\nbreak inside", 'say "hi" twice', '"opens a quote', "plain", "it's \"fine"]


def quoted_tsv(path: Path, writer: str) -> Path:
    rows = [(text, "positive" if i % 2 == 0 else "negative") for i, text in enumerate(ODD_TEXTS)]
    if writer == "pandas":
        import pandas as pd

        pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, sep="\t", index=False)
    else:
        write_csv(path, rows, delimiter="\t")
    return path


@pytest.mark.parametrize("writer", ["pandas", "csv"])
def test_a_csv_quoted_tsv_loads_intact_for_training_and_predict_file(tmp_path, writer):
    from bertcls.config import DataConfig
    from bertcls.data import read_split
    from bertcls.predict_file import read_chunks

    path = quoted_tsv(tmp_path / "train.tsv", writer)
    assert '"a\ttab inside"' in path.read_text()  # quoted, as these writers do
    split = read_split(str(path), DataConfig(train=str(path)), "train")
    assert split.texts == ODD_TEXTS
    assert [row["text"] for chunk in read_chunks(path) for row in chunk] == ODD_TEXTS


@pytest.mark.parametrize(("texts", "either"), [
    (['"opens a quote', 'it\'s "fine', '"quoted" and more', 'plain "x"'], False),
    # the quotes enclose rows, not one text; as one quoted text the lines would read whole too, which is said
    (['"opens a quote', "a row between", 'ends with a quote"', "after"], True),
])
def test_a_glue_style_tsv_keeps_its_quote_characters(tmp_path, texts, either):
    from bertcls.config import DataConfig
    from bertcls.data import read_split
    from bertcls.predict_file import read_chunks

    path = tmp_path / "glue.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)), encoding="utf-8")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert read_split(str(path), DataConfig(train=str(path)), "train").texts == texts
        assert [row["text"] for chunk in read_chunks(path) for row in chunk] == texts
    assert [str(w.message).split(":")[1] for w in said] == [" lines 2-4 read as 3 rows, GLUE-style (a quote is part of the text), though they also read as one row with a quoted text holding a tab and a line break; if the file is csv-quoted (pandas to_csv(sep=\"\\t\"), the csv module), save it as a csv file instead"] * 2 * either


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ('text\tlabel\n"a\tb"\t1\nplain\t0\n', True),
        ('text\tlabel\n"line one\nline two"\t1\n', True),
        ('text\tlabel\n"say ""hi"" twice"\t1\r\n', True),
        ('text\tlabel\nplain\t"1\t2"', True),  # no newline at the end
        ('text\tlabel\n"a"\t"1"\n', False),  # well-formed, but nothing in them needs quotes: GLUE-style, quotes are text
        ("text\tlabel\nplain\t1\n", False),
        ('text\tlabel\n"opens a quote\t1\nmore\t0\n', False),  # never closed
        ('text\tlabel\n"hello" he said\t1\n', False),  # text after the closing quote
        ('text\tlabel\nit\'s "fine\t1\n', False),  # a quote inside a text opens no field
        ('text\tlabel\n"a\tb"\t1\n"hello" he said\t0\n', False),  # one malformed field: the whole file is GLUE-style
        # GLUE-style texts, one opening with a quote and a later one ending with one: whole rows, not one text
        ('text\tlabel\n"opens a quote\t1\nmore\t0\nends with a quote"\t1\n', False),
        ('text\tlabel\n"opens a quote\t1\r\n\r\nends with a quote"\t1\r\n', False),
        ('text\tlabel\n"a text\nwith a line break"\t1\nplain\t0\n', True),
    ],
)
def test_a_tsv_is_csv_quoted_only_when_every_opening_quote_is_well_formed(text, quoted):
    expected = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    assert tsv.quoting_of(io.StringIO(text, newline="")) == expected


def test_a_tsv_that_reads_whole_either_way_is_read_glue_style_and_says_so(tmp_path):
    # csv-quoted, as the csv module writes `Subject:<TAB>invoice<LF>please fix my bill`: every line holds the header's
    # one tab, so it reads GLUE-style too (two rows, labels `invoice` and `billing`). Nothing tells them apart: say it.
    either = tmp_path / "either.tsv"
    either.write_text('text\tlabel\nplain\ttech\n"Subject:\tinvoice\nplease fix my bill"\tbilling\n', encoding="utf-8")
    with pytest.warns(BertclsWarning, match=r"either\.tsv: lines 3-4 read as 2 rows, GLUE-style .* save it as a csv file"):
        assert tsv.quoting(either) == csv.QUOTE_NONE
    # The quote opens the label column and closes the text one: as one row it would have one field too few.
    glue = tmp_path / "glue.tsv"
    glue.write_text('text\tlabel\nplain\t"1\nends with a quote"\t0\n', encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tsv.quoting(glue) == csv.QUOTE_NONE
