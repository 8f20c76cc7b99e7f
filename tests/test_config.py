from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bertcls.cli import app
from bertcls.config import TrainingConfig, load_config, load_yaml, parse_override
from bertcls.errors import ConfigError
from conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  train: data/train.csv\noutput_dir: out\n"))
    assert cfg.data.train == str(tmp_path / "data" / "train.csv")
    assert cfg.output_dir == str(tmp_path / "out")
    assert cfg.model.name == "tiny"
    assert cfg.training.learning_rate == 5e-5


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: {train: a.csv}\ntraining: {lr: 0.1}\n", "training.lr: unknown key (did you mean 'learning_rate'?)"),
        ("data: {train: a.csv, text_colum: x}\n", "data.text_colum: unknown key (did you mean 'text_column'?)"),
        ("data: {train: a.csv}\nmodle: {name: tiny}\n", "modle: unknown key (did you mean 'model'?)"),
        ("data: {train: a.csv}\ntraining: {epochs: '3'}\n", "training.epochs: input should be a valid integer"),
        ("data: {train: a.csv}\ntraining: {batch_size: 0}\n", "training.batch_size: input should be greater than or equal to 1"),
        ("data: {train: a.csv}\ntraining: {learning_rate: 5}\n", "training.learning_rate: input should be less than or equal to 1"),
        ("data: {train: a.csv}\ntraining: {device: gpu}\n", "training.device"),
        ("data: {train: a.csv}\ntraining: {metric_for_best: f2}\n", "training.metric_for_best"),
        ("data: {train: a.csv, validation_split: 1.5}\n", "data.validation_split"),
        ("training: {epochs: 1}\n", "data: required key is missing"),
        ("data: {train: a.csv, text_column: t, text_pair_column: t}\n", "data.text_pair_column must differ"),
        ("data: {train: a.csv}\ntraining: {report_to: [neptune]}\n", "training.report_to.0: input should be 'tensorboard', 'mlflow', "),
        ("data: {train: a.csv}\ntraining: {report_to: [mlflow, tensorboard, mlflow]}\n", "training.report_to: mlflow is listed more than once"),
        ("data: {train: a.csv}\ntraining: {max_steps: 0}\n", "training.max_steps: input should be greater than or equal to 1"),
        ("data: {train: a.csv}\ntraining: {eval_every_steps: 0}\n", "training.eval_every_steps: input should be greater than or equal to 1"),
        ("data: {train: a.csv}\ntraining: {threshold: 0.9}\n", "training.threshold only applies with data.task: multi_label"),
        ("data: {train: a.csv}\ntraining: {tune_threshold: true}\n", "training.tune_threshold only applies with data.task: multi_label"),
        ("data: {train: a.csv, label_separator: '|'}\n", "data.label_separator only applies with data.task: multi_label"),
        ("data: {train: a.csv, task: multi_label}\ntraining: {tune_threshold: true, threshold: 0.3}\n",
         "training.threshold=0.3 is not used with training.tune_threshold: true, which picks the threshold on validation; set one of them"),
        ("data: {train: a.csv, text_column: off}\n", 'data.text_column: input should be a valid string (got False); YAML reads yes/no, '
         'on/off and true/false as booleans: quote a text that YAML would read otherwise, e.g. --set \'data.text_column="off"\', '
         'or text_column: "off" in the file'),
        ("data: {train: a.csv, label_column: 007}\n", 'data.label_column: input should be a valid string (got 7); YAML reads an unquoted '
         'number as a number: quote a text that YAML would read otherwise, e.g. --set \'data.label_column="007"\', or label_column: "007"'),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_gives_line_and_column(tmp_path):
    path = write(tmp_path, "data:\n  train: a.csv\nseed: [1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4:1: invalid YAML"):
        load_config(path)


def test_a_key_written_twice_is_refused_but_a_merge_may_override(tmp_path):
    path = write(tmp_path, "data: {train: a.csv}\ntraining:\n  epochs: 1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'epochs' is written twice in one section \(lines 3 and 4\), and only the last"):
        load_config(path)
    merged = write(tmp_path, "base: &base {epochs: 1, batch_size: 8}\ndata: {train: a.csv}\ntraining:\n  <<: *base\n  epochs: 3\n")
    assert load_yaml(merged.read_text(), "c.yaml")["training"] == {"epochs": 3, "batch_size": 8}


