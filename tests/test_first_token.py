"""The last layer computed for the first token only gives the logits and gradients of the whole layer."""

import pytest
import torch

from bertcls import first_token
from bertcls.model import load_trained
from tiny_models import ARCHITECTURES, build

TEXTS = ["a wonderful film", "dreadful acting and a plot with holes", "boring", "the cast was superb " * 6]
SHORTENED = {"bert", "roberta", "xlm-roberta", "electra"}  # their heads read only the first token


def shortened(model) -> bool:
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    return bool(layers) and "forward" in vars(layers[-1])  # the instance's own forward: first_token's


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_logits_and_gradients_as_the_whole_last_layer(architecture, tmp_path):
    import transformers

    folder = build(architecture, tmp_path / architecture, TEXTS * 5)
    whole = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    short, tokenizer = load_trained(folder)  # what train, predict, evaluate and export run
    assert shortened(short) == (architecture in SHORTENED)
    batch = tokenizer(TEXTS, TEXTS[::-1], padding=True, return_tensors="pt")  # pairs, padded: the mask matters
    labels = torch.tensor([0, 1, 1, 0])
    grads = {}
    for name, model in (("whole", whole), ("short", short)):
        out = model(**batch, labels=labels)
        out.loss.backward()
        grads[name] = (out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    (logits, whole_grads), (short_logits, short_grads) = grads["whole"], grads["short"]
    torch.testing.assert_close(short_logits, logits, rtol=1e-5, atol=1e-6)
    assert short_grads.keys() == whole_grads.keys()  # every weight still learns, the last layer's query included
    for key, grad in whole_grads.items():
        torch.testing.assert_close(short_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_other_heads_and_attention_functions_keep_the_whole_layer(tmp_path):
    import transformers

    folder = build("bert", tmp_path / "bert", TEXTS * 5)
    eager = transformers.AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    assert first_token.apply(eager) and shortened(eager)  # checked with sdpa and eager
    flex = transformers.AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="flex_attention")
    tokens = transformers.BertForTokenClassification.from_pretrained(folder)  # reads every token
    assert not first_token.apply(flex) and not first_token.apply(tokens)
    assert not shortened(flex) and not shortened(tokens)
