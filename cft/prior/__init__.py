"""Task relation matrices (the structural prior): from labels, files, datasets and bundles."""
