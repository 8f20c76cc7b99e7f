"""What a training step runs on the CPU in place of torch's slow paths: dropout masks, attention, freed memory.

Dropout: torch's CPU dropout draws its mask with `bernoulli_`, one Mersenne Twister number per
element on one thread, about 5 ns an element: on MiniLM with two cores, a tenth of a training step.
Here each 64-bit draw gives four elements 15 random bits each, and an element is kept where its
bits fall under round((1 - p) * 2**15): the keep rate is 1 - p within 2**-16, and kept values are
scaled by the exact inverse of that rate, so the output's expectation is the input's. The mask takes
a few vectorised passes, about 4x faster than torch's. The draws come from torch's default CPU
generator, so a seed and a checkpoint's RNG state fix the masks as they fix torch's own.

Attention: with dropout, `scaled_dot_product_attention` on the CPU takes its math path, which draws
the slow masks and upcasts bf16 to fp32 around both products; without dropout it takes the flash
kernel, whose backward is slow on short texts. While a model trains on the CPU, its attention is
the plain products instead (scores, a softmax in fp32, the cheaper mask, the weighted sum): with the
backward, a layer for 32 texts is 1.06x faster at 8 tokens, 1.35x at 14 and 2.1x at 40-64. Rows of
fewer than 16 scores are padded to 16 for the softmax, whose CPU kernel is 5-10x slower on them:
a layer's attention over 10-15 tokens, with the backward, then takes 1.5-2.1x less time in fp32 and
1.3-1.4x in bf16. Under bf16 autocast, the products of texts up to 64 tokens are in fp32 (see
FP32_PRODUCTS_UP_TO).
Evaluation and prediction, and every case the plain products do not cover (causal or grouped-query
attention, position biases, soft caps), run transformers' `sdpa` as before.

Nothing saved changes: dropout has no weights, and a saved config does not record the attention
function, so a saved model loads with `sdpa`. On a GPU torch's fused kernels run.

Freed memory: glibc's malloc hands much of what a step frees back to the operating system (every
block over 32 MB, such as MiniLM's 47 MB word-embedding gradient, at once; the rest whenever the
free top of the heap outgrows 64 MB or less), and the next step pays a page fault for each 4 KB it
writes to afresh: about 12,000 a step on MiniLM. While the loop trains on the CPU, malloc keeps
what is freed for the next step; after the loop its usual limits come back and what is free goes
back at once, before the evaluation and saving that follow. On the Intel Xeon this made steps
1.03-1.07x faster in bf16 and 1.01-1.04x in fp32, for 2-4% more peak memory.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch

BITS = 15  # of each 16-bit quarter of a draw: torch's int64 random_ leaves the word's top bit 0
SPAN = 1 << BITS
ATTENTION = "bertcls_cpu_training"  # the name the attention below is registered under with transformers
# torch's CPU softmax takes a scalar path over rows shorter than this, 5-10x slower than over rows of 16
SOFTMAX_ROW = 16
# Under bf16 autocast, attention over up to this many keys multiplies in fp32: oneDNN compiles a bf16 kernel for
# each new shape (about 1 ms, six for each text length), MKL multiplies fp32 without compiling, and at these sizes
# about as fast. Beyond, bf16 is faster (1.3x at 256 keys).
FP32_PRODUCTS_UP_TO = 64


# glibc's mallopt parameters, and the values its dynamic threshold settles at on 64-bit machines
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX, TRIM_THRESHOLD_MAX = 32 << 20, 64 << 20
# what a user sets to tune glibc's malloc (and GLIBC_TUNABLES's glibc.malloc.*): their choice stands
MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def apply(model: torch.nn.Module) -> None:
    """Give `model` the cheaper dropout masks and, where it runs transformers' `sdpa`, the attention below."""
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = CpuDropout
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks sdpa gets
        model.set_attn_implementation(ATTENTION)


class CpuDropout(torch.nn.Dropout):
    """`torch.nn.Dropout` with cheaper masks on the CPU; the same module elsewhere and in eval mode."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or input.device.type != "cpu":
            return super().forward(input)
        return drop(input, self.p)


def drop(x: torch.Tensor, p: float) -> torch.Tensor:
    """`x` with each element zeroed at rate `p` and the rest scaled by 1 / keep rate."""
    threshold = round((1 - p) * SPAN)
    if threshold >= SPAN:
        return x
    if threshold <= 0:
        return x * 0
    with torch.no_grad():
        n = math.prod(x.shape)
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].bitwise_and_(SPAN - 1)
        kept = draws.neg_().add_(threshold).clamp_(0, 1)  # 1 where the draw is under threshold, else 0
        mask = kept.to(x.dtype).mul_(SPAN / threshold).view(x.shape)
    return x * mask


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' `sdpa` attention function, as plain products while a model trains on the CPU."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)  # sdpa's default
    if (not module.training or not torch.is_grad_enabled() or query.device.type != "cpu"
            or (causal and attention_mask is None and query.shape[2] > 1) or getattr(module, "num_key_value_groups", 1) > 1
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if torch.is_autocast_enabled("cpu") and key.shape[2] <= FP32_PRODUCTS_UP_TO:
        with torch.autocast("cpu", enabled=False):
            context = _products(query.float(), key.float(), value.float(), attention_mask, dropout, scaling).to(value.dtype)
    else:
        context = _products(query, key, value, attention_mask, dropout, scaling)
    return context.transpose(1, 2).contiguous(), None


def _products(query, key, value, attention_mask, dropout: float, scaling: float) -> torch.Tensor:
    """The scores, a softmax in fp32, the cheaper dropout mask, the weighted sum."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:  # sdpa's: True where a query may attend, or a float to add
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    keys = scores.shape[-1]
    if keys < SOFTMAX_ROW:  # padded with keys no query attends to: the same probabilities, from the fast kernel
        scores = torch.nn.functional.pad(scores, (0, SOFTMAX_ROW - keys), value=-math.inf)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)[..., :keys].to(value.dtype)
    return torch.matmul(drop(probs, dropout), value)


@contextmanager
def freed_memory_kept(device: torch.device) -> Iterator[None]:
    """Within: glibc's malloc keeps what the process frees, for the next training step to reuse.

    Only on the CPU, where glibc is the allocator, and where the user has not tuned malloc themselves.
    """
    tuned = any(name in os.environ for name in MALLOC_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    libc = _glibc() if device.type == "cpu" and not tuned else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # from the heap up to 1 GB: XLM-R large's word-embedding gradient
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # the heap's free top stays
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX)
        libc.malloc_trim(0)  # what is free goes back now, from anywhere in the heap


def _glibc() -> ctypes.CDLL | None:
    """glibc, where Python runs on it (not on macOS, Windows or musl)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
