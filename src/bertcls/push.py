"""Pushing a finished run's model to the Hugging Face Hub: a run folder and a repo id in, a hub model repo out.

What goes up is RUN/model as `from_pretrained` reads it (config, weights, tokenizer: the files training wrote
there, as the run's record lists them) and its model card (bertcls's, or one of the user's own that training
kept). Left out, each named: any other file someone put in model/ (an evaluation's predictions.csv holds its
data set's texts), links, and the traced graph (bertcls-torchscript.pt), a second copy of the weights as
pickled TorchScript that only `bertcls predict` uses, which the hub's pickle scan would flag; `bertcls predict`
on the downloaded folder just starts a little slower without it. Hidden files (temporaries) are passed over.
`--dry-run` lists the very `Upload` that `push` sends.

bertcls's card goes up with its "How to use" naming the repo (`card.for_hub`) while the local file stays as
it is, so the files go up as one commit (`create_commit`) built from the folder, not `upload_folder`.
Offline, not logged in, or the hub out of reach: a one-line `HubError` saying what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bertcls import card, runs
from bertcls.errors import HubError, RunError, UsageError, first_line
from bertcls.runlock import pid_text, training_pid

LEFT_OUT = {runs.TORCHSCRIPT_FILE: "bertcls predict's traced graph, which from_pretrained does not use"}
FOREIGN = "not written by bertcls train; `hf upload` sends it, if it belongs on the hub"
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE
# Seconds to connect to the hub, and to wait for its next byte: huggingface_hub sets no limit, so a proxy or endpoint
# that takes the connection and never answers held `bertcls push` forever. Sending has none (uploads are large).
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 30.0, 60.0


@dataclass
class Upload:
    """What `bertcls push` sends: (path in the repo, local file) pairs; our card as rewritten for the hub."""

    run: Path
    repo_id: str
    files: list[tuple[str, Path]] = field(default_factory=list)
    card_text: bytes | None = None  # replaces README.md's content when the card is bertcls's
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path in model/, why)

    def sizes(self) -> list[tuple[str, int]]:
        """(path in the repo, bytes) of each file to upload, the card as it will be uploaded."""
        return [(name, len(self.card_text) if name == runs.CARD_FILE and self.card_text is not None else path.stat().st_size)
                for name, path in self.files]


def plan(run: Path, repo_id: str) -> Upload:
    """Check the run and the repo id, and list what would be pushed; nothing reaches the network."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"{repo_id!r} is not a hub repo id ({first_line(exc)}); write NAME or USER/NAME") from None
    run = Path(run)
    check_finished(run)
    upload = Upload(run, repo_id)
    folder = run / runs.MODEL_DIR
    written = set(runs.read_record(run)["files"])  # check_finished made sure there is a record
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or path.is_dir() and not path.is_symlink():
            continue
        why = "a link" if path.is_symlink() else LEFT_OUT.get(name)
        if why is None and name != runs.CARD_FILE and f"{runs.MODEL_DIR}/{name}" not in written:  # a card of one's own goes up
            why = FOREIGN
        if why:
            upload.left_out.append((name, why))
        else:
            upload.files.append((name, path))
    card_name = f"{runs.MODEL_DIR}/{runs.CARD_FILE}"
    if (folder / runs.CARD_FILE).is_file() and (runs.wrote(run, card_name) or runs.edited(run, card_name)):  # bertcls's, edited or not
        config = runs.read_run_config(run) or {}
        upload.card_text = card.for_hub((folder / runs.CARD_FILE).read_text(encoding="utf-8"), repo_id, config).encode("utf-8")
    return upload


