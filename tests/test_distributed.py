"""Many processes: two-process CPU runs (gloo) under torchrun, sharding of our batch samplers, refusals."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from bertcls import runs
from bertcls.cli import app
from bertcls.config import TrainingConfig, load_config
from bertcls.data import LengthGroupedBatches, sorted_batches
from bertcls.distributed import check_launch
from bertcls.errors import ConfigError
from bertcls.train import train
from conftest import assert_same_run, make_config, toy_rows, wait_for, write_csv

TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "bertcls", *args]


def _torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun_cmd(nproc, *args), cwd=cwd, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)


def _evaluate(run: Path, data: Path, batch_size: int) -> dict:
    out = run.parent / f"eval-{data.stem}"
    result = CliRunner().invoke(app, ["evaluate", str(data), "--model", str(run), "--output", str(out), "--batch-size", str(batch_size), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    assert metrics.pop("scored_with")["device"] == "cpu"  # the rest, as training's metrics.json holds them
    return metrics


# One thread per process: the test machines are small and shared, and oversubscribed threads
# make a tiny model ten times slower.
TRAINING = {"epochs": 6, "eval_batch_size": 8, "num_threads": 1}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Per-device batch 8 on 2 processes; 61 validation and 67 test rows in batches of 8, so the
    last batch is short and the test set has an odd number of batches (one process runs out first)."""
    folder = tmp_path_factory.mktemp("ddp")
    data = {
        "train": write_csv(folder / "train.csv", toy_rows(240, 0)),
        "validation": write_csv(folder / "validation.csv", toy_rows(61, 1)),
        "test": write_csv(folder / "test.csv", toy_rows(67, 2)),
    }
    # a whole run (loss curve, traced graph): each file is the main process's to write, once
    config = make_config(folder, data, training={**TRAINING, "batch_size": 8, "report_to": ["tensorboard"], "loss_curve": True,
                                                 "save_torchscript": True})
    result = _torchrun(2, "train", str(config), cwd=folder)
    return folder, data, result


@pytest.mark.slow  # in CI's second pass: the two-process run they share takes about 20 s
def test_two_processes_train_and_write_one_run_folder_once(two_process_run):
    folder, _, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    run = folder / "run"
    assert result.stdout.splitlines() == [str(run)]  # printed by the main process only
    assert result.stderr.count("effective batch 16") == 1  # 8 per device x 2 processes; logged once
    names = {p.name for p in run.iterdir()}
    assert set(runs.RUN_FILES) <= names and not [n for n in names if n.startswith(".")]  # no stray temp files
    log = [json.loads(line) for line in (run / runs.LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("split") == "validation"] == [1, 2, 3, 4, 5, 6]  # one writer
    # TensorBoard too: the main process's writer alone, each step once
    assert result.stderr.count("tensorboard logs to") == 1 and len(list((run / runs.TENSORBOARD_DIR).rglob("*tfevents*"))) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / runs.TENSORBOARD_DIR))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in log if "split" not in r]
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert metrics["train"]["optimizer_steps"] == 6 * 15  # 240 rows / (8 x 2) per step
    assert metrics["validation"]["num_examples"] == 61 and metrics["test"]["num_examples"] == 67


@pytest.mark.slow  # in CI's second pass: the two-process run they share takes about 20 s
def test_two_process_metrics_equal_a_single_process_evaluation_of_the_checkpoint(two_process_run):
    # Same batches (eval batch 8, length-sorted) in one process: the same counts and the same scores, up to
    # float rounding (a batch padded to another length moves a logit by about 1e-9); a padded duplicate or a
    # lost row would show in the counts.
    folder, data, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((folder / "run" / runs.METRICS_FILE).read_text())
    # The best epoch is not the last: test metrics also show that every process scored the
    # test set with the best weights, which only the main process read from disk.
    assert metrics["best_epoch"] < 6
    assert_same_scores(_evaluate(folder / "run", data["validation"], 8), metrics["validation"])
    assert_same_scores(_evaluate(folder / "run", data["test"], 8), metrics["test"])


