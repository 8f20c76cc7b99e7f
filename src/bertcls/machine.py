"""The machine: device and precision settings in; checked values, and the precision the hardware computes, out.

One place for what train, predict and evaluate accept (`auto | cpu | cuda | cuda:N`, `auto | fp32 | bf16 |
fp16`), their error messages, and the rule behind `precision: auto`: bf16 only where the hardware
computes it natively (CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX). Elsewhere bf16 is
emulated (oneDNN still reports it "supported" on any AVX-512 CPU) and several times slower than fp32.
Also which library multiplies fp32 matrices in prediction: oneDNN on AMD and Intel CPUs with AVX-512, else torch's default.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

from bertcls.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"


def device_problem(device: object) -> str | None:
    """What is wrong with a device setting, or None."""
    if isinstance(device, str) and re.fullmatch(DEVICE_PATTERN, device):
        return None
    return f"{device!r} is not a device; use one of {', '.join(DEVICES)}"


def precision_problem(precision: object) -> str | None:
    """What is wrong with a precision setting, or None."""
    if precision in PRECISIONS:
        return None
    if precision == "int8":  # what --verbose says of an int8 export, which auto runs so
        return "'int8' is not a precision to ask for; an export made with --quantize int8 runs in int8 under auto"
    return f"{precision!r} is not a precision; use one of {', '.join(PRECISIONS)}"


def check_device(device: str, where: str) -> str:
    """`device` if valid, else a ConfigError naming `where` (a config key or a command-line option)."""
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return device


def check_precision(precision: str, where: str) -> str:
    problem = precision_problem(precision)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return precision


def pick_device(device: str, where: str) -> str:
    """auto -> cuda when a CUDA device is present, else cpu; a CUDA device asked for must exist."""
    import torch

    check_device(device, where)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{where}: {device} was asked for but no CUDA device is available; use auto or cpu")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"{where}: {device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return device


def gpu_attention_kernels(device: str) -> None:
    """On a GPU, keep torch's scaled_dot_product_attention off its cuDNN kernels, for this process.

    Under bf16 autocast torch picks cuDNN's attention where it can, and cuDNN builds it anew for each batch shape
    it meets: 0.4 s a shape for MiniLM's training steps on an H200 (torch 2.11, cuDNN 9.19), where a step takes
    20 ms. Texts come in many lengths, so SST-2's first 4,000 rows spent 26 s in steps that took 4.2 s with
    torch's memory-efficient kernel, which takes the padding mask too and builds nothing; once built, cuDNN's
    steps were within 8% of it (19.9 against 21.5 ms a step). Measured with scripts/gpu_attention.py.
    Process-wide: other models the process runs on the GPU keep off cuDNN's attention too.
    """
    import torch

    disable = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)  # torch 2.3+
    if device.startswith("cuda") and disable is not None:
        disable(False)


def resolve_precision(precision: str, device: str, where: str = "precision") -> str:
    """The precision to run in on `device` (cpu, cuda or cuda:N): auto is bf16 where the hardware computes it
    natively, else fp32; fp16 needs a CUDA device."""
    check_precision(precision, where)
    on_cpu = device == "cpu"
    if precision == "fp16" and on_cpu:
        raise ConfigError(f"{where}: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 in hardware: a GPU of compute capability 8.0+ (Ampere on), a CPU with AVX512-BF16 or AMX."""
    import torch

    if device != "cpu":
        return torch.cuda.get_device_capability(device if ":" in device else None) >= (8, 0)
    flags = cpu_bf16_flags()
    return flags["avx512_bf16"] or flags["amx"]


def cpu_bf16_flags() -> dict[str, bool]:
    """The CPU's native bf16 instructions: {"avx512_bf16": ..., "amx": ...}.

    torch's own probes also check that the OS enabled them (AMX needs it); /proc/cpuinfo is the fallback.
    """
    import torch

    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx is not None:
        return {"avx512_bf16": bool(avx512_bf16()), "amx": bool(amx())}
    flags = _cpuinfo_flags()
    return {"avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags}


ONEDNN_VENDORS = ("AuthenticAMD", "GenuineIntel")


def onednn_fp32_matmul() -> bool:
    """Whether fp32 inference should multiply through oneDNN rather than torch's default BLAS (MKL on x86): on
    AMD and Intel CPUs with AVX-512.

    Measured on the traced MiniLM graph over 872 sentences: on an AMD EPYC with AVX-512, where MKL does not pick its
    fastest kernels, 1.1-1.25x faster; on an Intel Xeon 1.02-1.04x; on both, the process's peak memory fell by
    38-41%. On an AMD EPYC with AVX2 only, oneDNN was the slower (MKL 1.12-1.24x faster), so there MKL stays. Other
    CPUs (ARM, ...) were never measured, so they keep torch's default.
    """
    import torch

    return torch.backends.mkldnn.is_available() and cpu_vendor() in ONEDNN_VENDORS and cpu_avx512()


def cpu_avx512() -> bool:
    """Whether the CPU has AVX-512 (its foundation, avx512f): from /proc/cpuinfo, else from torch's own probe."""
    flags = _cpuinfo_flags()
    if flags:
        return "avx512f" in flags
    import torch

    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...), or "" where the OS does not say."""
    vendor = _cpuinfo_field("vendor_id")
    if not vendor:  # Windows: "AMD64 Family 25 Model 17 Stepping 1, AuthenticAMD"
        processor = platform.processor()
        vendor = processor.rpartition(", ")[2] if ", " in processor else ""
    return vendor


def _cpuinfo_flags() -> set[str]:
    return set(_cpuinfo_field("flags").split())


def _cpuinfo_field(name: str) -> str:
    """The first processor's `name` line in /proc/cpuinfo ("" without one, e.g. off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    line = next((line for line in text.splitlines() if line.partition(":")[0].strip() == name), "")
    return line.partition(":")[2].strip()
