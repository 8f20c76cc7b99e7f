"""The command line: `bertcls train | tune | check | predict | evaluate | export | serve | push | runs`, and the one place errors become exit codes:

    0    done
    1    a bug (with its traceback), or `check --strict` found leakage or conflicts
    2    bad input: a one-line `Error: ...` (BertclsError), or misused options
    130  stopped by SIGINT (Ctrl-C); 143 by SIGTERM: training says how to resume, tune how to go on

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so `--help`
and argument errors answer at once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer

from bertcls import __version__, atomic, distributed, machine, runs
from bertcls.errors import (
    BertclsError,
    BertclsWarning,
    Interrupted,
    StoppedWithAnother,
    Terminated,
    UsageError,
    WriteError,
    causes,
    checked_by_every_process,
)
from bertcls.predict_file import check_output, predict_file


class _OneLineUsageErrors(typer.core.TyperGroup):
    """A command's options and arguments refused by click itself (a value of the wrong type or choice, an unknown
    option, a missing argument), said as bertcls says every error: one line, exit 2, not typer's boxed usage."""

    def make_context(self, info_name, args, parent=None, **extra):  # bertcls's own options: `bertcls --bogus`
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except Exception as exc:
            _say_usage_error(exc, info_name or "bertcls")

    def invoke(self, ctx):  # a command's: `bertcls predict --batch-size many`
        try:
            return super().invoke(ctx)
        except Exception as exc:
            _say_usage_error(exc, f"{ctx.command_path} {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ctx.command_path)

    # typer shows `--help <bool>`, as if it took a value, in bertcls's help and each command's: shown as a flag (FLAG)
    def get_help_option(self, ctx):
        return _as_flag(super().get_help_option(ctx))

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _as_flag(command.get_help_option(ctx))  # made once a command, then kept: the help it prints uses it
        return command


def _as_flag(option):
    if option is not None:
        option.metavar = FLAG
    return option


def _say_usage_error(exc: Exception, command: str) -> None:
    """Raise `exc` again unless it is click's UsageError (by name: typer ships its own copy of click, typer._click, and
    older typers use click's), which becomes `Error: <its message> (see COMMAND --help)` and exit 2."""
    usage = any(kind.__name__ == "UsageError" for kind in type(exc).__mro__) and not isinstance(exc, BertclsError)
    if not usage or type(exc).__name__ == "NoArgsIsHelpError":  # the command's help, which typer prints
        raise exc
    where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else command
    typer.echo(f"Error: {exc.format_message().replace('Value error, ', '').rstrip('.')} (see {where} --help)", err=True)
    raise typer.Exit(EXIT_BAD_INPUT) from None


app = typer.Typer(
    name="bertcls",
    help="Fine-tune BERT-family text classifiers from a YAML config, then predict and evaluate with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineUsageErrors,
)

FLAG = ""  # a flag's metavar: typer would show `<bool>`, as if it took a value (`--json true` would read "true" as a text)
Debug = Annotated[bool, typer.Option("--debug", metavar=FLAG, help="Show the full traceback of an error.")]
EXIT_FINDINGS, EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
EXIT_SIGPIPE = 141  # what a shell reports for a program that SIGPIPE ends: its reader went away (`| head`)


def _error_boundary(command):
    """Print a BertclsError as one line on stderr and exit 2, and so an OSError in which the file system
    refused a named file (disk full, read-only, ...); real bugs keep their traceback."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) or os.environ.get("BERTCLS_DEBUG") == "1"
        try:
            return command(*args, **kwargs)
        except BertclsError as exc:
            _fail(exc, debug)
        except OSError as exc:
            if exc.errno not in atomic.WRITE_ERRNOS or exc.filename is None:
                raise  # not the file system refusing a file: a bug
            _fail(atomic.write_error(Path(os.fsdecode(exc.filename)), exc.errno, writing=False), debug)
        except EOFError as exc:  # click would print a bare "Aborted." for it: keep the traceback of this bug
            raise RuntimeError("an EOFError escaped: a file or stream ended early") from exc
        except Interrupted as exc:
            if distributed.is_main_process():  # every process stops, the main one says so
                typer.echo(f"{exc}\n{exc.hint}" if exc.hint else str(exc), err=True)
            raise typer.Exit(exc.exit_code) from None
        except Terminated:
            typer.echo("Terminated.", err=True)
            raise typer.Exit(EXIT_SIGTERM) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(EXIT_SIGINT) from None
        except Exception as exc:
            if not _interrupted(exc):
                raise
            terminated = _interrupted(exc, Terminated)
            typer.echo("Terminated." if terminated else "Interrupted.", err=True)
            raise typer.Exit(EXIT_SIGTERM if terminated else EXIT_SIGINT) from None

    return wrapper


def _interrupted(exc: BaseException | None, kind: type[BaseException] = KeyboardInterrupt) -> bool:
    """Whether Ctrl-C (or SIGTERM: `kind` Terminated) caused `exc`: transformers' lazy imports turn a KeyboardInterrupt
    during an import into an error of theirs."""
    return any(isinstance(cause, kind) for cause in causes(exc))


def _fail(exc: BertclsError, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    # StoppedWithAnother: stopping with another process, which says why; a mistake every process meets: the first on each
    # machine says it (any other error may be this process's own, so it says it)
    if not isinstance(exc, StoppedWithAnother) and not (exc.every_process and distributed.local_follower()):
        typer.echo(f"Error: {exc}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
@_error_boundary
def train(
    config: Annotated[Path, typer.Argument(help="The run's YAML config.", show_default=False)],
    checkpoint: Annotated[Path | None, typer.Argument(help="With --resume: the checkpoint folder to continue from (default: the newest in output_dir).", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=1 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", metavar=FLAG, help="Continue an unfinished run from its newest checkpoint (or CHECKPOINT).")] = False,
    force: Annotated[bool, typer.Option("--force", metavar=FLAG, help="With --resume: continue even though the config or training data changed (not from a checkpoint past the new schedule's end, nor on other training texts with model tiny).")] = False,
    overwrite: Annotated[bool, typer.Option(metavar=FLAG, help="Replace a finished run in output_dir (only the files bertcls recorded writing).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar=FLAG, help="No progress bar or log lines; errors still print.")] = False,
    debug: Debug = False,
) -> None:
    """Train a classifier as CONFIG says and write a run folder (config, log, model/, metrics).

    Ctrl-C (SIGINT) or SIGTERM stops after the current step with a resumable checkpoint;
    `bertcls train CONFIG --resume` continues exactly where it stopped.
    """
    from bertcls.config import load_config, model_name_warning

    with checked_by_every_process():
        if checkpoint is not None and not resume:
            raise UsageError(_stray_argument(checkpoint, set_ or []))
        if resume and overwrite:
            raise UsageError("--resume continues a run and --overwrite starts it over; pass only one")
        if force and not resume:
            raise UsageError("--force only applies with --resume")
        cfg = load_config(config, set_ or [])
    if distributed.is_main_process() and (warning := model_name_warning(cfg)):  # once, from the main process
        typer.echo(f"warning: {warning}", err=True)
    from bertcls.train import train as run_training

    command = ["bertcls", "train", str(config), *(a for item in set_ or [] for a in ("--set", item))]
    again = [*command, "--resume"]
    launcher = " (under the same launcher, with the same number of processes)" if distributed.launched() else ""
    try:
        with atomic.writing(Path(cfg.output_dir)):
            run = run_training(cfg, overwrite=overwrite, quiet=quiet, resume=checkpoint or resume, force=force, config_file=config)
    except WriteError as exc:  # the checkpoint written before the disk filled up is complete: say how to go on from it
        if exc.code not in atomic.FIXABLE_IN_PLACE:
            raise
        then = (f"then resume with: {shlex.join(again)}{launcher}" if runs.checkpoints(cfg.output_dir) else  # none to resume: start over
                f"then start over with: {shlex.join([*command, '--overwrite'])}" if (Path(cfg.output_dir) / runs.MODEL_DIR).exists() else "then train again")
        raise WriteError(f"{exc}, {then}", exc.code) from exc
    except Interrupted as exc:
        exc.hint = f"resume with: {shlex.join(again)}{launcher}"
        raise
    if distributed.is_main_process():  # under torchrun / accelerate launch: once, from the main process
        try:
            typer.echo(str(run))
        except BrokenPipeError:  # its reader has gone (`| head`), as the loop's lines found: the run is finished all the same
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (it lasts as long as the process)


class Keep(str, Enum):
    best = "best"
    all = "all"


@app.command()
@_error_boundary
def tune(
    config: Annotated[Path, typer.Argument(help="The run's YAML config, with a `tune:` section saying what to search.", show_default=False)],
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Trials in the study, completed and pruned ones counted (default: tune.trials).", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="Start no new trial after this many seconds.", show_default=False)] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="An RDB URL (postgresql://..., mysql+pymysql://...) that workers on many machines share; default: OUTPUT_DIR/study.db (SQLite).", show_default=False)] = None,
    study: Annotated[str | None, typer.Option("--study", help="The study's name (default: the output folder's name).", show_default=False)] = None,
    report: Annotated[bool, typer.Option("--report", metavar=FLAG, help="Write best.yaml, trials.csv and the figures from the study as it stands; train nothing.")] = False,
    keep: Annotated[Keep | None, typer.Option("--keep", help="At the end, keep the model/ of the best trial only (best), or of every trial (all); default: best.", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set tune.trials=40 (repeatable).")] = None,
    debug: Debug = False,
) -> None:
    """Search hyperparameters as CONFIG's `tune:` section says: each trial an ordinary run folder OUTPUT_DIR/trial-N.

    Running the same command again continues the study to its trial count; so does a second
    worker (here or, with --storage, on another machine). At the end: OUTPUT_DIR/best.yaml, ready
    for `bertcls train`, trials.csv and figures/.
    """
    from bertcls.config import load_config, model_name_warning

    if report and (timeout is not None or keep is not None):
        raise UsageError("--report trains nothing; --timeout and --keep apply to a search")
    cfg = load_config(config, set_ or [])
    from bertcls import tune as tune_mod  # raises a one-line error when the tune extra is missing

    options = tune_mod.Options(trials=trials, timeout=timeout, storage=storage, study=study, keep=(keep or Keep.best).value)
    if report:
        tune_mod.report(cfg, options)
        return
    if warning := model_name_warning(cfg):
        typer.echo(f"warning: {warning}", err=True)
    again = ["bertcls", "tune", str(config), *(a for item in set_ or [] for a in ("--set", item)),
             *(["--storage", tune_mod.redacted(storage)] if storage else []), *(["--study", study] if study else []), *(["--trials", str(trials)] if trials else [])]
    try:
        folder = tune_mod.search(cfg, options, config_file=config)
    except Interrupted as exc:
        exc.hint = f"{exc.hint}continue the search with: {shlex.join(again)}"
        raise
    typer.echo(str(folder))


def _stray_argument(argument: Path, overrides: list[str]) -> str:
    """The message for a second argument without --resume: most often the value of `--set KEY VALUE`."""
    bare = [item for item in overrides if "=" not in item]
    if bare:
        return f"--set {bare[-1]} {argument}: write --set {bare[-1]}={argument}, with `=` and no spaces"
    if re.fullmatch(r"[A-Za-z_][\w.]*=.*", str(argument)):
        return f"{argument}: a setting is given with --set: bertcls train CONFIG --set {argument}"
    return f"a second argument ({argument}) is only taken with --resume: bertcls train CONFIG --resume RUN/checkpoint-N"


def _chosen_model(model: Path | None, say: bool) -> Path:
    """The model --model names (else $BERTCLS_MODEL, else the newest finished run), saying which when `say`, and
    noting a run that is still training or did not finish: its model is the best so far, not the run's last word."""
    path, why = runs.find_model(model)
    if say:
        typer.echo(f"model: {path} ({why})", err=True)
    if note := runs.model_note(path):
        typer.echo(note, err=True)
    return path


@app.command()
@_error_boundary
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify; `-` reads one text per line from stdin.", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder, model folder or exported ONNX folder. Default: $BERTCLS_MODEL, else the newest finished run under ./runs.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Predict every row of a csv/tsv/jsonl file (any size, streamed).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="With --file: write the rows plus predictions here (csv/tsv/jsonl); default: JSON lines on stdout.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar=FLAG, help="With --output: replace an existing file (never one of a run's own files).")] = False,
    text_column: Annotated[str | None, typer.Option(help="With --file: the text column (default: the run's data.text_column, else `text`).")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="With --file: the second text column (default: the run's data.text_pair_column).")] = None,
    pair: Annotated[list[str] | None, typer.Option("--pair", help="Second segment for sentence-pair models, one per text.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Also give the K most probable labels with their scores.")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar=FLAG, help="One JSON object per line: text, label, score, probabilities.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (an exported ONNX folder always runs on the CPU)")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16; auto: the run's training precision where this device runs it natively, else fp32.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar=FLAG, help="Say which model is used and which texts were truncated (or how many were read by head and tail, or in windows).")] = False,
    debug: Debug = False,
) -> None:
    """Print `label<TAB>score` for each text (or JSON lines with --json); with --file, write every row plus its prediction."""
    machine.check_device(device, "--device")
    machine.check_precision(precision, "--precision")
    texts = _texts_to_predict(texts, file, output, pair, {"text_column": text_column, "text_pair_column": text_pair_column}, as_json)
    if overwrite and output is None:
        raise UsageError("--overwrite goes with --output: it lets --output replace an existing file")
    path = _chosen_model(model, say=model is None or verbose)
    if output is not None:  # before the model loads; predict_file checks again as it starts writing
        check_output(file, output, overwrite=overwrite, model=path)
    from bertcls.predict import load_predictor

    few_texts = file is None and len(texts) <= batch_size  # one forward pass: start-up counts, not throughput
    predictor = load_predictor(path, device=device, batch_size=batch_size, precision=precision, few_texts=few_texts)
    if verbose:
        typer.echo(predictor.describe(), err=True)
    if file is None:
        predictor.check_pairing(bool(pair), "--pair")
        with _to_stdout():
            _print_predictions(predictor, texts, pair, top_k, as_json, verbose)
        return
    columns = runs.run_columns(path, text_column=text_column, text_pair_column=text_pair_column)
    predictor.check_pairing(columns["text_pair_column"] is not None, "--text-pair-column")
    over: list[int] = []
    with _to_stdout() if output is None else nullcontext():
        rows = predict_file(predictor, file, output, text_column=columns["text_column"], pair_column=columns["text_pair_column"],
                            top_k=top_k, overwrite=overwrite, over=over, label_separator=columns["label_separator"])
    typer.echo(f"predicted {rows:,} row{'' if rows == 1 else 's'}" + (f" -> {output}" if output else ""), err=True)
    if verbose and over:
        from bertcls.longtext import READS

        shown = ", ".join(map(str, over[:10])) + (", ..." if len(over) > 10 else "")
        typer.echo(f"note: {len(over):,} of {rows:,} texts over max_length {predictor.max_length} tokens "
                   f"{READS[predictor.long_text.mode]} (data rows {shown})", err=True)


