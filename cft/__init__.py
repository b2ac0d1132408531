"""cft: composable fine-tuning of graph neural networks for molecular property prediction."""

__version__ = "0.1.0"
