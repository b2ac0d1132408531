"""Applying a trained bundle to molecules: `cft eval` and `cft predict`."""