@pytest.mark.parametrize("text, message", [("", "the config is empty"), ("- a\n- b\n", "top level must be a mapping")])
def test_empty_or_non_mapping(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"^{tmp_path}: a folder, not a config file; give the YAML file, e.g. {tmp_path}/config.yaml$"):
        load_config(tmp_path)


def test_a_section_with_every_key_commented_out_takes_overrides(tmp_path):
    path = write(tmp_path, "data: {train: a.csv}\ntraining:\n#  epochs: 3\n")
    assert load_config(path, ["training.max_steps=1"]).training.max_steps == 1
    assert load_config(path).training == TrainingConfig()  # without overrides: the defaults


def test_overrides_are_typed_like_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "data: {train: a.csv}\n")
    cfg = load_config(path, ["training.epochs=1", "training.learning_rate=1e-4", "model.name=tiny", "output_dir=elsewhere"])
    assert cfg.training.epochs == 1 and cfg.training.learning_rate == 1e-4
    assert cfg.output_dir == str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="training.epochs: input should be a valid integer"):
        load_config(path, ["training.epochs=one"])
    with pytest.raises(ConfigError, match="training.epoch: unknown key \\(did you mean 'epochs'\\?\\)"):
        load_config(path, ["training.epoch=1"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="^--set training.epochs: no value; write --set training.epochs=VALUE, with `=` and no spaces$"):
        parse_override("training.epochs")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("=1")


def test_yaml_1_1_exponent_without_dot_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "data: {train: a.csv}\ntraining: {learning_rate: 5e-5}\n"))
    assert cfg.training.learning_rate == pytest.approx(5e-5)


def test_hub_ids_stay_hub_ids(tmp_path):
    cfg = load_config(write(tmp_path, "data: {train: a.csv}\nmodel: {name: bert-base-uncased}\n"))
    assert cfg.model.name == "bert-base-uncased"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert load_config(path).data.train


@pytest.mark.parametrize("given, trackers", [("tensorboard", ["tensorboard"]), ("[mlflow, tensorboard]", ["mlflow", "tensorboard"]),
                                             ("null", []), ("[]", [])])
def test_report_to_takes_one_tracker_or_a_list(tmp_path, given, trackers):
    assert load_config(write(tmp_path, f"data: {{train: a.csv}}\ntraining: {{report_to: {given}}}\n")).training.report_to == trackers


def test_a_mapping_given_with_set_merges_into_its_section_and_its_paths_are_from_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    path = tmp_path / "conf" / "c.yaml"
    path.write_text("data: {train: a.csv, validation: b.csv, text_column: body, max_length: 64}\n"
                    "training: {class_weights: balanced}\n", encoding="utf-8")
    cfg = load_config(path, ["data={train: ../x.csv, max_train_samples: 200}", "training={class_weights: {pos: 2}}"])
    assert cfg.data.train == str(tmp_path / "x.csv")  # from the current folder, as --set data.train=../x.csv
    assert (cfg.data.validation, cfg.data.text_column, cfg.data.max_length, cfg.data.max_train_samples) == \
        (str(tmp_path / "conf" / "b.csv"), "body", 64, 200)  # the file's other data keys are kept
    assert cfg.training.class_weights == {"pos": 2.0}  # a mapping replaces a value that is not one
    dotted = load_config(path, ["data.train=../x.csv", "data.max_train_samples=200", "training.class_weights={pos: 2}"])
    assert cfg.to_dict() == dotted.to_dict()
    # the run's saved config reads the same from the run folder
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    assert load_config(saved).to_dict() == cfg.to_dict()