def assert_same_scores(got, want) -> None:
    """Equal counts, labels and structure; floats equal up to rounding."""
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same_scores(got[key], want[key])
    elif isinstance(want, list):
        for a, b in zip(got, want, strict=True):
            assert_same_scores(a, b)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
    else:
        assert got == want


@pytest.mark.slow  # in CI's second pass: the two-process run they share takes about 20 s
def test_two_processes_with_batch_b_learn_like_one_process_with_batch_2b(two_process_run, tmp_path):
    # Same effective batch, steps and schedule, but not the same run: the batches of 8 are grouped
    # by length differently from batches of 16, and each process draws the same dropout masks.
    # Both must learn the toy task (>= 0.9) and land within 0.1 accuracy (6 of 60 test rows).
    folder, data, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((folder / "run" / runs.METRICS_FILE).read_text())
    one_run = train(load_config(make_config(tmp_path, data, training={**TRAINING, "batch_size": 16})), quiet=True)
    one = json.loads((one_run / runs.METRICS_FILE).read_text())
    assert one["train"]["optimizer_steps"] == two["train"]["optimizer_steps"]
    for split in ("validation", "test"):
        assert two[split]["accuracy"] >= 0.9 and one[split]["accuracy"] >= 0.9, (split, two[split]["accuracy"], one[split]["accuracy"])
        assert abs(two[split]["accuracy"] - one[split]["accuracy"]) <= 0.1


@pytest.mark.slow  # in CI's second pass: several launches of two processes each
def test_accelerate_launch_runs_the_same_config_the_same_way(two_process_run):
    # `accelerate launch --multi_gpu` is Accelerate's torchrun-based launcher (on a CPU, too):
    # same config, seed and process count as the torchrun run, so the same metrics on the CPU.
    folder, _, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "bertcls", "train", str(folder / "config.yaml"), "--set", f"output_dir={folder / 'accelerate'}"]
    launched = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.splitlines() == [str(folder / "accelerate")]
    torchrun_metrics = json.loads((folder / "run" / runs.METRICS_FILE).read_text())
    accelerate_metrics = json.loads((folder / "accelerate" / runs.METRICS_FILE).read_text())
    for key in ("best_epoch", "validation", "test"):
        assert accelerate_metrics[key] == torchrun_metrics[key], key