def repo_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def check_finished(run: Path) -> None:
    if not run.is_dir():
        raise RunError(f"{run}: no such folder; give the run folder `bertcls train` wrote")
    pid = training_pid(run)  # first: a run in its first steps has no model/ yet
    if pid is not None:
        raise RunError(f"{run} is still training ({pid_text(pid)}); push it when it has finished")
    if (run / runs.SEARCH_FILE).is_file():  # `bertcls tune`'s folder: its runs are the trials
        raise RunError(f"{run} is a search (bertcls tune), not a run; push one of its runs: {run / 'best'} once trained from "
                       f"best.yaml, or a trial-N folder (bertcls runs {run} lists them)")
    if runs.read_record(run) is None:
        raise RunError(f"{run} is not a bertcls run folder (no {runs.MODEL_DIR}/ with a model); give the folder `bertcls train` wrote")
    if not (run / runs.MODEL_DIR / "config.json").is_file():
        if (run / runs.METRICS_FILE).is_file():  # finished: e.g. a search's losing trial (tune --keep best)
            raise RunError(f"{run} is a finished run whose {runs.MODEL_DIR}/ was removed; push another run, or train it again")
        raise RunError(f"{run} is an unfinished run that has saved no model yet; finish it with `{runs.how_to_finish(run)}`, then push")
    if not runs.is_finished(run):
        raise RunError(f"{run} is an unfinished run (no {runs.METRICS_FILE}); finish it with `bertcls train CONFIG --resume`, then push")
    try:
        json.loads((run / runs.METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{run / runs.METRICS_FILE}: unreadable ({first_line(exc)}), so the run did not finish as it should; "
                       "train it again, then push") from None
    for name in ("config.json", "tokenizer.json"):  # the weights are checked below; these would go up as they are
        file = run / runs.MODEL_DIR / name
        try:
            if file.is_file():
                json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"{file}: unreadable ({first_line(exc)}), not as training saved it; train the run again, or upload "
                           "a model you changed yourself with `hf upload`") from None
    if runs.best_model_step(run) is None:
        raise RunError(f"{run / runs.MODEL_DIR}: its weights are not those training saved (missing, cut short or changed since); "
                       "train the run again, or upload a model you changed yourself with `hf upload`")


def check_can_push() -> None:
    """Refuse, before anything is sent, when huggingface_hub is set offline or has no token to write with."""
    from huggingface_hub import constants, get_token

    # huggingface_hub reads HF_HUB_OFFLINE once, when imported; the variable may have been set since
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES:
        raise HubError("HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be reached; unset it to push "
                       "(or pass --dry-run to see what would be pushed)")
    if get_token() is None:
        raise HubError("not logged in to the Hugging Face Hub; run `hf auth login` (or set HF_TOKEN to a token that can write), then push again")


def push(upload: Upload, private: bool) -> str:
    """Create the repo if need be and commit the files to it (after `check_can_push`); the repo's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_session

    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=upload.card_text if name == runs.CARD_FILE and upload.card_text else str(path))
                  for name, path in upload.files]
    api = HfApi()
    session = get_session()  # the client huggingface_hub sends everything through
    timeout = session.timeout
    session.timeout = type(timeout)(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S, write=None, pool=CONNECT_TIMEOUT_S)
    try:
        url = api.create_repo(upload.repo_id, private=private, exist_ok=True)
        api.create_commit(upload.repo_id, operations, commit_message=f"bertcls push of {upload.run.name}")
    except Exception as exc:
        problem = hub_problem(exc, upload.repo_id)
        if problem is None:
            raise
        raise HubError(problem) from None
    finally:
        session.timeout = timeout
    return str(url)


def hub_problem(exc: BaseException, repo_id: str) -> str | None:
    """The one line for a hub failure the user can fix (offline, no connection, refused), or None for anything else."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be reached; unset it to push"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return (f"the Hugging Face Hub refused to let this token write to {repo_id} ({status}); log in with a token that can "
                    f"(`hf auth login`), or push to a repo of your own")
        return f"the Hugging Face Hub refused the push to {repo_id}: {first_line(exc)}"
    transport = {cls.__name__ for cls in type(exc).__mro__} & {"TransportError", "ConnectionError", "TimeoutError"}
    if transport:  # huggingface_hub's HTTP client's connection and timeout errors, whichever client it uses
        return f"cannot reach the Hugging Face Hub ({first_line(exc)}); check the connection (and HF_ENDPOINT if set), then push again"
    return None