def test_a_mapping_given_with_set_for_a_key_that_is_no_section_replaces_the_files(tmp_path):
    config = write(tmp_path, "data: {train: a.csv}\ntraining: {class_weights: {positive: 5}}\n"
                             "tune: {space: {training.epochs: [1, 2]}}\n")
    cfg = load_config(config, ["training.class_weights={negative: 2}", "tune.space={training.learning_rate: [1.0e-4, 1.0e-3]}"])
    assert cfg.training.class_weights == {"negative": 2.0}
    assert list(cfg.tune.space) == ["training.learning_rate"]


@pytest.mark.parametrize("weight, shown", [(".inf", "inf"), ("-1", "-1"), (".nan", "nan"), ("0", "0")])
def test_a_weight_that_is_no_finite_number_above_0_is_refused(tmp_path, weight, shown):
    config = write(tmp_path, "data: {train: a.csv}\n")
    result = CliRunner().invoke(app, ["check", str(config), "--set", f"training.class_weights={{positive: {weight}}}"])
    assert_one_line_error(result, f"Error: training.class_weights.positive: a weight must be a finite number above 0 (got {shown}); "
                                  "to train without a label, remove its rows")


@pytest.mark.parametrize("file, override, got, typed", [
    ("training: {class_weights: {yes: 3}}\n", None, "True", "yes"),
    ("", "training.class_weights={true: 3}", "True", "true"),
    ("training: {class_weights: {Off: 3}}\n", None, "False", "Off"),
])
def test_a_label_that_yaml_reads_as_a_boolean_says_to_quote_it(tmp_path, file, override, got, typed):
    config = write(tmp_path, "data: {train: a.csv}\n" + file)
    result = CliRunner().invoke(app, ["check", str(config), *(["--set", override] if override else [])])
    example = f'{{"{typed}": 3}}'
    assert_one_line_error(result, f"Error: training.class_weights: the key {got} is no label text; YAML reads "
                                  "yes/no, on/off and true/false as booleans: quote a label that YAML would read otherwise, e.g. "
                                  f"class_weights: {example} in the file, or --set 'training.class_weights={example}'")
    assert load_config(config, [f"training.class_weights={example}"]).training.class_weights == {typed: 3.0}


@pytest.mark.parametrize("file, override, message", [
    ("training: {class_weights: {01: 3}}\n", None, 'the key 01 is read by YAML as the number 1, the label \'1\'; to name the label 01, quote it: "01"'),
    ("", "training.class_weights={010: 3}", 'the key 010 is read by YAML as the number 8, the label \'8\'; to name the label 010, quote it: "010"'),
    ("training:\n  class_weights:\n    1: 2\n    '1': 3\n", None, "the keys 1 and '1' both name the label '1'; keep one"),
])
def test_class_weight_keys_that_yaml_reads_as_another_label_are_refused(tmp_path, file, override, message):
    config = write(tmp_path, "data: {train: a.csv}\n" + file)
    result = CliRunner().invoke(app, ["check", str(config), *(["--set", override] if override else [])])
    assert_one_line_error(result, f"Error: training.class_weights: {message}")
    assert load_config(config, ['training.class_weights={"01": 3, "1": 2}']).training.class_weights == {"01": 3.0, "1": 2.0}


def test_tune_threshold_with_the_default_threshold_loads(tmp_path):
    """A saved config holds every key, threshold 0.5 too: a run that tuned its threshold must load again (resume, tune)."""
    cfg = load_config(write(tmp_path, "data: {train: a.csv, task: multi_label}\ntraining: {tune_threshold: true, threshold: 0.5}\n"))
    assert cfg.training.tune_threshold and cfg.training.threshold == 0.5