@contextmanager
def _to_stdout() -> Iterator[None]:
    """Turn standard output refusing a write (a full disk, /dev/full) into one line; what is left unwritten is dropped,
    so that Python's exit does not fail on it again."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno not in atomic.WRITE_ERRNOS:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise UsageError(f"standard output: {os.strerror(exc.errno)}; free space where it goes, or redirect it elsewhere") from None


def _texts_to_predict(texts: list[str] | None, file: Path | None, output: Path | None, pair: list[str] | None,
                      columns: dict[str, str | None], as_json: bool) -> list[str]:
    """The texts given on the command line (`-`: one per line from stdin), checked against the options given with them
    (`columns`: --text-column and --text-pair-column as given)."""
    texts = list(texts or [])
    if file is not None and texts:
        raise UsageError("give texts or --file, not both")
    if file is None and output is not None:
        raise UsageError("--output goes with --file; for texts on the command line, redirect stdout")
    if file is not None and pair:
        raise UsageError("--pair goes with texts on the command line; with --file, name the column of second texts with --text-pair-column")
    if file is None and (given := [option for option, value in columns.items() if value is not None]):
        raise UsageError(f"--{given[0].replace('_', '-')} goes with --file; texts on the command line are the texts themselves")
    if output is not None and as_json:
        raise UsageError("--json goes with texts on the command line or stdout; --output writes the format its extension names "
                         "(.jsonl for JSON lines)")
    if "-" in texts and len(texts) > 1:
        raise UsageError("`-` reads the texts from stdin, one per line; give it alone, or give the texts as arguments")
    if texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        if not texts:
            raise UsageError("stdin is empty; `-` reads one text per line from it, so pipe the texts in (or pass them as arguments)")
        texts[0] = texts[0].removeprefix("\ufeff")  # a byte-order mark (Windows editors, PowerShell pipes) is no part of the text
    if file is None and not texts:
        raise UsageError("no texts given; pass texts as arguments, `-` to read one per line from stdin, or --file FILE")
    if pair and len(pair) != len(texts):
        raise UsageError(f"--pair given {len(pair)} time(s) for {len(texts)} text(s); give one --pair per text")
    return texts


def _print_predictions(predictor, texts: list[str], pair: list[str] | None, top_k: int | None, as_json: bool, verbose: bool) -> None:
    """`label<TAB>score` per text (a multi-label model: every label at or above its threshold), or JSON records.
    --verbose notes each truncated text, or in one line how many texts were read by head and tail, or in windows."""
    from bertcls import longtext

    results = predictor.predict(texts, pair)
    note = verbose and longtext.verbose_note(predictor.long_text, predictor.max_length, [r.truncated for r in results],
                                             [r.windows for r in results], [r.beyond_windows for r in results])
    if note:
        typer.echo(note, err=True)
    for i, (text, result) in enumerate(zip(texts, results, strict=True)):
        if verbose and result.truncated and predictor.long_text.mode == "truncate":
            typer.echo(_truncation_note(text, pair[i] if pair else None, predictor.max_length), err=True)
        if as_json:
            typer.echo(json.dumps(result.record(text, top_k), ensure_ascii=False))
            continue
        if result.labels is not None and not top_k:
            best = [(label, result.probabilities[label]) for label in result.labels]
        else:
            best = result.top(top_k) if top_k else [(result.label, result.score)]
        typer.echo("\t".join(f"{label}\t{score:.4f}" for label, score in best))


def _truncation_note(text: str, pair: str | None, max_length: int) -> str:
    """--verbose's line on a text (or a text and its pair, which share max_length) cut to max_length tokens."""
    if pair is None:
        return f"note: text truncated to {max_length} tokens: {text[:60]!r}..."
    quoted = [f"{part[:60]!r}" + ("..." if len(part) > 60 else "") for part in (text, pair)]
    return f"note: text pair truncated to {max_length} tokens together: {quoted[0]} with pair {quoted[1]}"


