"""The command line: `bertcls train | predict | evaluate`, and the one place errors become exit codes.

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so `--help`
and argument errors answer at once.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer

from bertcls.errors import BertclsError

app = typer.Typer(
    name="bertcls",
    help="Fine-tune BERT-family text classifiers from a YAML config, then predict and evaluate with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")]


def _error_boundary(command):
    """Print a BertclsError as one line on stderr and exit 2; real bugs keep their traceback."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) or os.environ.get("BERTCLS_DEBUG") == "1"
        try:
            return command(*args, **kwargs)
        except BertclsError as exc:
            if debug:
                traceback.print_exc()
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@_error_boundary
def train(
    config: Annotated[Path, typer.Argument(help="The run's YAML config.", show_default=False)],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=1 (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run in output_dir (only the files bertcls wrote).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or log lines; errors still print.")] = False,
    debug: Debug = False,
) -> None:
    """Train a classifier as CONFIG says and write a run folder (config, log, model/, metrics)."""
    from bertcls.config import load_config

    cfg = load_config(config, set_ or [])
    from bertcls.train import train as run_training

    run = run_training(cfg, overwrite=overwrite, quiet=quiet)
    typer.echo(str(run))


@app.command()
@_error_boundary
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify; `-` reads one text per line from stdin.", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder or model folder. Default: $BERTCLS_MODEL, else the newest finished run under ./runs.")] = None,
    pair: Annotated[list[str] | None, typer.Option("--pair", help="Second segment for sentence-pair models, one per text.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line: text, label, score, probabilities.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16; auto: the run's training precision where this device runs it natively, else fp32.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Say which model is used and which texts were truncated.")] = False,
    debug: Debug = False,
) -> None:
    """Print `label<TAB>score` for each text (or JSON lines with --json)."""
    from bertcls import runs
    from bertcls.errors import DataError

    texts = list(texts or [])
    if texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin]
    if not texts:
        raise DataError("no texts given; pass texts as arguments, or `-` to read one per line from stdin")
    if pair and len(pair) != len(texts):
        raise DataError(f"--pair given {len(pair)} time(s) for {len(texts)} text(s); give one --pair per text")
    path, why = runs.find_model(model)
    if model is None or verbose:
        typer.echo(f"model: {path} ({why})", err=True)
    from bertcls.predict import Predictor

    predictor = Predictor.load(path, device=device, batch_size=batch_size, precision=precision)
    if verbose:
        typer.echo(f"precision: {predictor.precision}", err=True)
    for text, result in zip(texts, predictor.predict(texts, pair), strict=False):
        if verbose and result.truncated:
            typer.echo(f"note: text truncated to {predictor.max_length} tokens: {text[:60]!r}...", err=True)
        if as_json:
            typer.echo(json.dumps({"text": text, "label": result.label, "score": round(result.score, 6),
                                   "probabilities": {k: round(v, 6) for k, v in result.probabilities.items()}}, ensure_ascii=False))
        else:
            typer.echo(f"{result.label}\t{result.score:.4f}")


@app.command()
@_error_boundary
def evaluate(
    data_file: Annotated[str, typer.Argument(help="A labelled csv/tsv/json/jsonl/parquet file.", show_default=False)],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder or model folder (default as for predict).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write metrics.json into this folder.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (default: the run's data.text_column, else `text`).")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column (default: the run's).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column (default: the run's data.label_column, else `label`).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    debug: Debug = False,
) -> None:
    """Score a labelled file with a trained model and print its metrics."""
    from bertcls import runs
    from bertcls.evaluate import evaluate_file, format_report

    path, why = runs.find_model(model)
    if model is None:
        typer.echo(f"model: {path} ({why})", err=True)
    metrics = evaluate_file(path, data_file, text_column=text_column, text_pair_column=text_pair_column,
                            label_column=label_column, device=device, batch_size=batch_size)
    typer.echo(format_report(metrics))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        runs.write_json(output / runs.METRICS_FILE, metrics)
        typer.echo(f"wrote {output / runs.METRICS_FILE}", err=True)


def _version(value: bool) -> None:
    if value:
        from bertcls import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False) -> None:
    pass


def main() -> None:
    app()
