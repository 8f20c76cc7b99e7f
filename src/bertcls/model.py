"""Model: a hub id, a local folder or `tiny` in; a sequence classifier and its tokenizer out.

Saved folders are plain `save_pretrained` output (safetensors) with `id2label`/`label2id` in
their config, so `transformers.pipeline("text-classification", model=folder)` works unchanged.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertcls import first_token
from bertcls.atomic import temp_dir_for, writing
from bertcls.errors import BertclsWarning, ModelError, causes, clipped, first_line, load_reason
from bertcls.runs import model_dir, publish_dir

# Where a saved multi-label model keeps its decision threshold (in config.json, beside id2label).
THRESHOLD_KEY = "multi_label_threshold"
DEFAULT_THRESHOLD = 0.5
# Where a saved model keeps the max_length it was trained with (in config.json, beside id2label), so that its folder
# alone (copied without its run, traced or exported) reads texts as the run did.
MAX_LENGTH_KEY = "bertcls_max_length"

# Tokenising a text costs memory in proportion to its whole length, however little truncation keeps (a 20 MB
# text took 3.8 GB), so texts are cut to max_length x CHARS_PER_TOKEN characters first, before the word the
# bound falls in where that word is short (cut, it could read as other tokens: see `_cut`). A real tokenizer's
# token averages 3-6 characters, so the cut keeps every token truncation keeps; a text it leaves short of max_length tokens (mostly whitespace, or long
# words that are one unknown token each) is tokenised again whole, and so is its row. Pairs: each side is cut;
# when both sides are that long, which side keeps the odd token of an odd budget follows the cut sides' token
# counts (the tokenizer gives it to the longer side). head_tail and sliding_window, which read
# a text's end or all of it, cut with the same ratio where what they read ends (`bertcls.longtext`).
CHARS_PER_TOKEN = 16


if TYPE_CHECKING:  # pydantic stays off the predict path: it costs start-up time and prediction never needs it
    from bertcls.config import ModelConfig

# The tiny BERT: 2 layers of hidden size 64, about 1/300 of bert-base's parameters; big enough to learn a toy task in seconds.
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
TINY_VOCAB_SIZE = 4000
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Weights load in fp32 whatever dtype a checkpoint was saved in (transformers 5 would keep it): training keeps
# fp32 master weights, and bf16/fp16 are autocast where the run's precision asks for them.
FP32 = "float32"


def _quiet_transformers():
    import transformers

    # "Some weights ... newly initialized" is expected for a fresh classification head.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    quiet_hub_retries()
    return transformers


class _HubRetries(logging.Filter):
    """huggingface_hub logs two lines per retry when the hub does not answer, up to 11 lines over about 25 s before the
    error: the first becomes one warning that says what is going on and how to fail at once, the rest are dropped."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if " thrown while requesting " not in message and not message.startswith(("Retrying in ", "Rate limited.")):
            return True
        if not self.said and " thrown while requesting " in message:
            self.said = True
            warnings.warn(f"the Hugging Face hub does not answer ({clipped(message.split(' thrown while')[0].strip(chr(39)))}); "
                          "retrying for about half a minute (set HF_HUB_OFFLINE=1 to fail at once)", BertclsWarning, stacklevel=2)
        return False


def quiet_hub_retries() -> None:
    """Install `_HubRetries` on huggingface_hub's HTTP logger (once)."""
    hub = logging.getLogger("huggingface_hub.utils._http")
    if not any(isinstance(f, _HubRetries) for f in hub.filters):
        hub.addFilter(_HubRetries())


