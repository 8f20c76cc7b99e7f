"""The command line: `bertcls train | predict | evaluate | export | serve`, and the one place errors become exit codes.

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so `--help`
and argument errors answer at once.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from enum import Enum
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
    checkpoint: Annotated[Path | None, typer.Argument(help="With --resume: the checkpoint folder to continue from (default: the newest in output_dir).", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=1 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run from its newest checkpoint (or CHECKPOINT).")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --resume: continue even though the config or training data changed.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run in output_dir (only the files bertcls wrote).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or log lines; errors still print.")] = False,
    debug: Debug = False,
) -> None:
    """Train a classifier as CONFIG says and write a run folder (config, log, model/, metrics).

    Ctrl-C (SIGINT) or SIGTERM stops after the current step with a resumable checkpoint;
    `bertcls train CONFIG --resume` continues exactly where it stopped.
    """
    from bertcls.config import load_config
    from bertcls.errors import ConfigError, Interrupted

    if checkpoint is not None and not resume:
        raise ConfigError(f"a second argument ({checkpoint}) is only taken with --resume: bertcls train CONFIG --resume RUN/checkpoint-N")
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over; pass only one")
    if force and not resume:
        raise ConfigError("--force only applies with --resume")
    cfg = load_config(config, set_ or [])
    from bertcls.train import train as run_training

    try:
        run = run_training(cfg, overwrite=overwrite, quiet=quiet, resume=checkpoint or resume, force=force)
    except Interrupted as exc:
        again = ["bertcls", "train", str(config), *(a for item in set_ or [] for a in ("--set", item)), "--resume"]
        if os.environ.get("RANK", "0") == "0":  # every process stops, the main one says so
            launcher = " (under the same launcher, with the same number of processes)" if "RANK" in os.environ else ""
            typer.echo(f"{exc}\nresume with: {shlex.join(again)}{launcher}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch: once, from the main process
        typer.echo(str(run))


@app.command()
@_error_boundary
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify; `-` reads one text per line from stdin.", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder, model folder or exported ONNX folder. Default: $BERTCLS_MODEL, else the newest finished run under ./runs.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Predict every row of a csv/tsv/jsonl file (any size, streamed).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="With --file: write the rows plus predictions here (csv/tsv/jsonl); default: JSON lines on stdout.")] = None,
    text_column: Annotated[str | None, typer.Option(help="With --file: the text column (default: the run's data.text_column, else `text`).")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="With --file: the second text column (default: the run's data.text_pair_column).")] = None,
    pair: Annotated[list[str] | None, typer.Option("--pair", help="Second segment for sentence-pair models, one per text.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Also give the K most probable labels with their scores.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line: text, label, score, probabilities.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (an exported ONNX folder always runs on the CPU)")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16; auto: the run's training precision where this device runs it natively, else fp32.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Say which model is used and which texts were truncated.")] = False,
    debug: Debug = False,
) -> None:
    """Print `label<TAB>score` for each text (or JSON lines with --json); with --file, write every row plus its prediction."""
    from bertcls import runs
    from bertcls.errors import DataError

    texts = list(texts or [])
    if file is not None and texts:
        raise DataError("give texts or --file, not both")
    if file is None and output is not None:
        raise DataError("--output goes with --file; for texts on the command line, redirect stdout")
    if texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin]
    if file is None and not texts:
        raise DataError("no texts given; pass texts as arguments, `-` to read one per line from stdin, or --file FILE")
    if pair and len(pair) != len(texts):
        raise DataError(f"--pair given {len(pair)} time(s) for {len(texts)} text(s); give one --pair per text")
    path, why = runs.find_model(model)
    if model is None or verbose:
        typer.echo(f"model: {path} ({why})", err=True)
    from bertcls.predict import load_predictor

    predictor = load_predictor(path, device=device, batch_size=batch_size, precision=precision)
    if verbose:
        typer.echo(f"engine: {predictor.engine}" + (f" | precision: {predictor.precision}" if hasattr(predictor, "precision") else ""), err=True)
    if file is not None:
        from bertcls.predict_file import predict_file

        saved = (runs.read_run_config(path) or {}).get("data") or {}
        rows = predict_file(predictor, file, output, text_column=text_column or saved.get("text_column", "text"),
                            pair_column=text_pair_column or saved.get("text_pair_column"), top_k=top_k)
        typer.echo(f"predicted {rows:,} rows" + (f" -> {output}" if output else ""), err=True)
        return
    for text, result in zip(texts, predictor.predict(texts, pair), strict=True):
        if verbose and result.truncated:
            typer.echo(f"note: text truncated to {predictor.max_length} tokens: {text[:60]!r}...", err=True)
        if as_json:
            typer.echo(json.dumps(result.record(text, top_k), ensure_ascii=False))
            continue
        if result.labels is not None and not top_k:  # multi-label: every label at or above the threshold
            best = [(label, result.probabilities[label]) for label in result.labels]
        else:
            best = result.top(top_k) if top_k else [(result.label, result.score)]
        typer.echo("\t".join(f"{label}\t{score:.4f}" for label, score in best))


@app.command()
@_error_boundary
def evaluate(
    data_file: Annotated[str, typer.Argument(help="A labelled csv/tsv/json/jsonl/parquet file.", show_default=False)],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run folder or model folder (default as for predict).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write metrics.json, predictions.csv and figures into this folder.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (default: the run's data.text_column, else `text`).")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column (default: the run's).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column (default: the run's data.label_column, else `label`).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    debug: Debug = False,
) -> None:
    """Score a labelled file with a trained model and print its metrics."""
    from bertcls import report, runs
    from bertcls.evaluate import evaluate_file

    path, why = runs.find_model(model)
    if model is None:
        typer.echo(f"model: {path} ({why})", err=True)
    evaluation = evaluate_file(path, data_file, text_column=text_column, text_pair_column=text_pair_column,
                               label_column=label_column, device=device, batch_size=batch_size)
    report.print_report(evaluation.metrics)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        written = report.write_report(output, evaluation)
        runs.write_json(output / runs.METRICS_FILE, evaluation.metrics)
        typer.echo(f"wrote {output}: {', '.join(p.name for p in written)}, {runs.METRICS_FILE}", err=True)


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
    from bertcls import runs
    from bertcls.export import FP32_TOLERANCE, export_onnx

    path, why = runs.find_model(model)
    if model is None:
        typer.echo(f"model: {path} ({why})", err=True)
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
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = True,
    debug: Debug = False,
) -> None:
    """Serve a model over HTTP: POST /predict (JSON), a page to try it at /, API docs at /docs, Prometheus /metrics.

    SIGTERM or Ctrl-C stops taking connections, answers the requests in flight and exits 0.
    """
    from bertcls import runs

    path, why = runs.find_model(model)
    typer.echo(f"model: {path} ({why})", err=True)
    from bertcls import serve as server  # raises a one-line error when the serve extra is missing

    options = server.ServeOptions(str(path), device=device, precision=precision, max_batch_size=max_batch_size,
                                  max_wait_ms=max_wait_ms, max_texts=max_texts, max_body_bytes=max_body_bytes)
    server.run(options, host=host, port=port, workers=workers, access_log=access_log)


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