def _kill_launch(launch: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (which run in sessions of their own), torchrun first: it
    would otherwise stop or restart the workers."""
    try:
        processes = [psutil.Process(launch.pid), *psutil.Process(launch.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes[1:], timeout=30)
    launch.wait()


@pytest.mark.slow  # in CI's second pass: several launches of two processes each
def test_two_processes_stopped_resumed_killed_and_resumed_end_like_the_uninterrupted_run(two_process_run, tmp_path, request):
    # torchrun forwards a SIGTERM to every worker, and they may see it at different steps; here
    # only rank 1 gets it, the extreme case: both must stop after the same step and rank 0 write
    # one checkpoint. Then a resume under torchrun is SIGKILLed (torchrun and workers) after a
    # mid-epoch checkpoint and resumed again. Each process restores its own random states
    # (dropout), loss window and place in its shard of the batches: the end is the uninterrupted
    # two-process run's, to the bit.
    folder, _, reference = two_process_run
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    train_args = ["train", str(folder / "config.yaml"), "-q", "--set", f"output_dir={run}", "--set", "training.save_every_steps=7"]

    def launch(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(_torchrun_cmd(2, *train_args, *extra), cwd=tmp_path, env=TORCHRUN_ENV,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.txt", "w"), text=True)

    stopped = launch()
    request.addfinalizer(lambda: _kill_launch(stopped))  # a hang (processes that disagree) must not outlive the test
    wait_for(lambda: (run / runs.LOG_FILE).is_file() and (run / runs.LOG_FILE).stat().st_size > 0, stopped, "the first logged step")
    [rank1] = [p for p in psutil.Process(stopped.pid).children() if p.environ().get("RANK") == "1"]
    rank1.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) != 0
    stderr = (tmp_path / "stderr.txt").read_text()
    [checkpoint] = runs.checkpoints(run)  # keep_checkpoints=1, and never 7 steps in before the first log line at 5
    step = json.loads((checkpoint / runs.CHECKPOINT_STATE).read_text())["global_step"]
    assert stderr.count(f"stopped by SIGTERM after step {step}; resumable checkpoint: {checkpoint}") == 1, stderr[-3000:]
    assert sorted(p.name for p in checkpoint.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert json.loads((run / runs.LOG_FILE).read_text().splitlines()[-1])["step"] <= step

    killed = launch("--resume")
    request.addfinalizer(lambda: _kill_launch(killed))
    newer = lambda: [c for c in runs.checkpoints(run) if int(c.name.removeprefix(runs.CHECKPOINT_PREFIX)) > step]  # noqa: E731
    wait_for(newer, killed, "a checkpoint after the resume")
    _kill_launch(killed)
    assert not (run / runs.METRICS_FILE).exists()
    assert json.loads((runs.checkpoints(run)[-1] / runs.CHECKPOINT_STATE).read_text())["batches_done"] > 0  # mid-epoch

    done = _torchrun(2, *train_args, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, folder / "run")


@pytest.mark.slow  # in CI's second pass: a two-process launch that fails at its first checkpoint, about 10 s
def test_a_write_the_main_process_fails_stops_every_process_with_one_error_line(two_process_run, tmp_path):
    """The main process writes the run folder while the others wait: its disk error reaches them, and they stop without
    a word, rather than wait at a barrier it never reaches (gloo's 'Connection closed by peer' traceback; a hang on GPUs)."""
    folder, _, reference = two_process_run
    assert reference.returncode == 0, reference.stderr[-3000:]
    weights = (folder / "run" / runs.MODEL_DIR / "model.safetensors").stat().st_size
    limit = weights * 3 // 2  # model/ fits; the checkpoint's optimizer state (twice the weights) does not

    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run = tmp_path / "run"
    failed = subprocess.run(_torchrun_cmd(2, "train", str(folder / "config.yaml"), "--set", f"output_dir={run}"), cwd=tmp_path,
                            env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if "Error: " in line and "ChildFailedError" not in line]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {run / 'checkpoint-'}") and "File too large" in errors[0], failed.stderr
    assert "[rank1]" not in failed.stderr and "Connection closed" not in failed.stderr, failed.stderr[-3000:]


@pytest.mark.slow  # in CI's second pass: a two-process launch that fails at its third step, about 10 s
def test_a_process_out_of_memory_mid_training_and_the_one_waiting_for_it_each_say_one_line(two_process_run, tmp_path):
    """Process 1 runs out of memory in a step (see fail_on_one_process.py) and says so; process 0, waiting for it in the
    next step's all-reduce, says in one line why it stopped too, rather than print gloo's traceback."""
    folder, _, reference = two_process_run
    assert reference.returncode == 0, reference.stderr[-3000:]
    failing = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).parent / "fail_on_one_process.py"), "train", str(folder / "config.yaml"), "--set", f"output_dir={tmp_path / 'run'}"]
    failed = subprocess.run(failing, cwd=tmp_path, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    errors = sorted(line for line in failed.stderr.splitlines() if line.startswith("Error: "))  # the out-of-memory one first
    assert len(errors) == 2 and errors[0].startswith("Error: out of memory with training.batch_size=8; "), failed.stderr[-3000:]
    assert errors[1] == ("Error: the connection to another process of this launch broke (Connection closed by peer): it stopped "
                         "(its error, or the launcher's report, says why) or the network between them failed; this one stopped too"), failed.stderr[-3000:]
    assert "[rank0]" not in failed.stderr and "remote worker crashing" not in failed.stderr, failed.stderr[-3000:]  # gloo's words


@pytest.mark.slow  # in CI's second pass: two-process resumes that fail as they start, about 10 s each
@pytest.mark.parametrize("damaged", ["rng-1.pt", "optimizer.pt", "log.jsonl"])
def test_a_resume_one_process_fails_stops_every_process_with_one_error_line(two_process_run, tmp_path, damaged):
    """Process 1 alone reads rng-1.pt, every process reads optimizer.pt, the main one alone rewrites log.jsonl (here over
    the file-size limit): whichever fails says so, once, and the others stop with it, rather than die at the next
    collective with gloo's 'Connection closed by peer' traceback (a hang on GPUs)."""
    folder, _, reference = two_process_run
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    (run / runs.METRICS_FILE).unlink()
    path = run / damaged if damaged == "log.jsonl" else runs.checkpoints(run)[-1] / damaged
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if damaged == "log.jsonl":  # the resume trims it back to the checkpoint's step: a rewrite over the limit
        path.write_text("".join(json.dumps({"step": 0, "pad": "x" * 1000}) + "\n" for _ in range(100)) + path.read_text())
        limit = (60 * 1024, limit[1])
    else:
        path.write_bytes(b"garbage")
    failed = subprocess.run(_torchrun_cmd(2, "train", str(folder / "config.yaml"), "--set", f"output_dir={run}", "--resume"), cwd=tmp_path,
                            env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, limit))
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if "Error: " in line and "ChildFailedError" not in line]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {path}"), failed.stderr
    assert "[rank0]" not in failed.stderr and "[rank1]" not in failed.stderr and "Connection closed" not in failed.stderr, failed.stderr[-3000:]


