"""bertcls.machine: the device and precision settings train, predict and evaluate accept, one rule for
`precision: auto` (bf16 only where the hardware computes it), and the precision a run records."""

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bertcls import machine
from bertcls.cli import app
from bertcls.config import TrainingConfig
from bertcls.errors import ConfigError
from conftest import write_csv

runner = CliRunner()


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU has (or lacks) AVX512-BF16 and AMX, as torch's probes report them."""

    def set_flags(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_flags


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [
        (True, False, "bf16"),  # e.g. Cooper Lake, Zen 4
        (False, True, "bf16"),  # AMX (Sapphire Rapids on)
        (True, True, "bf16"),
        (False, False, "fp32"),  # AVX-512 without bf16 (Skylake/Cascade Lake): oneDNN would emulate bf16, slower than fp32
    ],
)
def test_auto_on_the_cpu_is_bf16_only_where_it_is_native(cpu, avx512_bf16, amx, expected):
    cpu(avx512_bf16, amx)
    assert machine.resolve_precision("auto", "cpu") == expected


def test_the_emulated_bf16_of_onednn_does_not_count(cpu):
    cpu(False, False)
    if torch.backends.mkldnn.is_available() and "avx512f" in machine._cpuinfo_flags():
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()  # what auto used to follow: true on any AVX-512 CPU
    assert machine.resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize(("flags", "expected"), [({"avx512f"}, "fp32"), ({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")])
def test_without_torchs_probes_cpuinfo_decides(monkeypatch, flags, expected):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(machine, "_cpuinfo_flags", lambda: flags)
    assert machine.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize(("vendor", "flags", "expected"), [("AuthenticAMD", "avx2 avx512f", True), ("GenuineIntel", "avx2 avx512f amx_bf16", True),
                                                      ("AuthenticAMD", "avx avx2", False), ("HygonGenuine", "avx2 avx512f", False),
                                                      ("", "avx2 avx512f", False)])
def test_fp32_inference_multiplies_through_onednn_on_amd_and_intel_cpus_with_avx512_only(monkeypatch, vendor, flags, expected):
    monkeypatch.setattr(machine, "_cpuinfo_field", lambda name: {"vendor_id": vendor, "flags": flags}.get(name, ""))
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    assert machine.onednn_fp32_matmul() is (expected and torch.backends.mkldnn.is_available())


def test_off_linux_the_vendor_comes_from_the_processor_string(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo_field", lambda name: "")
    monkeypatch.setattr(machine.platform, "processor", lambda: "AMD64 Family 25 Model 17 Stepping 1, AuthenticAMD")
    assert machine.cpu_vendor() == "AuthenticAMD"


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_a_gpu_is_bf16_from_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert machine.resolve_precision("auto", "cuda") == expected
    assert machine.resolve_precision("auto", "cuda:0") == expected


@pytest.mark.parametrize("device, calls", [("cpu", []), ("cuda", [False]), ("cuda:1", [False])])
def test_on_a_gpu_attention_keeps_off_cudnn_which_builds_each_shape(monkeypatch, device, calls):
    seen = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", seen.append)
    machine.gpu_attention_kernels(device)
    assert seen == calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_is_kept(cpu, precision):
    cpu(False, False)
    assert machine.resolve_precision(precision, "cpu") == precision


# ---------------------------------------------------------------------------- one validation, one wording

BAD_DEVICE = "'gpu' is not a device; use one of auto, cpu, cuda, cuda:N"
BAD_PRECISION = "'fp8' is not a precision; use one of auto, fp32, bf16, fp16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "--device", "gpu", "hello"], f"--device: {BAD_DEVICE}"),
        (["predict", "--precision", "fp8", "hello"], f"--precision: {BAD_PRECISION}"),
        (["evaluate", "x.csv", "--device", "gpu"], f"--device: {BAD_DEVICE}"),
        (["evaluate", "x.csv", "--precision", "fp8"], f"--precision: {BAD_PRECISION}"),
        (["predict", "--precision", "int8", "hello"],  # what --verbose says of an int8 export
         "--precision: 'int8' is not a precision to ask for; an export made with --quantize int8 runs in int8 under auto"),
    ],
)
def test_bad_device_or_precision_options_are_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output == f"Error: {message}\n"


def test_the_config_says_the_same(tmp_path):
    from bertcls.config import load_config

    (tmp_path / "c.yaml").write_text("data: {train: a.csv}\ntraining: {device: gpu}\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "c.yaml")
    assert str(error.value) == f"training.device: {BAD_DEVICE}"


FP16_ON_CPU = "fp16 needs a CUDA device; use bf16 or fp32 on the CPU"


def test_fp16_on_the_cpu_is_worded_once(trained_run):
    from bertcls.train import make_accelerator

    with pytest.raises(ConfigError) as error:
        make_accelerator(TrainingConfig(device="cpu", precision="fp16"))
    assert str(error.value) == f"training.precision: {FP16_ON_CPU}"
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--device", "cpu", "--precision", "fp16", "hi"])
    assert result.exit_code == 2 and result.stderr == f"Error: precision: {FP16_ON_CPU}\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu_is_one_line(trained_run):
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--device", "cuda", "hi"])
    assert result.exit_code == 2, result.output
    assert result.stderr == "Error: device: cuda was asked for but no CUDA device is available; use auto or cpu\n"


# ---------------------------------------------------------------------------- what was used is recorded

def test_metrics_record_the_device_and_precision_trained_in(trained_run):
    train = json.loads((trained_run / "metrics.json").read_text())["train"]
    assert (train["device"], train["precision"]) == ("cpu", "fp32")  # the toy run asks for fp32


def test_auto_follows_the_precision_a_run_trained_in_not_its_configs_auto(cpu, trained_run, tmp_path):
    from bertcls.predict import resolve_device_precision

    run = tmp_path / "run"  # trained with precision: auto on a CPU without native bf16: it trained and was scored in fp32
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["training"]["precision"] = "auto"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cpu(True, True)  # predicted on one with it
    assert resolve_device_precision(run, "cpu", "auto") == ("cpu", "fp32")
    (run / "metrics.json").unlink()  # not finished: the config is all there is
    assert resolve_device_precision(run, "cpu", "auto") == ("cpu", "bf16")


@pytest.mark.parametrize(("command", "precision"), [("predict", "auto"), ("predict", "bf16"), ("evaluate", "auto"), ("evaluate", "bf16")])
def test_verbose_says_the_precision_used(tmp_path, trained_run, command, precision):
    target = ["hi"] if command == "predict" else [str(write_csv(tmp_path / "e.csv", [("great film", "positive"), ("dull", "negative")]))]
    result = runner.invoke(app, [command, *target, "--model", str(trained_run), "--verbose", "--precision", precision])
    assert result.exit_code == 0, result.output
    expected = "fp32" if precision == "auto" else precision  # auto follows the run, which trained in fp32
    line = next(line for line in result.stderr.splitlines() if line.startswith("engine: "))
    assert line.split(" | ")[:3] == ["engine: torchscript", "device: cpu", f"precision: {expected}"]
