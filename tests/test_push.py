"""`bertcls push`: what would go to the hub (offline, with --dry-run), and the one-line refusals."""

import os
import shutil

import pytest
from typer.testing import CliRunner

from bertcls import atomic, card, runs
from bertcls.cli import app
from bertcls.push import FOREIGN, LEFT_OUT
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
    ("a search", "is a search (bertcls tune), not a run; push one of its runs:"),
    ("no model yet", "is an unfinished run that has saved no model yet; finish it with `bertcls train CONFIG --resume`, then push"),
    ("model removed", "is a finished run whose model/ was removed; push another run, or train it again"),
    ("weights cut short", "model: its weights are not those training saved (missing, cut short or changed since); train the run again, "
                          "or upload a model you changed yourself with `hf upload`"),
    ("no weights", "model: its weights are not those training saved"),
    ("tokenizer cut short", "model/tokenizer.json: unreadable ("),
    ("metrics cut short", "metrics.json: unreadable (Expecting value: line 1 column 1 (char 0)), so the run did not finish as it should; "
                          "train it again, then push"),
])
def test_push_refuses_in_one_line(trained_run, tmp_path, case, message):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if case == "unfinished":
        (run / runs.METRICS_FILE).unlink()
    if case == "not a run":
        (run / runs.RECORD_FILE).unlink()
    if case == "a search":
        (run / runs.SEARCH_FILE).write_text("{}")
    if case in ("no model yet", "model removed"):  # stopped before its first evaluation (a checkpoint), or tune --keep best
        shutil.rmtree(run / runs.MODEL_DIR)
    if case == "no model yet":
        (run / runs.METRICS_FILE).unlink()
        (run / "checkpoint-3").mkdir()
        (run / "checkpoint-3" / runs.CHECKPOINT_STATE).write_text("{}")
    weights = run / runs.MODEL_DIR / "model.safetensors"
    if case == "weights cut short":
        weights.write_bytes(weights.read_bytes()[:1000])
    if case == "no weights":
        weights.unlink()
    if case == "tokenizer cut short":
        tokenizer = run / runs.MODEL_DIR / "tokenizer.json"
        tokenizer.write_bytes(tokenizer.read_bytes()[:4000])
    if case == "metrics cut short":
        (run / runs.METRICS_FILE).write_text("")
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


def test_push_to_an_endpoint_that_never_answers_gives_up(trained_run, tmp_path, monkeypatch):
    # a proxy or endpoint that takes the connection and sends nothing held push forever
    import socket

    from huggingface_hub import constants

    from bertcls import push

    server = socket.create_server(("127.0.0.1", 0))  # connections queue in its backlog, never answered
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(push, "READ_TIMEOUT_S", 0.5)
    with server:
        result = runner.invoke(app, ["push", str(trained_run), "me/tiny"])
    assert_one_line_error(result, "cannot reach the Hugging Face Hub (timed out); check the connection (and HF_ENDPOINT if set), then push again")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A stand-in for the hub that records the paths each commit sends (online, with a token)."""
    import huggingface_hub
    from huggingface_hub import constants

    sent: list[str] = []

    class Api:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            return f"https://huggingface.co/{repo_id}"

        def create_commit(self, repo_id, operations, commit_message):
            sent.extend(operation.path_in_repo for operation in operations)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return sent


def test_files_someone_put_in_model_stay_behind_and_dry_run_says_what_push_sends(trained_run, tmp_path, hub):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / runs.MODEL_DIR / "predictions.csv").write_text("text,gold\na test text of the user's,positive\n")  # evaluate --output RUN/model
    (run / runs.MODEL_DIR / "NOTES.md").write_text("my notes\n")
    dry = runner.invoke(app, ["push", str(run), "me/tiny", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    names = ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("would push 5 files (") and [line.split()[0] for line in lines[1:6]] == names
    assert lines[6:] == [f"left out: NOTES.md ({FOREIGN})", f"left out: {runs.TORCHSCRIPT_FILE} ({LEFT_OUT[runs.TORCHSCRIPT_FILE]})",
                         f"left out: predictions.csv ({FOREIGN})"]
    pushed = runner.invoke(app, ["push", str(run), "me/tiny"])
    assert pushed.exit_code == 0, pushed.output
    assert hub == names and f"left out: predictions.csv ({FOREIGN})" in pushed.stderr.splitlines()


def test_a_card_of_the_users_own_goes_up_as_it_is(trained_run, tmp_path, hub):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    record = runs.read_record(run)  # as when training found the user's card there and kept it
    atomic.write_json(run / runs.RECORD_FILE, {**record, "files": [f for f in record["files"] if f != f"{runs.MODEL_DIR}/{runs.CARD_FILE}"]})
    (run / runs.MODEL_DIR / runs.CARD_FILE).write_text("my own card\n")
    result = runner.invoke(app, ["push", str(run), "me/tiny"])
    assert result.exit_code == 0, result.output
    assert hub == ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert f"note: {run / runs.MODEL_DIR} holds no model card of bertcls's; the repo shows its README.md as it is, if any" in result.stderr


def test_a_run_in_its_first_steps_is_still_training_not_foreign(tmp_path):
    from bertcls import runlock

    run = tmp_path / "run"
    run.mkdir()
    runs.record_files(run, runs.CONFIG_FILE)
    with runlock.locked(run):  # as train holds it before its first model is saved
        result = runner.invoke(app, ["push", str(run), "me/tiny", "--dry-run"])
    assert_one_line_error(result, f"{run} is still training (pid {os.getpid()}); push it when it has finished")