def build_tiny_tokenizer(texts: Sequence[str], model_max_length: int = 512):
    """An uncased WordPiece tokenizer whose vocabulary comes from `texts`, built in well under a second.

    The vocabulary is every character (alone and as a `##` continuation) plus the most frequent
    words, ties broken alphabetically: the same texts always give the same ids. (The `tokenizers`
    trainers break ties in hash order, which differs from process to process.)
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    transformers = _quiet_transformers()
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for piece in pieces(text) for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(piece)))
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


def pieces(text: str) -> Iterator[str]:
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

    multi_label sets problem_type, so the model's own loss is BCE and `pipeline` applies a sigmoid. `max_length` is
    recorded in the model's config (MAX_LENGTH_KEY), so the saved folder reads texts as training did.

    Call after seeding: the seed then also fixes the head's (and the tiny model's) initialisation.
    """
    from bertcls import cpu_training  # torch: kept off the import path of prediction through ONNX

    transformers = _quiet_transformers()
    label2id = {name: i for i, name in id2label.items()}
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    if cfg.name == "tiny":
        tokenizer = load_tokenizer(cfg, max_length, texts)
        config = transformers.BertConfig(
            vocab_size=len(tokenizer), max_position_embeddings=max(512, max_length), num_labels=len(id2label),
            id2label=id2label, label2id=label2id, pad_token_id=tokenizer.pad_token_id, problem_type=problem_type, **TINY,
        )
        model = transformers.BertForSequenceClassification(config)
    else:
        if cfg.trust_remote_code:
            warnings.warn(f"model.trust_remote_code is on: code shipped with {cfg.name} will run", BertclsWarning, stacklevel=2)
        model = _from_pretrained(transformers, cfg, id2label, label2id, problem_type)  # first: a folder without weights is no model
        tokenizer = load_tokenizer(cfg, max_length, texts, model.config)
        check_max_length(model.config, max_length, cfg.name)
    setattr(model.config, MAX_LENGTH_KEY, max_length)
    first_token.apply(model)
    cpu_training.apply(model)
    return model, tokenizer


def _from_pretrained(transformers, cfg: ModelConfig, id2label: dict[int, str], label2id: dict[str, int], problem_type: str):
    """The named encoder with a fresh classification head, in fp32; a ModelError saying why where it cannot load."""
    try:
        with quiet_unpickler():
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                cfg.name, num_labels=len(id2label), id2label=id2label, label2id=label2id, problem_type=problem_type,
                ignore_mismatched_sizes=True,  # a head of another size loads (and is replaced below)
                trust_remote_code=cfg.trust_remote_code,
                dtype=FP32,
            )
    except unreadable_weights() as exc:
        if not_downloaded(exc):
            raise ModelError(f"model.name {cfg.name!r}: {download_failure()}") from None
        raise ModelError(f"model.name {cfg.name!r}: cannot load it as a sequence classifier ({in_file(cfg.name, exc, load_reason(exc))})") from None
    fresh_head(model)
    return model


def fresh_head(model) -> None:
    """Initialise `model`'s classification head as its own init does for a new model, from the seed.

    The head is everything outside the encoder (the `base_model_prefix` submodule, which keeps its pretrained
    weights, BERT's pooler included): a classifier, and DistilBERT's pre_classifier, DeBERTa's pooler or
    ModernBERT's head. A checkpoint fine-tuned before brings a head trained on its own labels, which would
    otherwise be kept whenever the label count matches: its first row would become the first new label.
    """
    if getattr(model, model.base_model_prefix, None) is None:
        return  # no encoder to tell the head from (remote code laid out otherwise): its weights stay as loaded
    head = [module for name, child in model.named_children() if name != model.base_model_prefix for module in child.modules()]
    # transformers' init skips what loading marked as initialised; the model itself is unmarked too, since some
    # architectures (ModernBERT) initialise their classifier from the top-level model's init
    for module in [model, *head]:
        module._is_hf_initialized = False
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor._is_hf_initialized = False
    model.initialize_weights()


def not_downloaded(exc: BaseException) -> bool:
    """Whether loading failed because the files are neither in the Hugging Face cache nor reachable on the hub."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    missing = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)  # datasets: ConnectionError
    return any(isinstance(cause, missing) for cause in causes(exc))


def download_failure(local: str = "a local model folder") -> str:
    """Why a hub id did not load (see `not_downloaded`) and the fixes, `local` (a local copy) first."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return ("not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, so it was not downloaded; "
                f"give {local}, or unset HF_HUB_OFFLINE to download it")
    return ("could not be downloaded from the Hugging Face hub (and is not in the local cache); check the network and the "
            f"hub id, or give {local} (set HF_HUB_OFFLINE=1 to fail at once instead of retrying)")


