"""fashiontune: fine-tune and evaluate CLIP-style models on fashion catalogues."""

__version__ = "0.1.0"
