"""Training on the CPU: dropout at the rate asked with masks fixed by the seed; attention that computes what sdpa does."""

import os
import platform
from pathlib import Path

import pytest
import torch

from bertcls.cpu_training import ATTENTION, MALLOC_SETTINGS, CpuDropout, apply, attention, drop, freed_memory_kept
from tiny_models import ARCHITECTURES, build

TEXTS = ["a wonderful film", "dreadful acting and a plot with holes", "boring", "the cast was superb " * 6]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_at_the_rate_asked_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_001)  # not a multiple of the four elements one draw gives
    y = drop(x, p)
    dropped = y == 0
    assert y.shape == x.shape
    assert abs(dropped.float().mean().item() - p) < 0.003
    assert abs(y.mean().item() - 1) < 0.005
    assert torch.unique(y[~dropped]).numel() == 1  # every kept element scaled alike
    # Four neighbours share one 64-bit draw: their masks must still be independent.
    assert abs((dropped[:-1] & dropped[1:]).float().mean().item() - p * p) < 0.003
    assert abs((dropped[:-4] & dropped[4:]).float().mean().item() - p * p) < 0.003


def test_the_seed_fixes_the_masks():
    x = torch.randn(32, 17, 64)
    masks = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        masks.append(drop(x, 0.1) == 0)
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_gradients_pass_through_kept_elements_only():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 16, requires_grad=True)
    y = drop(x, 0.3)
    y.sum().backward()
    kept = y != 0
    assert torch.all(x.grad[~kept] == 0)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7), rtol=1e-4, atol=0)


def test_module_drops_in_training_only_and_keeps_the_dtype():
    layer = CpuDropout(0.1)
    x = torch.randn(4, 7, 32, dtype=torch.bfloat16)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    assert y.dtype == torch.bfloat16 and bool((y == 0).any())
    assert torch.equal(CpuDropout(0.0).train()(x), x)
    assert torch.equal(CpuDropout(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_attention_gives_sdpa_logits_and_gradients(architecture, tmp_path):
    import transformers

    folder = build(architecture, tmp_path / architecture, TEXTS * 5)
    models = [transformers.AutoModelForSequenceClassification.from_pretrained(folder) for _ in range(2)]
    apply(models[0])
    plain = models[1].config._attn_implementation  # DeBERTa's attention is its own ("eager"): unchanged
    assert models[0].config._attn_implementation == (ATTENTION if plain == "sdpa" else plain)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batches = [tokenizer(TEXTS, TEXTS[::-1], padding=True, return_tensors="pt"),  # pairs, padded: the mask matters
               tokenizer(["boring", "a film", "great"], padding=True, return_tensors="pt")]  # under 16 tokens: the padded softmax
    assert batches[1]["input_ids"].shape[1] < 16 <= batches[0]["input_ids"].shape[1]
    results = []
    for model in models:
        model.train()
        for module in model.modules():  # training mode without dropout: the same numbers expected
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):  # ModernBERT's, a number
                module.attention_dropout = 0.0
        outs = [model(**batch, labels=torch.tensor([0, 1, 1, 0][:len(batch["input_ids"])])) for batch in batches]
        sum(out.loss for out in outs).backward()
        results.append((torch.cat([out.logits.detach() for out in outs]), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    (logits, grads), (sdpa_logits, sdpa_grads) = results
    torch.testing.assert_close(logits, sdpa_logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == sdpa_grads.keys()
    for key, grad in sdpa_grads.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-3, atol=1e-5, msg=key)
    models[0].save_pretrained(tmp_path / "saved")
    assert ATTENTION not in (tmp_path / "saved" / "config.json").read_text()  # a saved model loads with sdpa



@pytest.mark.parametrize("keys", [14, 80])
def test_training_attention_under_bf16_autocast_stays_within_bf16_rounding_of_sdpa(keys):
    # Under autocast, up to 64 keys multiply in fp32 here (in bf16 in sdpa); more, in bf16 in both.
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()  # a training one, as attention is given
    module.is_causal = False
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, keys, 16, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(2, 1, keys, keys, dtype=torch.bool)
    mask[1, ..., keys // 2:] = False  # the second text padded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = attention(module, query, key, value, mask)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=0.03)


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("tuned", [False, True])
def test_memory_freed_while_training_is_kept_until_the_loop_ends(monkeypatch, tuned):
    for name in MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072" if tuned else "glibc.cpu.x86_shstk=permissive")
    with freed_memory_kept(torch.device("cpu")):
        held = resident_mb()
        step = torch.ones(50_000_000)  # 200 MB, past any threshold glibc picks by itself
        assert resident_mb() > held + 150
        del step
        if tuned:  # the user tuned malloc: bertcls leaves it as it is
            assert resident_mb() < held + 50
        else:  # kept for the next step
            assert resident_mb() > held + 150
    assert resident_mb() < held + 50  # and returned when the loop ends