def check_model_source(cfg: ModelConfig, max_length: int) -> None:
    """Before anything is written or loaded: the model exists (a folder with config.json, or a hub id whose
    config.json downloads) and takes `max_length` tokens. Only its config is read, never its weights."""
    if cfg.name == "tiny":
        return
    _check_model_source(cfg.name)
    transformers = _quiet_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        if not_downloaded(exc):
            raise ModelError(f"model.name {cfg.name!r}: {download_failure()}") from None
        raise ModelError(f"model.name {cfg.name!r}: cannot load it as a sequence classifier ({in_file(cfg.name, exc, first_line(exc))})") from None
    check_max_length(config, max_length, cfg.name)


def load_tokenizer(cfg: ModelConfig, max_length: int, texts: Sequence[str] = (), model_config=None):
    """The tokenizer `load_model` pairs with the model, without the model's weights: `tiny` builds one from `texts`.
    Checked against the model's config (`model_config`, read here when not given)."""
    transformers = _quiet_transformers()
    if cfg.name == "tiny":
        return build_tiny_tokenizer(texts, model_max_length=max(512, max_length))
    _check_model_source(cfg.name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
        config = model_config or transformers.AutoConfig.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        if not_downloaded(exc):
            raise ModelError(f"model.name {cfg.name!r}: {download_failure()}") from None
        raise ModelError(f"model.name {cfg.name!r}: cannot load its tokenizer ({in_file(cfg.name, exc, first_line(exc))})") from None
    check_tokenizer(tokenizer, config, f"model.name {cfg.name!r}")
    return tokenizer


def check_tokenizer(tokenizer, model_config, where: str) -> None:
    """Refuse a tokenizer that knows far fewer tokens than the model: for a folder without its tokenizer files,
    transformers builds an empty one (a few special tokens), which reads every word as unknown."""
    vocab_size = getattr(model_config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) * 2 < vocab_size:
        raise ModelError(f"{where}: its tokenizer knows {len(tokenizer):,} tokens and the model {vocab_size:,}, so its tokenizer "
                         "files (tokenizer.json, or vocab.txt and the like) are missing or not the model's; copy them from "
                         "the model it was trained from")


def _check_model_source(name: str) -> None:
    path = Path(name)
    if path.is_absolute() and not path.exists():
        raise ModelError(f"model.name {name!r}: no such folder; give a local model folder, a hub id, or `tiny`")
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"model.name {name!r}: not a Hugging Face model folder (no config.json); point it at the folder save_pretrained wrote")


# The JSON files transformers reads to load a model folder and its tokenizer
LOADED_JSON = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "model.safetensors.index.json")
JSON_SAID = re.compile(r"not a valid JSON file|line \d+ column \d+")  # transformers' words, and serde's (tokenizers)
SECOND_LOOK_LIMIT = 1 << 30  # bytes: a JSON file larger than this is not read again to find the damage


def damaged_file(folder: str | Path, exc: BaseException) -> Path | None:
    """After a local model folder failed to load with `exc`: the one file of the kind `exc` is about that a second look
    finds damaged (a JSON file transformers reads that does not parse; a safetensors file whose header or length is
    wrong), for the error to name. None for a hub id, an error about neither kind (a pickled .bin, say), no such
    file, or several."""
    from safetensors import SafetensorError, safe_open

    def parses(path: Path) -> None:
        json.loads(path.read_bytes())

    def opens(path: Path) -> None:
        with safe_open(path, "pt"):
            pass

    folder = Path(folder)
    said = list(causes(exc))
    try:
        if any(isinstance(cause, json.JSONDecodeError) or JSON_SAID.search(str(cause)) for cause in said):
            candidates, check = [folder / name for name in LOADED_JSON], parses
        elif any(isinstance(cause, SafetensorError) for cause in said):
            candidates, check = sorted(folder.glob("*.safetensors")), opens
        else:
            return None
        # plain files only (a FIFO would block the read); a model folder of the hub's cache links to them
        candidates = [path for path in candidates if path.is_file() and path.stat().st_size <= SECOND_LOOK_LIMIT]
    except OSError:  # no folder (a hub id), or one that cannot be listed
        return None
    damaged = []
    for path in candidates:
        try:
            check(path)
        except Exception:  # noqa: BLE001 - whatever the second look meets (RecursionError for deep nesting, too) is damage
            damaged.append(path)
    return damaged[0] if len(damaged) == 1 else None


