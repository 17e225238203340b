"""Fine-tune Flan-T5 on SAMSum and serve it on Vertex AI: the library behind the notebooks and the CLI."""

__version__ = "0.1.0"
