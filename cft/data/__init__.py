"""Datasets: builtin (offline), chemprop-style CSV, OGB; all end up as a `MolDataset`.

The public entry points are re-exported here; inside cft, modules import the submodule that
defines a name (`cft.data.dataset`), so that no module depends on this package's face.
"""

from cft.data.dataset import MolDataset, load_dataset

__all__ = ["MolDataset", "load_dataset"]
