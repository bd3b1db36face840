"""synthir: LLM-synthesized training data for compact dense retrievers."""

__version__ = "0.1.0"