@pytest.mark.parametrize("override, got, reading, text", [
    ("data.text_column=no", "False", "YAML reads yes/no, on/off and true/false as booleans", "no"),
    ("data.label_column=yes", "True", "YAML reads yes/no, on/off and true/false as booleans", "yes"),
    ("data.text_pair_column=2024", "2024", "YAML reads an unquoted number as a number", "2024"),
    ("data.label_separator=1.5", "1.5", "YAML reads an unquoted number as a number", "1.5"),
    ("model.name=~", "None", "YAML reads null, ~ and an empty value as null", "~"),
    ("model.name=", "None", "YAML reads null, ~ and an empty value as null", "null"),
    ("data.text_column=0x1F", "31", "YAML reads an unquoted number as a number", "0x1F"),  # what was typed, not 31
    ("data.text_column=2024-01-01", "the date 2024-01-01", "YAML reads an unquoted date as a date", "2024-01-01"),
])
def test_a_text_that_yaml_reads_as_another_type_says_to_quote_it(tmp_path, override, got, reading, text):
    config = write(tmp_path, "data: {train: a.csv}\n")
    key = override.partition("=")[0]
    result = CliRunner().invoke(app, ["check", str(config), "--set", override])
    assert_one_line_error(result, f"Error: {key}: input should be a valid string (got {got}); {reading}: quote a text that YAML "
                                  f"would read otherwise, e.g. --set '{key}=\"{text}\"', or {key.split('.')[-1]}: \"{text}\" in the file")
    assert load_config(config, [f'{key}="{text}"', *(["data.task=multi_label"] if key == "data.label_separator" else [])])


@pytest.mark.parametrize("text, overrides", [
    ("data:\n  train: a.csv\n  task: multi_label\n  label_separator: |\n", []),
    ("data: {train: a.csv, task: multi_label}\n", ["data.label_separator=|"]),
    ("data: {train: a.csv, task: multi_label}\n", ["data.label_separator= >"]),
])
def test_a_bare_block_indicator_says_to_quote_it(tmp_path, text, overrides):
    """YAML reads a bare | or > as an empty block of text: the error says so, with the quoted form that works."""
    mark = (overrides[0].partition("=")[2] if overrides else "|").strip()
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert str(err.value) == (f"data.label_separator: string should have at least 1 character (got ''); YAML reads a bare {mark} as the "
                              f"start of a block of text, here an empty one: quote it, e.g. --set 'data.label_separator=\"{mark}\"', or "
                              f"label_separator: \"{mark}\" in the file")
    assert load_config(write(tmp_path, text.replace("label_separator: |", "")), [f'data.label_separator="{mark}"']).data.label_separator == mark


def test_a_separator_holding_a_line_break_is_refused(tmp_path):
    """A YAML block with content (`label_separator: |` then an indented `|`) is "|\\n", which would join every row's labels into one."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  train: a.csv\n  task: multi_label\n  label_separator: |\n    |\n"))
    assert str(err.value) == ("data.label_separator: '|\\n' holds a line break, which no row's labels are separated by; quote the "
                              'separator on one line, e.g. label_separator: "|"')


def test_the_quoting_hint_quotes_what_the_last_setting_typed(tmp_path):
    config = write(tmp_path, "data: {train: a.csv, text_column: 007, label_column: off}\n")
    with pytest.raises(ConfigError) as err:  # a mapping --set merges: text_column is still the file's 007
        load_config(config, ["data={label_column: 010}"])
    assert 'text_column: "007" in the file' in str(err.value) and 'label_column: "010" in the file' in str(err.value)
    with pytest.raises(ConfigError) as err:  # a --set that replaces a value replaces what was typed for it
        load_config(config, ["data.text_column=", "data.label_column=text"])
    assert str(err.value).endswith('text_column: "null" in the file')


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("training: {epochs: 1:30}\n", [], "training.epochs: YAML reads 1:30 as the number 90; write it in decimal"),  # base 60
    ("", ["seed=017"], "seed: YAML reads 017 as the number 15; write it in decimal"),  # octal
    ("", ["training.class_weights={a: 0x10}"], "training.class_weights.a: YAML reads 0x10 as the number 16; write it in decimal"),
])
def test_a_number_yaml_reads_in_another_base_is_refused(tmp_path, text, overrides, message):
    (tmp_path / "c.yaml").write_text("data: {train: a.csv}\n" + text)
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "c.yaml", overrides)
    assert str(refused.value) == message


def test_decimal_numbers_in_any_yaml_form_are_taken(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {train: a.csv}\nseed: 0\ntraining: {epochs: 1_000, learning_rate: 1.0e-3}\n")
    config = load_config(tmp_path / "c.yaml")
    assert (config.seed, config.training.epochs, config.training.learning_rate) == (0, 1000, 0.001)
