"""Train the quickstart with a fixed seed and print the sha256 of every tensor of its bundle.

Used to prove that a refactoring changes no behaviour: run it on the commit before and after,
and compare the printed lines (they are sorted by tensor name)::

    python scripts/bundle_hashes.py --out /tmp/qs-before     # on the old commit
    python scripts/bundle_hashes.py --out /tmp/qs-after      # on the new one
    diff <(python scripts/bundle_hashes.py --bundle /tmp/qs-before/bundle.safetensors) \
         <(python scripts/bundle_hashes.py --bundle /tmp/qs-after/bundle.safetensors)

Only ``safetensors`` and ``numpy`` are read here: the hashes do not depend on cft's own code.
Training runs with one CPU thread by default: two runs at one thread are identical, while at two
threads about one run in twenty was seen to differ in the last bits (AVX2 kernels under load).
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

from safetensors.numpy import load_file


def tensor_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of each tensor's raw bytes, with its dtype and shape, keyed by name."""
    out = {}
    for name, array in sorted(load_file(str(bundle)).items()):
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        out[name] = f"{digest} {array.dtype} {list(array.shape)}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="run folder to train the quickstart into")
    parser.add_argument("--bundle", type=Path, help="hash an existing bundle instead of training")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="train.threads of the run (1: deterministic)")
    args = parser.parse_args()
    bundle = args.bundle
    if bundle is None:
        if args.out is None:
            parser.error("give --out (train) or --bundle (hash only)")
        cmd = [sys.executable, "-m", "cft", "train", args.recipe, "-o", str(args.out),
               "--overwrite", "--set", f"seed={args.seed}", "--set", f"train.threads={args.threads}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        bundle = args.out / "bundle.safetensors"
    for name, line in tensor_hashes(bundle).items():
        print(f"{name} {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
