"""Model: a hub id, a local folder or `tiny` in; a sequence classifier and its tokenizer out.

Saved folders are plain `save_pretrained` output (safetensors) with `id2label`/`label2id` in
their config, so `transformers.pipeline("text-classification", model=folder)` works unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bertcls.errors import ModelError, first_line

if TYPE_CHECKING:  # pydantic stays off the predict path: it costs start-up time and prediction never needs it
    from bertcls.config import ModelConfig

# The tiny BERT: the sizes of transformers' own BERT unit tests, big enough to learn a toy task.
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
TINY_VOCAB_SIZE = 4000
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _quiet_transformers():
    import transformers

    # "Some weights ... newly initialized" is expected for a fresh classification head.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def build_tiny_tokenizer(texts: Sequence[str], model_max_length: int = 512):
    """An uncased WordPiece tokenizer whose vocabulary comes from `texts`, built in well under a second.

    The vocabulary is every character (alone and as a `##` continuation) plus the most frequent
    words, ties broken alphabetically: the same texts always give the same ids. (The `tokenizers`
    trainers break ties in hash order, which differs from process to process.)
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    transformers = _quiet_transformers()
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for piece in _pieces(text) for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(piece)))
    chars = sorted({c for w in words for c in w})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    known = set(vocab)
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= TINY_VOCAB_SIZE:
            break
        if word not in known:
            vocab.append(word)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return transformers.BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length, do_lower_case=True,
    )


# Texts are read for words this many characters at a time: a 20 MB text split whole took 1.8 GB.
PIECE_CHARS = 1 << 20


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces of about PIECE_CHARS characters, each ending at a space (words are never split
    there, and the normalizer works character by character, so the words found are the same)."""
    start = 0
    while start < len(text):
        end = start + PIECE_CHARS
        if end < len(text):
            space = text.rfind(" ", start, end)
            end = space + 1 if space > start else end
        yield text[start:end]
        start = end


def load_model(cfg: ModelConfig, id2label: dict[int, str], max_length: int, texts: Sequence[str] = (), multi_label: bool = False):
    """(model, tokenizer) for training: a fresh head with `len(id2label)` outputs on the named encoder.

    multi_label sets problem_type, so the model's own loss is BCE and `pipeline` applies a sigmoid.

    Call after seeding: the seed then also fixes the head's (and the tiny model's) initialisation.
    """
    transformers = _quiet_transformers()
    label2id = {name: i for i, name in id2label.items()}
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    if cfg.name == "tiny":
        tokenizer = build_tiny_tokenizer(texts, model_max_length=max(512, max_length))
        config = transformers.BertConfig(
            vocab_size=len(tokenizer), max_position_embeddings=max(512, max_length), num_labels=len(id2label),
            id2label=id2label, label2id=label2id, pad_token_id=tokenizer.pad_token_id, problem_type=problem_type, **TINY,
        )
        return transformers.BertForSequenceClassification(config), tokenizer
    _check_model_source(cfg.name)
    if cfg.trust_remote_code:
        import warnings

        warnings.warn(f"model.trust_remote_code is on: code shipped with {cfg.name} will run", stacklevel=2)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            cfg.name, num_labels=len(id2label), id2label=id2label, label2id=label2id, problem_type=problem_type,
            ignore_mismatched_sizes=True,  # a checkpoint fine-tuned on other labels gets a fresh head
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.name {cfg.name!r}: cannot load it as a sequence classifier ({first_line(exc)})") from None
    check_max_length(model.config, max_length, cfg.name)
    return model, tokenizer


def _check_model_source(name: str) -> None:
    path = Path(name)
    if path.is_absolute() and not path.exists():
        raise ModelError(f"model.name {name!r}: no such folder; give a local model folder, a hub id, or `tiny`")
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"model.name {name!r}: not a Hugging Face model folder (no config.json); point it at the folder save_pretrained wrote")


def check_max_length(model_config, max_length: int, name: str) -> None:
    limit = getattr(model_config, "max_position_embeddings", None)
    # RoBERTa-style models reserve two positions for the padding offset.
    usable = limit - 2 if limit and getattr(model_config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"} else limit
    if usable and max_length > usable:
        raise ModelError(f"data.max_length={max_length} is above what {name} supports ({usable} tokens); set data.max_length <= {usable}")


def resolve_precision(precision: str, on_cpu: bool) -> str:
    """auto: bf16 where the hardware computes it natively (recent CUDA GPUs, CPUs with AVX512-BF16/AMX), else fp32."""
    import torch

    if precision != "auto":
        return precision
    if on_cpu:
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def load_trained(path: str | Path):
    """(model, tokenizer) from a run folder (its `model/`) or a plain Hugging Face model folder, in eval mode."""
    from bertcls.runs import model_dir

    folder = model_dir(path)
    transformers = _quiet_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: cannot load the model ({first_line(exc)})") from None
    return model.eval(), tokenizer


def save_model(model, tokenizer, dest: Path, state_dict: dict | None = None, threshold: float | None = None) -> None:
    """Write `dest` atomically: a complete new folder replaces the old one, never a half-written one.

    `state_dict`: the full weights when `model` itself holds only a shard of them (FSDP).
    A multi-label model's decision `threshold` goes into its config.json (`multi_label_threshold`).
    """
    from bertcls.predict import THRESHOLD_KEY
    from bertcls.runs import publish_dir, temp_dir_for

    if threshold is not None:
        setattr(model.config, THRESHOLD_KEY, float(threshold))
    tmp = temp_dir_for(dest)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, dest)
