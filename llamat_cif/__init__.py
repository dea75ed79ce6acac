"""llamat-cif: crystal generation with language models (LLaMat-CIF) and stability screening."""

__version__ = "0.1.0"
