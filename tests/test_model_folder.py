"""Training from a model folder (`model.name: FOLDER`): the encoder keeps the folder's weights, the classification
head starts fresh from the seed, also where the folder's head has as many labels as the new run."""

import pytest
import torch
from safetensors.torch import load_file

from bertcls.config import ModelConfig
from bertcls.model import load_model
from tiny_models import ARCHITECTURES, build

LABELS = {0: "2", 1: "10"}  # as many labels as the folders' heads, named otherwise: their rows must not carry over
TEXTS = ["a wonderful film", "dreadful acting", "the plot was great and the cast superb", "boring"] * 10


def loaded(folder, seed: int) -> tuple[dict, dict]:
    """(head, encoder): the weights `load_model` starts training with from `folder`, after seeding as train does."""
    from accelerate.utils import set_seed

    set_seed(seed)
    model, _ = load_model(ModelConfig(name=str(folder)), LABELS, 32)
    encoder = model.base_model_prefix + "."
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return ({k: v for k, v in state.items() if not k.startswith(encoder)}, {k: v for k, v in state.items() if k.startswith(encoder)})


def test_a_trained_head_with_as_many_labels_is_not_reused(trained_run):
    """The shared run's head was trained on negative/positive: none of it (weights or biases) may become 2/10's."""
    saved = load_file(trained_run / "model" / "model.safetensors")
    head, encoder = loaded(trained_run / "model", seed=8)
    assert head and encoder.keys() <= saved.keys()
    assert [name for name in head if torch.equal(head[name], saved[name])] == []
    assert all(torch.equal(tensor, saved[name]) for name, tensor in encoder.items()), "the encoder must keep its trained weights"
    again, _ = loaded(trained_run / "model", seed=8)
    other, _ = loaded(trained_run / "model", seed=9)
    assert all(torch.equal(head[name], again[name]) for name in head), "the same seed must give the same head"
    assert not torch.equal(head["classifier.weight"], other["classifier.weight"]), "the seed must set the head"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_starts_its_whole_head_fresh(architecture, tmp_path):
    """The head is everything outside the encoder: DistilBERT's pre_classifier, RoBERTa's and ELECTRA's dense layer,
    DeBERTa's pooler and ModernBERT's head too; BERT's pooler is the encoder's and stays."""
    folder = build(architecture, tmp_path / architecture, TEXTS)
    saved = load_file(folder / "model.safetensors")
    head, encoder = loaded(folder, seed=8)
    matrices = [name for name, tensor in head.items() if tensor.dim() == 2]
    assert len(matrices) == (1 if architecture in ("bert", "albert") else 2)
    assert [name for name in matrices if torch.equal(head[name], saved[name])] == []
    assert all(torch.equal(tensor, saved[name]) for name, tensor in encoder.items() if name in saved)
    again, _ = loaded(folder, seed=8)
    assert all(torch.equal(head[name], again[name]) for name in head)


@pytest.mark.parametrize("architecture, positions, usable", [("bert", 24, 24), ("roberta", 24, 22)])
def test_a_plain_folder_whose_tokenizer_allows_more_than_its_positions_reads_what_the_model_takes(architecture, positions, usable, tmp_path):
    """A folder outside a run reads as many tokens as its tokenizer allows, but never past the position embeddings
    (RoBERTa's two offset positions aside): a long text is cut there, not a crash inside the model."""
    import transformers

    from bertcls.predict import Predictor
    from tiny_models import CONFIGS, TOKENIZERS

    tokenizer = TOKENIZERS[architecture](TEXTS)
    config = CONFIGS[architecture](tokenizer)
    config.max_position_embeddings = positions
    folder = tmp_path / architecture
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert transformers.AutoTokenizer.from_pretrained(folder).model_max_length > positions
    predictor = Predictor.load(folder, device="cpu", precision="fp32")
    assert predictor.max_length == usable
    long = " ".join(TEXTS * 5)  # well over `positions` tokens
    assert [p.label for p in predictor.predict([long, "boring"])] == [predictor.predict([long])[0].label, predictor.predict(["boring"])[0].label]
