"""bertcls: fine-tune BERT-family text classifiers from a YAML config, then predict with them."""

__version__ = "0.1.0"
