"""`python -m cft` (also what `torchrun -m cft` starts on every rank)."""

from cft.cli import main

if __name__ == "__main__":
    main()