@app.command()
@_error_boundary
def evaluate(
    data_file: Annotated[str, typer.Argument(help="A labelled csv/tsv/json/jsonl/parquet file.", show_default=False)],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder, model folder or exported ONNX folder (default as for predict).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write metrics.json, predictions.csv and figures into this folder (outside any run folder; no file there is replaced).")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (default: the run's data.text_column, else `text`).")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column (default: the run's).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column (default: the run's data.label_column, else `label`).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16; auto: as for predict.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar=FLAG, help="Say which model, engine, device and precision are used.")] = False,
    debug: Debug = False,
) -> None:
    """Score a labelled file with a trained model and print its metrics."""
    from bertcls import report
    from bertcls.evaluate import absent_note, evaluate_file

    machine.check_device(device, "--device")
    machine.check_precision(precision, "--precision")
    if output is not None:
        atomic.check_folder_path(output, "--output")
    path = _chosen_model(model, say=model is None or verbose)
    if output is not None:
        runs.check_outside_runs(output, path, "eval")
        runs.check_evaluation_output(output, (runs.METRICS_FILE, *report.REPORT_FILES))
    # The files go in all together or not at all, none replacing another's; a folder that cannot be written fails first.
    with atomic.writing(output) if output else nullcontext(), atomic.filling(output, "--output") if output else nullcontext() as folder:
        evaluation = evaluate_file(path, data_file, text_column=text_column, text_pair_column=text_pair_column,
                                   label_column=label_column, device=device, batch_size=batch_size, precision=precision,
                                   say=(lambda line: typer.echo(line, err=True)) if verbose else None)
        if folder is not None:
            written = report.write_report(folder, evaluation)
            atomic.write_json(folder / runs.METRICS_FILE, {**evaluation.metrics, "scored_with": evaluation.scored_with})
    # printed once the files are in place: a reader that goes away (`| head`) leaves them whole
    report.print_report(evaluation.metrics, multi_label=evaluation.multi_label)
    if note := absent_note(evaluation.metrics, data_file):
        typer.echo(note, err=True)
    if output is not None:
        typer.echo(f"wrote {output}: {', '.join(p.name for p in written)}, {runs.METRICS_FILE}", err=True)


