"""`bertcls push`: what would go to the hub (offline, with --dry-run), and the one-line refusals."""

import shutil

import pytest
from typer.testing import CliRunner

from bertcls import card, runs
from bertcls.cli import app
from conftest import assert_one_line_error

runner = CliRunner()


def test_push_dry_run_lists_what_from_pretrained_needs_and_the_card(trained_run):
    result = runner.invoke(app, ["push", str(trained_run), "me/tiny-sentiment", "--dry-run"])
    assert result.exit_code == 0, result.output
    folder = trained_run / runs.MODEL_DIR
    names = ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("would push 5 files (") and lines[0].endswith(f"from {folder} to https://huggingface.co/me/tiny-sentiment:")
    assert [line.split()[0] for line in lines[1:-1]] == names
    assert lines[-1] == f"left out: {runs.TORCHSCRIPT_FILE} (bertcls predict's traced graph, which from_pretrained does not use)"
    from bertcls.push import plan

    upload = plan(trained_run, "me/tiny-sentiment")
    assert dict(upload.sizes()) == {name: len(upload.card_text) if name == "README.md" else (folder / name).stat().st_size for name in names}
    assert result.stderr == ""
    hub_card = upload.card_text.decode()
    assert 'pipeline("text-classification", model="me/tiny-sentiment")' in hub_card and str(trained_run) not in hub_card
    assert "hf download me/tiny-sentiment --local-dir tiny-sentiment\nbertcls predict --model tiny-sentiment" in hub_card
    assert hub_card.partition(card.USAGE_HEADING)[0] == (folder / runs.CARD_FILE).read_text().partition(card.USAGE_HEADING)[0]


@pytest.mark.parametrize("case, message", [
    ("offline", "HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be reached; unset it to push (or pass --dry-run to see what would be pushed)"),
    ("unfinished", "is an unfinished run (no metrics.json); finish it with `bertcls train CONFIG --resume`, then push"),
    ("bad id", "'me/tiny--x' is not a hub repo id (Cannot have -- or .. in repo_id: 'me/tiny--x'.); write NAME or USER/NAME"),
    ("not a run", "is not a bertcls run folder (no model/ with a model); give the folder `bertcls train` wrote"),
])
def test_push_refuses_in_one_line(trained_run, tmp_path, case, message):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if case == "unfinished":
        (run / runs.METRICS_FILE).unlink()
    if case == "not a run":
        (run / runs.RECORD_FILE).unlink()
    repo = "me/tiny--x" if case == "bad id" else "me/tiny"
    assert_one_line_error(runner.invoke(app, ["push", str(run), repo]), message)


def test_push_without_a_token_or_a_connection_says_so(trained_run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    result = runner.invoke(app, ["push", str(trained_run), "me/tiny"])
    assert_one_line_error(result, "not logged in to the Hugging Face Hub; run `hf auth login` (or set HF_TOKEN to a token that can write), then push again")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, the connection is refused
    result = runner.invoke(app, ["push", str(trained_run), "me/tiny"])
    assert_one_line_error(result, "cannot reach the Hugging Face Hub ([Errno 111] Connection refused); check the connection "
                                  "(and HF_ENDPOINT if set), then push again")
