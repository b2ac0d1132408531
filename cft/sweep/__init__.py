"""`cft ablate`: sweeps of recipe knobs as real training runs, with results and plots."""
