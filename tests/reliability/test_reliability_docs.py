"""docs/reliability.md names the test behind every row: those tests must exist."""

from __future__ import annotations

import re

from conftest import REPO

FILES = {
    "inputs": "reliability/test_reliability_inputs.py",
    "compose_inputs": "reliability/test_reliability_compose.py",
    "faults": "reliability/test_reliability_faults.py",
    "security": "reliability/test_reliability_security.py",
    "fuzz": "reliability/test_reliability_fuzz.py",
    "recipe": "recipe/test_recipe.py",
    "data": "data/test_data.py",
    "cli_train": "cli/test_cli_train.py",
    "cli_ablate": "cli/test_cli_ablate.py",
    "compose": "compose/test_compose.py",
    "prior_inspect_predict": "cli/test_cli_prior_inspect_predict.py",
    "determinism": "training/test_determinism.py",
}


def test_every_test_named_in_the_reliability_table_exists():
    doc = (REPO / "docs" / "reliability.md").read_text()
    references = re.findall(r"(?<![\w.])(" + "|".join(FILES) + r")::([a-z0-9_]+(?:\.\.\.)?)", doc)
    assert len(references) > 60
    missing = []
    for prefix, name in references:
        assert prefix in FILES, f"unknown prefix {prefix}:: in docs/reliability.md"
        source = (REPO / "tests" / FILES[prefix]).read_text()
        defined = set(re.findall(r"^def test_([a-z0-9_]+)\(", source, re.M))
        wanted = name.removesuffix("...")
        ok = any(d.startswith(wanted) for d in defined) if name.endswith("...") else wanted in defined
        if not ok:
            missing.append(f"{prefix}::{name}")
    assert not missing, "docs/reliability.md names tests that do not exist: " + ", ".join(missing)


def test_every_reliability_test_is_in_the_table():
    doc = (REPO / "docs" / "reliability.md").read_text()
    unlisted = []
    for prefix in ("inputs", "compose_inputs", "faults", "security", "fuzz"):
        source = (REPO / "tests" / FILES[prefix]).read_text()
        for name in re.findall(r"^def test_([a-z0-9_]+)\(", source, re.M):
            listed = f"{prefix}::{name}" in doc or any(
                f"{prefix}::{name[:n]}..." in doc for n in range(10, len(name))
            )
            if not listed:
                unlisted.append(f"{prefix}::{name}")
    assert not unlisted, "tests missing from docs/reliability.md: " + ", ".join(unlisted)