@pytest.mark.slow  # in CI's second pass: the two-process run they share takes about 20 s
def test_resuming_with_another_number_of_processes_is_refused(two_process_run, tmp_path):
    folder, _, reference = two_process_run
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "checkpoint-3" / runs.CHECKPOINT_STATE).write_text(json.dumps({"global_step": 3, "epoch": 0, "batches_done": 3, "processes": 2}))
    result = CliRunner().invoke(app, ["train", str(folder / "config.yaml"), "--resume", "--set", f"output_dir={run}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("Error: --resume: checkpoint-3 was written by 2 process(es) and this run has 1; resume with "
                                     "the same number (torchrun --nproc_per_node 2 ..., or plainly for 1)")


@pytest.mark.slow
def test_fsdp_path_on_cpu_processes_matches_data_parallel(two_process_run, tmp_path):
    # FSDP2 forced onto the two gloo processes (see fsdp_on_cpu.py): the same run as the DDP one up to float
    # rounding and the clipping norm (below), and its checkpoint scores as recorded, counts exactly (best
    # epoch < last, so the best weights were broadcast back into the shards).
    folder, data, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "fsdp_on_cpu.py"), str(folder / "config.yaml"), f"output_dir={tmp_path / 'fsdp'}"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fsdp = json.loads((tmp_path / "fsdp" / runs.METRICS_FILE).read_text())
    ddp = json.loads((folder / "run" / runs.METRICS_FILE).read_text())
    assert fsdp["best_epoch"] == ddp["best_epoch"] < 6
    assert fsdp["test"]["accuracy"] == ddp["test"]["accuracy"]
    # Clipping norms differ a little: torch's fp32 norms over the shards under FSDP, bertcls's dot products summed in
    # double under DDP (4e-4 apart, relatively); six epochs of the tiny model carry that to about 2e-3 of test loss.
    assert fsdp["test"]["loss"] == pytest.approx(ddp["test"]["loss"], abs=4e-3)
    assert_same_scores(_evaluate(tmp_path / "fsdp", data["test"], 8), fsdp["test"])  # evaluate may multiply through oneDNN


