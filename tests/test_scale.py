"""Scale and hostile inputs: many labels, YAML alias bombs, very long texts, and local data kept out
of shared caches. Each check asserts what stays small (files, messages) rather than timing anything."""

import pytest
from typer.testing import CliRunner

from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import ConfigError

runner = CliRunner()


# ---------------------------------------------------------------------------- YAML alias bombs, echoed values

LAUGHS = "".join(f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'lol'] * 9)}]\n"
                 for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True))


@pytest.mark.parametrize("uses", ["seed: *i\ndata: {train: a.csv}\n", "data: {train: a.csv, text_column: *i}\n",
                                  "data: {train: a.csv}\ntraining: {class_weights: {a: *i}}\n"])
def test_a_billion_laughs_config_is_refused_at_once(tmp_path, uses):
    (tmp_path / "c.yaml").write_text(LAUGHS + uses, encoding="utf-8")  # 9 ** 9 = 387,420,489 values written out
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert str(err.value) == (f"{tmp_path / 'c.yaml'}: its aliases (*name) repeat more than 10,000 values "
                              '(nested aliases, a "billion laughs"?); write the values out instead')


def test_hostile_set_values_and_recursive_aliases_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data: {train: a.csv}\n", encoding="utf-8")
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcd", "bcde", strict=True)]
    result = runner.invoke(app, ["train", "c.yaml", "--set", f"seed=[{', '.join(levels)}]"])
    assert result.exit_code == 2 and result.output == ('Error: --set seed: its aliases (*name) repeat more than 10,000 values '
                                                       '(nested aliases, a "billion laughs"?); write the values out instead\n')
    (tmp_path / "r.yaml").write_text("data: {train: a.csv}\nseed: &s [1, *s]\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "r.yaml"])
    assert result.output == "Error: r.yaml: an alias (*name) refers to the value it is part of; a config cannot be recursive\n"


def test_a_config_with_a_few_anchors_still_loads(tmp_path):
    text = "data:\n  train: &f d.csv\n  validation: *f\n  test: *f\ntraining: {epochs: &n 2, early_stopping_patience: *n}\n"
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.validation == cfg.data.test == str(tmp_path / "d.csv") and cfg.training.early_stopping_patience == 2


def test_echoed_values_and_listed_problems_are_capped(tmp_path):
    unknown = "".join(f"  key{i}: 1\n" for i in range(30))
    (tmp_path / "c.yaml").write_text(f"data: {{train: a.csv}}\ntraining:\n{unknown}", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", ["seed=" + "x" * 100_000])
    message = str(err.value)
    assert message.startswith("seed: input should be a valid integer (got 'xxx") and "...x" in message
    assert message.endswith("; ... and 21 more problem(s)") and message.count("unknown key") == 9 and len(message) < 5000
