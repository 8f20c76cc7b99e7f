"""Tiny random BERT-family model folders, built offline in well under a second each.

Each folder holds what `save_pretrained` writes for that architecture's config class (tiny sizes: hidden 32,
2 layers, 4 heads) and the kind of tokenizer the real checkpoints ship, trained here on the given texts:

    bert, distilbert, electra   WordPiece (uncased), [CLS] $A [SEP] $B [SEP]
    roberta                     byte-level BPE, <s> $A </s></s> $B </s>
    xlm-roberta                 SentencePiece Unigram (Metaspace), the fairseq ids <s> <pad> </s> <unk>
    albert                      SentencePiece Unigram, <pad> <unk> [CLS] [SEP] [MASK]
    deberta-v2, deberta-v3      SentencePiece Unigram, [PAD] [CLS] [SEP] [UNK]; v2 with the convolution
                                layer and log buckets, v3 as the released v3 configs (no token types)
    modernbert                  byte-level BPE in a PreTrainedTokenizerFast, [CLS] $A [SEP] $B [SEP]

The tokenizers are wrapped in the architecture's own transformers class (which builds the real pipeline:
normaliser, pre-tokeniser, post-processor) from the trained vocabulary, so `AutoTokenizer` loads them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "deberta-v2", "deberta-v3", "modernbert")
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
VOCAB_SIZE = 300
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FAIRSEQ = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
DEBERTA = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
ALBERT = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]


def build(architecture: str, folder: Path, texts: Sequence[str]) -> Path:
    """Write a tiny random `architecture` model and its tokenizer (trained on `texts`) into `folder`."""
    tokenizer = TOKENIZERS[architecture](list(texts))
    config = CONFIGS[architecture](tokenizer)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    transformers.set_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _trained(model, trainer, texts: list[str], pre_tokenizer=None) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer(model)
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(texts, trainer)
    return json.loads(tok.to_str())["model"]


def _wordpiece(cls_name: str):
    def make(texts: list[str]):
        import transformers
        from tokenizers import models, pre_tokenizers, trainers

        trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=WORDPIECE, show_progress=False)
        vocab = _trained(models.WordPiece(unk_token="[UNK]"), trainer, [t.lower() for t in texts], pre_tokenizers.BertPreTokenizer())["vocab"]
        return getattr(transformers, cls_name)(vocab=vocab, do_lower_case=True, model_max_length=512)
    return make


def _byte_bpe(texts: list[str], special: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import models, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trained = _trained(models.BPE(), trainer, texts, pre_tokenizers.ByteLevel(add_prefix_space=False))
    return trained["vocab"], [tuple(m) for m in trained["merges"]]


def _unigram(texts: list[str], special: list[str], unk: str) -> list[tuple[str, float]]:
    from tokenizers import models, pre_tokenizers, trainers

    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=special, unk_token=unk, show_progress=False)
    vocab = _trained(models.Unigram(), trainer, texts, pre_tokenizers.Metaspace())["vocab"]
    return [(piece, float(score)) for piece, score in vocab]


def _roberta(texts: list[str]):
    import transformers

    vocab, merges = _byte_bpe(texts, FAIRSEQ)
    return transformers.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=512)


def _xlm_roberta(texts: list[str]):
    import transformers

    return transformers.XLMRobertaTokenizer(vocab=_unigram(texts, FAIRSEQ, "<unk>"), model_max_length=512)


def _albert(texts: list[str]):
    import transformers

    return transformers.AlbertTokenizer(vocab=_unigram([t.lower() for t in texts], ALBERT, "<unk>"), model_max_length=512)


def _deberta(texts: list[str]):
    import transformers

    return transformers.DebertaV2Tokenizer(vocab=_unigram(texts, DEBERTA, "[UNK]"), model_max_length=512)


def _modernbert(texts: list[str]):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges = _byte_bpe(texts, ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"], model_max_length=8192)


TOKENIZERS = {"bert": _wordpiece("BertTokenizerFast"), "distilbert": _wordpiece("DistilBertTokenizerFast"),
              "electra": _wordpiece("ElectraTokenizerFast"), "roberta": _roberta, "xlm-roberta": _xlm_roberta,
              "albert": _albert, "deberta-v2": _deberta, "deberta-v3": _deberta, "modernbert": _modernbert}


def _ids(tokenizer) -> dict[str, int]:
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}


def _bert_config(tokenizer):
    import transformers

    return transformers.BertConfig(**SIZES, **_ids(tokenizer))


def _distilbert_config(tokenizer):
    import transformers

    return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **_ids(tokenizer))


def _electra_config(tokenizer):
    import transformers

    return transformers.ElectraConfig(embedding_size=16, **SIZES, **_ids(tokenizer))


def _roberta_config(tokenizer):
    import transformers

    # The released RoBERTa configs: 514 positions (padding_idx + 1 offset), one token type.
    return transformers.RobertaConfig(max_position_embeddings=514, type_vocab_size=1, bos_token_id=0, eos_token_id=2,
                                      **SIZES, **_ids(tokenizer))


def _xlm_roberta_config(tokenizer):
    import transformers

    return transformers.XLMRobertaConfig(max_position_embeddings=514, type_vocab_size=1, bos_token_id=0, eos_token_id=2,
                                         **SIZES, **_ids(tokenizer))


def _albert_config(tokenizer):
    import transformers

    return transformers.AlbertConfig(embedding_size=16, **SIZES, **_ids(tokenizer))


def _deberta_v2_config(tokenizer):
    import transformers

    # As microsoft/deberta-v2-xlarge: relative attention with log buckets, the convolution layer, token types.
    return transformers.DebertaV2Config(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                                        max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
                                        share_att_key=True, conv_kernel_size=3, conv_act="gelu", type_vocab_size=0,
                                        **SIZES, **_ids(tokenizer))


def _deberta_v3_config(tokenizer):
    import transformers

    # As microsoft/deberta-v3-base: relative attention with position buckets, no convolution, no token types.
    return transformers.DebertaV2Config(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                                        max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
                                        share_att_key=True, type_vocab_size=0, **SIZES, **_ids(tokenizer))


def _modernbert_config(tokenizer):
    import transformers

    # A window of 8 tokens, so the tiny model's second (sliding-window) layer really is local on the test texts.
    return transformers.ModernBertConfig(local_attention=8, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                         **SIZES, **_ids(tokenizer))


CONFIGS = {"bert": _bert_config, "distilbert": _distilbert_config, "electra": _electra_config, "roberta": _roberta_config,
           "xlm-roberta": _xlm_roberta_config, "albert": _albert_config, "deberta-v2": _deberta_v2_config,
           "deberta-v3": _deberta_v3_config, "modernbert": _modernbert_config}