def in_file(name: str, exc: BaseException, reason: str) -> str:
    """`reason` a model named `name` failed to load with `exc` for, led by the file at fault where `name` is a local
    folder and one file of the kind `exc` is about is damaged (`damaged_file`)."""
    found = damaged_file(name, exc)
    return f"{found.name}: {reason}" if found is not None else reason


def usable_positions(model_config) -> int | None:
    """The most tokens the model's position embeddings take (None when it names no limit)."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit < 1:
        return None
    # RoBERTa-style models reserve two positions for the padding offset.
    return limit - 2 if getattr(model_config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"} else limit


def check_max_length(model_config, max_length: int, name: str) -> None:
    usable = usable_positions(model_config)
    if usable and max_length > usable:
        raise ModelError(f"data.max_length={max_length} is above what {name} supports ({usable} tokens); set data.max_length <= {usable}")


def read_config_json(folder: Path) -> dict[str, Any]:
    """A model folder's config.json as a dict; ValueError when it is no JSON object, or its id2label no mapping."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict) or not isinstance(config.get("id2label", {}), dict):
        raise ValueError("its config.json is no model config (a JSON object, its id2label a mapping)")
    return config


def load_trained(path: str | Path):
    """(model, tokenizer) from a run folder (its `model/`) or a plain Hugging Face model folder, in eval mode."""

    folder = model_dir(path)
    transformers = _quiet_transformers()
    try:
        read_config_json(folder)  # transformers raises a TypeError for one that is no JSON object
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        with quiet_unpickler():
            model, loading = transformers.AutoModelForSequenceClassification.from_pretrained(folder, dtype=FP32, output_loading_info=True)
    except unreadable_weights() as exc:
        raise ModelError(f"{damaged_file(folder, exc) or folder}: cannot load the model ({load_reason(exc)}); replace the folder with a "
                         "complete copy, or train again") from None
    check_tokenizer(tokenizer, model.config, str(folder))
    if loading["missing_keys"]:  # not in the folder, so initialised at random: a bare encoder has no trained head
        missing = ", ".join(sorted(loading["missing_keys"])[:4]) + (", ..." if len(loading["missing_keys"]) > 4 else "")
        warnings.warn(f"{folder}: its classification head was never trained ({missing} not in the folder, so random); "
                      f"its predictions mean nothing until it is fine-tuned: bertcls train with model.name: {folder}",
                      BertclsWarning, stacklevel=2)
    model.bertcls_untrained_head = bool(loading["missing_keys"])  # export refuses such a model (`export._check_weights`)
    first_token.apply(model)
    return model.eval(), tokenizer


