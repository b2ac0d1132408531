"""README's "Coming from chemprop / PEFT" tables: every test a row names exists, so each cft command there is run by a test."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sections(text: str) -> str:
    start = text.index("## Coming from chemprop")
    return text[start:text.index("## Quickstart, measured", start)]


def test_every_command_of_the_peer_tables_names_an_existing_test():
    block = _sections((REPO / "README.md").read_text())
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10, rows
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", row)
        assert refs, f"a row without its test: {row}"
        for path, name in refs:
            source = (REPO / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} (named in README) does not exist"