@pytest.mark.parametrize("rows", [240, 250, 241, 33, 10])
@pytest.mark.parametrize("processes", [2, 3])
def test_training_batches_shard_across_processes_without_losing_rows(rows, processes):
    # Accelerate shards a batch sampler in groups of N batches and tops up only a short *last*
    # batch: every row must be trained on each epoch, and each process must get len() batches.
    from accelerate.data_loader import BatchSamplerShard

    lengths = [(i * 7919) % 29 + 3 for i in range(rows)]
    for epoch in range(4):
        sampler = LengthGroupedBatches(lengths, batch_size=16, seed=3)
        sampler.set_epoch(epoch)
        shards = [list(BatchSamplerShard(sampler, processes, rank)) for rank in range(processes)]
        assert {i for shard in shards for batch in shard for i in batch} == set(range(rows))
        assert all(len(shard) == len(BatchSamplerShard(sampler, processes, 0)) for shard in shards)


@pytest.mark.parametrize("rows", [61, 67, 5])
def test_evaluation_batches_shard_to_the_same_count_on_every_process(rows):
    # DDP and FSDP forward passes are collectives: every process must run the same number.
    from accelerate.data_loader import BatchSamplerShard

    batches = sorted_batches([(i * 31) % 17 + 1 for i in range(rows)], 8)
    shards = [list(BatchSamplerShard(batches, 2, rank)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert {i for shard in shards for batch in shard for i in batch} == set(range(rows))


def test_fsdp_is_refused_where_it_cannot_work():
    with pytest.raises(ConfigError, match="training.fsdp: sharding needs CUDA GPUs"):
        check_launch(TrainingConfig(fsdp=True), on_cpu=True, processes=2)
    with pytest.raises(ConfigError, match="training.fsdp: .*this is one process; launch with `torchrun"):
        check_launch(TrainingConfig(fsdp=True), on_cpu=False, processes=1)
    check_launch(TrainingConfig(fsdp=True), on_cpu=False, processes=2)  # accepted


def test_a_pinned_gpu_is_refused_under_a_multi_process_launch():
    with pytest.raises(ConfigError, match=r"training.device: cuda:1 pins one GPU, but 2 processes"):
        check_launch(TrainingConfig(device="cuda:1"), on_cpu=False, processes=2)


def test_fsdp_on_cpu_is_a_one_line_cli_error(tmp_path, toy_data):
    config = make_config(tmp_path, toy_data, training={"fsdp": True, "device": "cpu"})
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("Error: training.fsdp: sharding needs CUDA GPUs (Accelerate runs CPU processes as plain "
                                     "data parallel); set training.fsdp: false on the CPU")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_fp16_on_cpu_is_a_one_line_cli_error(tmp_path, toy_data):
    config = make_config(tmp_path, toy_data, training={"precision": "fp16", "device": "cpu"})
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "Error: training.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU"


def test_under_a_launcher_the_first_process_of_a_machine_alone_says_a_mistake_every_process_meets(tmp_path, toy_data, trained_run,
                                                                                                   monkeypatch):
    """Every process reads the same config and checks the same run folder: one error line a machine, from its first process
    (local rank 0). Any other error may be one process's own (a damaged rng-1.pt is read by process 1 alone): each says it."""
    typo = make_config(tmp_path, toy_data, training={"epoch": 2})  # epochs
    (tmp_path / "again").mkdir()
    finished = make_config(tmp_path / "again", toy_data, output_dir=str(trained_run))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for config, error in ((typo, "Error: training.epoch"), (finished, "already holds a finished run")):
        for local_rank, says in (("1", False), ("0", True)):
            monkeypatch.setenv("LOCAL_RANK", local_rank)
            result = CliRunner().invoke(app, ["train", str(config)])
            assert result.exit_code == 2, result.output
            assert (error in result.stderr) == says and (result.stderr == "") != says, result.stderr
    # not launched here (a job's pod sets RANK for every command), or not a mistake every process meets: said
    monkeypatch.delenv("LOCAL_RANK")
    assert "Error: training.epoch" in CliRunner().invoke(app, ["train", str(typo)]).stderr
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert "Error: --model" in CliRunner().invoke(app, ["predict", "-m", str(tmp_path / "nothing"), "a text"]).stderr