@app.command()
@_error_boundary
def check(
    config: Annotated[Path, typer.Argument(help="The run's YAML config: its data, tokenizer and max_length are checked.", show_default=False)],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set data.train=other.csv (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar=FLAG, help="Print the report as one JSON object instead.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write every finding as CSV (and summary.json) into this folder.")] = None,
    label_issues: Annotated[int, typer.Option("--label-issues", min=0, help="Show this many likely label errors (cleanlab); 0 skips the search.")] = 10,
    strict: Annotated[bool, typer.Option("--strict", metavar=FLAG, help="Exit 1 when validation/test texts leak from train or train labels conflict (for CI).")] = False,
    debug: Debug = False,
) -> None:
    """Report on the data CONFIG would train on, without training: labels, token lengths, duplicates, conflicts, leakage, a baseline, label errors."""
    from bertcls import check as check_mod
    from bertcls.config import load_config

    cfg = load_config(config, set_ or [])
    if output is not None:
        check_mod.prepare_output(output, check_mod.input_files(cfg.data), Path(cfg.output_dir))
    report = check_mod.check(cfg, label_issues=label_issues)
    if output is not None:
        written = check_mod.write_tables(report, output)
        typer.echo(f"wrote {output}: {', '.join(p.name for p in written)}", err=True)
    if as_json:
        typer.echo(json.dumps(report.summary, ensure_ascii=False))
    else:
        check_mod.print_report(report)
    if strict and report.problems:
        typer.echo(f"--strict: {'; '.join(report.problems)}", err=True)
        raise typer.Exit(EXIT_FINDINGS)


