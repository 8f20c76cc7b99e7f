"""The last encoder layer, computed for the first token only, where the classifier reads nothing else.

The sequence-classification heads of BERT, RoBERTa, XLM-R, CamemBERT and ELECTRA read the last layer's
output at the first token ([CLS] or <s>) and ignore every other position. So that layer needs its
queries, attention output and feed-forward block for the first token only; its keys and values still
come from every token. The logits (and their gradients) are the same, up to float rounding, for about
5/6 of one layer's work less: on a 6-layer model, 12-20% of each training step and of each prediction.

Nothing is saved differently: the weights and their names are untouched, so a saved folder is a plain
transformers model, and the traced graph and the ONNX export compute the same short path.
"""

from __future__ import annotations

import types

# Heads that read only the first token of the last layer (their pooler or classification head takes [:, 0]).
FIRST_TOKEN_HEADS = frozenset({
    "BertForSequenceClassification", "RobertaForSequenceClassification", "XLMRobertaForSequenceClassification",
    "CamembertForSequenceClassification", "ElectraForSequenceClassification",
})
ATTENTION = ("sdpa", "eager")  # the attention functions the short path was checked with


def apply(model) -> bool:
    """Compute `model`'s last encoder layer for the first token only, where that gives the same logits;
    whether it does. Other architectures, remote code, decoders and other attention functions are left as they are."""
    cls = type(model)
    if cls.__name__ not in FIRST_TOKEN_HEADS or not cls.__module__.startswith("transformers.models."):
        return False
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not layers:
        return False
    last = layers[-1]
    attention = getattr(getattr(last, "attention", None), "self", None)
    if (getattr(model.config, "_attn_implementation", None) not in ATTENTION or model.config.is_decoder
            or getattr(last, "add_cross_attention", False) or not all(hasattr(attention, name) for name in ("query", "key", "value", "scaling"))
            or not hasattr(last, "feed_forward_chunk")):
        return False
    last.forward = types.MethodType(_first_token_forward, last)
    return True


def _first_token_forward(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """BertLayer.forward (and its RoBERTa/ELECTRA copies) for the first position only: (batch, 1, hidden) out."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    for unused in ("cache", "encoder_attention_mask", "past_key_values"):  # an encoder's layer gets them empty
        kwargs.pop(unused, None)
    attention = layer.attention.self
    batch, length, _ = hidden_states.shape
    first = hidden_states[:, :1]
    heads = (-1, attention.attention_head_size)
    query = attention.query(first).view(batch, 1, *heads).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, length, *heads).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, length, *heads).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4:  # (batch, 1, queries or 1, keys): the first query's row
        attention_mask = attention_mask[:, :, :1]
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = attend(attention, query, key, value, attention_mask,
                        dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling, **kwargs)
    context = context.reshape(batch, 1, -1).contiguous()
    return layer.feed_forward_chunk(layer.attention.output(context, first))
