"""Training: backbone source, model building, optimiser, the loop, checkpoints, pretraining, processes."""