class ExportFormat(str, Enum):
    onnx = "onnx"


class Quantization(str, Enum):
    int8 = "int8"


@app.command()
@_error_boundary
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the exported model.", show_default=False)],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder or model folder (default as for predict).")] = None,
    format_: Annotated[ExportFormat, typer.Option("--format", help="Export format.")] = ExportFormat.onnx,
    quantize: Annotated[Quantization | None, typer.Option(help="Dynamic int8 quantization of the weights (smaller, faster on CPU).")] = None,
    debug: Debug = False,
) -> None:
    """Export a trained model to ONNX; `bertcls predict --model OUTPUT` then runs it without torch."""
    from bertcls.export import FP32_TOLERANCE, export_onnx

    path = _chosen_model(model, say=model is None)
    with atomic.writing(output):
        result = export_onnx(path, output, quantize.value if quantize else None)
    diff = result["max_abs_logit_diff"]
    typer.echo(f"wrote {output} ({'int8' if quantize else 'fp32'}); largest logit difference from PyTorch on check texts: {diff:.2e}", err=True)
    if not quantize and diff > FP32_TOLERANCE:
        typer.echo(f"warning: above the expected {FP32_TOLERANCE:g}; compare predictions before relying on the export", err=True)
    typer.echo(str(output))


@app.command()
@_error_boundary
def serve(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder, model folder or exported ONNX folder (default as for predict).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Texts per batch: requests arriving together are merged up to this (1: no merging).")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, max=10_000, help="How long a batch's first request waits for others to join it.")] = 5.0,
    max_texts: Annotated[int, typer.Option(min=1, help="Texts allowed in one request.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted.")] = 1 << 20,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each with its own copy of the model.")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (an exported ONNX folder always runs on the CPU)")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16, as for predict.")] = "auto",
    access_log: Annotated[bool, typer.Option(metavar=FLAG, help="Log one line per request.")] = True,
    debug: Debug = False,
) -> None:
    """Serve a model over HTTP: POST /predict (JSON), a page to try it at /, API docs at /docs, Prometheus /metrics.

    SIGTERM or Ctrl-C stops taking connections, answers the requests in flight and exits 0.
    """
    path = _chosen_model(model, say=True)
    from bertcls import serve as server  # raises a one-line error when the serve extra is missing

    options = server.ServeOptions(str(path), device=device, precision=precision, max_batch_size=max_batch_size,
                                  max_wait_ms=max_wait_ms, max_texts=max_texts, max_body_bytes=max_body_bytes)
    server.run(options, host=host, port=port, workers=workers, access_log=access_log)


