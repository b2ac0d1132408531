"""torch modules only: backbone, adapter banks, routing, the task graph, the model (no files, no data)."""