@contextmanager
def quiet_unpickler() -> Iterator[None]:
    """Silence torch's "Detected pickle protocol" warning: it comes just before torch refuses a pickled
    file, which our one-line error then explains."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def unreadable_weights() -> tuple[type[BaseException], ...]:
    """What loading a missing, damaged (cut short, not a weights file) or hostile (pickled code) model file raises."""
    from safetensors import SafetensorError

    return OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError


def save_model(model, tokenizer, dest: Path, state_dict: dict | None = None, threshold: float | None = None) -> None:
    """Write `dest` atomically: a complete new folder replaces the old one, never a half-written one.

    `state_dict`: the full weights when `model` itself holds only a shard of them (FSDP).
    A multi-label model's decision `threshold` goes into its config.json (`multi_label_threshold`).
    """

    if threshold is not None:
        setattr(model.config, THRESHOLD_KEY, float(threshold))
    with writing(dest):
        tmp = temp_dir_for(dest)
        try:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            publish_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # the previous model/ stays, and so does the disk space
            raise


def cut_long_texts(texts: Sequence[str], pairs: Sequence[str] | None, max_length: int):
    """(texts, pairs, rows cut): each text and pair text cut to max_length x CHARS_PER_TOKEN characters (`_cut`)."""
    bound = max_length * CHARS_PER_TOKEN
    cut = [i for i, text in enumerate(texts) if len(text) > bound or (pairs is not None and len(pairs[i]) > bound)]
    if not cut:
        return texts, pairs, cut
    texts, pairs = list(texts), list(pairs) if pairs is not None else None
    for i in cut:
        texts[i] = _cut(texts[i], bound)
        if pairs is not None:
            pairs[i] = _cut(pairs[i], bound)
    return texts, pairs, cut


# WordPiece reads a word longer than this as one unknown token (transformers' max_input_chars_per_word).
LONGEST_WORD = 100


def _cut(text: str, bound: int) -> str:
    """`text`'s first `bound` characters, less the word the bound cuts in two when what is left of it is short: cut
    under LONGEST_WORD characters, a word that is one unknown token whole would read as word pieces. A longer run
    (CJK text, which has no spaces; base64; a URL) stays: dropped, it would leave the text short and tokenised whole."""
    if len(text) <= bound:
        return text
    head = text[:bound]
    if not text[bound].isspace() and len(words := head.rsplit(None, 1)) == 2 and len(words[1]) <= LONGEST_WORD:
        return words[0]
    return head


# A tokenised row as `truncate_long_texts` takes it: (token ids, segment ids or None, whether truncation cut tokens off).
TokenRow = tuple[list[int], list[int] | None, bool]


def truncate_long_texts(encode: Callable[[Sequence[str], Sequence[str] | None], list[TokenRow]], texts: Sequence[str],
                        pairs: Sequence[str] | None, max_length: int) -> tuple[list[list[int]], list[list[int] | None], list[bool]]:
    """(token ids, segment ids, per row whether the text was longer than max_length): `encode` (a tokenizer that
    truncates at max_length) reads the texts cut by `cut_long_texts`, and again whole the rows the cut left short.
    Training, evaluation and every predictor truncate through here."""
    short_texts, short_pairs, cut = cut_long_texts(texts, pairs, max_length)
    rows = encode(short_texts, short_pairs)
    again = {i for i in cut if len(rows[i][0]) < max_length}  # cut too soon: these rows again, whole
    if pairs is not None:  # a side cut too soon can hide behind the other: truncation would have kept more of it
        sides = [(i, side[i]) for i in cut if i not in again for side, whole in ((short_texts, texts), (short_pairs, pairs))
                 if len(side[i]) < len(whole[i])]
        if sides:
            again |= {i for (i, _), (ids, _, _) in zip(sides, encode([text for _, text in sides], None), strict=True)
                      if len(ids) < max_length}
    if again:
        again = sorted(again)
        whole = encode([texts[i] for i in again], [pairs[i] for i in again] if pairs is not None else None)
        for i, row in zip(again, whole, strict=True):
            rows[i] = row
    # a row cut by characters that still fills max_length was longer, whatever truncation saw of the cut text
    was_cut = set(cut) - set(again)
    over = [len(ids) >= max_length and (overflowing or i in was_cut) for i, (ids, _, overflowing) in enumerate(rows)]
    return [ids for ids, _, _ in rows], [types for _, types, _ in rows], over


def pad_batch(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None, pad_id: int) -> dict[str, np.ndarray]:
    """A model's inputs for rows of token ids (and segment ids): int64 arrays padded to the longest row, never
    to max_length, with the attention mask. Training, evaluation and every predictor pad through here."""
    width = max(len(row) for row in ids)
    batch = {"input_ids": np.full((len(ids), width), pad_id, dtype=np.int64), "attention_mask": np.zeros((len(ids), width), dtype=np.int64)}
    if types is not None:
        batch["token_type_ids"] = np.zeros((len(ids), width), dtype=np.int64)
    for j, row in enumerate(ids):
        batch["input_ids"][j, : len(row)] = row
        batch["attention_mask"][j, : len(row)] = 1
        if types is not None:
            batch["token_type_ids"][j, : len(row)] = types[j]
    return batch