@app.command()
@_error_boundary
def push(
    run: Annotated[Path, typer.Argument(help="A finished run folder.", show_default=False)],
    repo_id: Annotated[str, typer.Argument(help="The hub model repo: NAME or USER/NAME (created if it does not exist).", show_default=False)],
    private: Annotated[bool, typer.Option("--private", metavar=FLAG, help="Create the repo private (an existing repo keeps its visibility).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar=FLAG, help="List the files that would be pushed, and their sizes; push nothing.")] = False,
    debug: Debug = False,
) -> None:
    """Push RUN's model (what from_pretrained needs, and its model card) to a Hugging Face Hub model repo."""
    from bertcls import push as pusher  # through the manifest, importlib.metadata: start-up time the other commands need not pay

    upload = pusher.plan(run, repo_id)
    sizes = upload.sizes()
    total = f"{len(sizes)} files ({_size(sum(size for _, size in sizes))}) from {run / runs.MODEL_DIR} to {pusher.repo_url(repo_id)}"
    if dry_run:
        typer.echo(f"would push {total}{' (private)' if private else ''}:")
        width = max((len(name) for name, _ in sizes), default=0)
        for name, size in sizes:
            typer.echo(f"  {name:<{width}}  {_size(size):>9}")
    else:
        pusher.check_can_push()
        url = pusher.push(upload, private)
        typer.echo(f"pushed {total}", err=True)
    for name, why in upload.left_out:
        typer.echo(f"left out: {name} ({why})", err=not dry_run)
    if upload.card_text is None:
        typer.echo(f"note: {run / runs.MODEL_DIR} holds no model card of bertcls's; the repo shows its README.md as it is, if any", err=True)
    if not dry_run:
        typer.echo(url)


def _size(size: float) -> str:
    """Bytes as people read them: 852 B, 441.4 kB, 1.3 GB."""
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


@app.command("runs")
@_error_boundary
def list_runs(
    folder: Annotated[Path, typer.Argument(help="The folder whose subfolders are runs (or one run folder).")] = Path(runs.DEFAULT_RUNS_ROOT),
    sort: Annotated[str | None, typer.Option("--sort", help="name, date, a validation metric (f1_macro, accuracy, loss, ...) or test.METRIC. "
                                              "Default: the metric the runs were chosen on (metric_for_best), best first.")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar=FLAG, help="Print the rows as a JSON list, with every scalar metric.")] = False,
    debug: Debug = False,
) -> None:
    """Compare the runs in FOLDER: status (and where an unfinished one stopped), model, best epoch, metrics, train time, date."""
    from bertcls import compare  # through the manifest, importlib.metadata: start-up time

    rows = compare.list_runs(folder)
    if sort is not None:
        compare.check_sort_key(rows, sort)
    key = sort or compare.default_metric(rows)
    rows = compare.sort_rows(rows, key)
    if as_json:
        typer.echo(compare.rows_json(rows))
    elif not rows:
        typer.echo(f"no runs in {folder}", err=True)
    else:
        compare.print_table(rows, key if key not in compare.SORT_KEYS else compare.default_metric(rows))


def _version(value: bool) -> None:
    if value:

        typer.echo(__version__)
        raise typer.Exit()


_show_other_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one line, `warning: <message>`, on stderr; other libraries' as Python shows them."""
    if issubclass(category, BertclsWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _show_other_warning(message, category, filename, lineno, file, line)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar=FLAG, help="Print the version.")] = False) -> None:
    warnings.showwarning = _show_warning  # before any command runs


_MAIN_PID = os.getpid()
_TERMINATED: list[bool] = []  # set once SIGTERM arrived: where Python drops the exception (a garbage-collector callback), the end says so


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() != _MAIN_PID:  # a forked worker (cleanlab's pool) that inherited the handler: end as SIGTERM ends it
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _TERMINATED.append(True)
    raise Terminated


def main() -> None:
    # SIGTERM by default ends the process at once, leaving its temporaries; train, tune and serve put their own
    # handlers in place while they run (stop at the next step, answer what is in flight).
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except SystemExit as exc:
        # the reader of standard output went away (`bertcls check CONFIG | head`): click (and rich's console) exit 1 then,
        # which `check --strict` gives to findings; end as a program that SIGPIPE ends does, without a word
        if exc.code == 1 and isinstance(exc.__context__, BrokenPipeError):
            raise SystemExit(EXIT_SIGPIPE) from None
        if _TERMINATED and exc.code in (0, None):
            typer.echo("Terminated.", err=True)
            raise SystemExit(EXIT_SIGTERM) from None
        raise
