"""Helpers for the reliability tests (docs/reliability.md), meant to be reused by every command.

- `cli(...)`: the real CLI in-process (same parsing, same error reporting, exit codes) - the heavy
  imports are paid once per session instead of once per case. `conftest.run_cli` remains the
  subprocess runner for what needs a real process (signals, tracebacks printed by Python).
- `snapshot(folder)` / `assert_unchanged(folder, before)`: "nothing was written" checks.
- `bad_bundles`, `bad_backbones`, `bad_priors`, `bad_csvs`: factories of broken inputs, each with
  the fragment of the error message cft must print. A new command that reads bundles (compose,
  predict, inspect-routing) gets its bundle rows of the table by looping over `bad_bundles(...)`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

BUILTIN_TASKS = ["halogen_any", "has_Cl", "has_Br", "ketone", "ester", "ether", "aromatic_rings_ge2", "molwt_gt_300"]


# --------------------------------------------------------------------------- in-process CLI


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cft ARGS` in this process through typer's test runner; returns what `run_cli` returns.
    Exceptions other than cft's own propagate (catch_exceptions=False), so a bug fails the test
    with its traceback instead of hiding in an exit code."""
    from typer.testing import CliRunner

    from cft.cli import get_app

    result = CliRunner().invoke(get_app(), [str(a) for a in args], env={"COLUMNS": "200", **(env or {})}, catch_exceptions=False)
    return subprocess.CompletedProcess(["cft", *map(str, args)], result.exit_code, result.stdout, result.stderr)


# --------------------------------------------------------------------------- nothing written


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folders`: path -> (size, mtime_ns)."""
    out = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = Path(root) / name
                st = p.lstat()
                out[str(p)] = (st.st_size if name in files else -1, st.st_mtime_ns)
    return out


def assert_unchanged(before: dict, *folders: Path) -> None:
    after = snapshot(*folders)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"written: {added}, removed: {removed}, changed: {changed}"


# --------------------------------------------------------------------------- broken inputs


@dataclass
class BadInput:
    path: Path
    expected: str  # a fragment of cft's error message


def _raw_safetensors(path: Path, tensors: dict, header: dict | None, raw_metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    metadata = raw_metadata if raw_metadata is not None else ({"cft": json.dumps(header, sort_keys=True)} if header is not None else None)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, cft header) of a file cft wrote."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["cft"])
    return load_file(str(path)), header


def bad_bundles(bundle: Path, out: Path) -> dict[str, BadInput]:
    """Broken variants of a valid bundle, written to `out` (put a copy of its backbone beside them
    so that only the damage, not a missing backbone, is what a command trips on)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    data = bundle.read_bytes()
    tensors, header = read_safetensors(bundle)
    cases: dict[str, BadInput] = {}

    def write(name: str, payload: bytes, expected: str) -> None:
        path = out / f"{name}.safetensors"
        path.write_bytes(payload)
        cases[name] = BadInput(path, expected)

    def variant(name: str, expected: str, tensors_=None, header_=None, raw_metadata=None) -> None:
        path = _raw_safetensors(out / f"{name}.safetensors", tensors if tensors_ is None else tensors_, header if header_ is None else header_, raw_metadata)
        cases[name] = BadInput(path, expected)

    def edited(change: Callable[[dict], None]) -> dict:
        copy = json.loads(json.dumps(header))
        change(copy)
        return copy

    write("empty", b"", "not a readable safetensors file")
    write("truncated", data[: len(data) // 2], "not a readable safetensors file")
    write("truncated_header", data[:20], "not a readable safetensors file")
    write("garbage", os.urandom(64) + b"not safetensors", "not a readable safetensors file")
    write("text", b"name,value\nfoo,1\n", "not a readable safetensors file")
    flipped = bytearray(data)
    flipped[8:40] = b"\xff" * 32  # inside the JSON header
    write("corrupt_header", bytes(flipped), "not a readable safetensors file")
    variant("missing_tensor", "missing tensors", tensors_={k: v for i, (k, v) in enumerate(sorted(tensors.items())) if i != 0})
    variant("extra_tensor", "unexpected tensors", tensors_={**tensors, "adapters.99.U": torch.zeros(2, 2)})
    first = sorted(k for k in tensors if k.startswith("adapters."))[0]
    variant("wrong_shape", "disagree with its metadata", tensors_={**tensors, first: torch.zeros(*(s + 1 for s in tensors[first].shape))})
    variant("wrong_dtype", "disagree with its metadata", tensors_={**tensors, first: tensors[first].double()})
    variant("metadata_rank", "disagree with its metadata", header_=edited(lambda h: h["spec"]["parts"][0].update(rank=h["spec"]["parts"][0]["rank"] + 1)))
    variant("metadata_more_tasks", "more than its tensors hold", header_=edited(lambda h: (h["spec"]["tasks"].extend(f"t{i}" for i in range(200)), h["spec"]["kinds"].extend(["binary"] * 200), h["spec"]["parts"][0]["tasks"].extend(f"t{i}" for i in range(200)))))
    variant("metadata_huge_adapters", "parts.0.num_adapters: Input should be less than or equal to 256", header_=edited(lambda h: h["spec"]["parts"][0].update(num_adapters=10**9)))
    variant("metadata_wrong_type", "metadata is damaged", header_=edited(lambda h: h["spec"].update(tasks="halogen_any")))
    variant("metadata_bad_value", "parts.0.temperature: Input should be greater than 0", header_=edited(lambda h: h["spec"]["parts"][0].update(temperature=-1.0)))
    variant("metadata_not_json", "not valid JSON", raw_metadata={"cft": "{not json"})
    variant("metadata_data_config", "recorded data settings are damaged", header_=edited(lambda h: h["data"].update(config=["csv", "x.csv"])))
    variant("not_cft", "not one written by cft", raw_metadata={"format": "pt"})
    variant("format_version", "format version '99'", header_=edited(lambda h: h.update(format_version="99")))
    variant("format_kind", "is not a cft bundle", header_=edited(lambda h: h.update(format="something-else")))
    variant("nan_tensor", "NaN or inf", tensors_={**tensors, first: torch.full_like(tensors[first], float("nan"))})
    variant("fingerprint", "needs backbone", header_=edited(lambda h: h.update(backbone_fingerprint="0" * 32)))
    return cases


def bad_backbones(backbone: Path, bundle: Path, out: Path) -> dict[str, BadInput]:
    """Broken variants of a valid backbone file."""
    import torch

    from cft.files.backbone import fingerprint
    from cft.spec import BackboneSpec

    out.mkdir(parents=True, exist_ok=True)
    data = backbone.read_bytes()
    tensors, header = read_safetensors(backbone)
    cases: dict[str, BadInput] = {}
    (out / "truncated.safetensors").write_bytes(data[: len(data) // 3])
    cases["truncated"] = BadInput(out / "truncated.safetensors", "not a readable safetensors file")
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    tampered = {**tensors, name: tensors[name] + 1.0}
    cases["tampered"] = BadInput(_raw_safetensors(out / "tampered.safetensors", tampered, header), "does not match its tensors")
    bigger = json.loads(json.dumps(header))
    bigger["config"]["hidden"] = 64
    cases["config_shapes"] = BadInput(_raw_safetensors(out / "config_shapes.safetensors", tensors, bigger), "do not match its config")
    absurd = json.loads(json.dumps(header))
    absurd["config"]["hidden"] = 10**9
    cases["config_absurd"] = BadInput(_raw_safetensors(out / "config_absurd.safetensors", tensors, absurd), "hidden: Input should be less than or equal to 4096")
    nan = {**tensors, name: torch.full_like(tensors[name], float("nan"))}
    nan_header = {**header, "fingerprint": fingerprint(BackboneSpec(**header["config"]), nan)}
    cases["nan"] = BadInput(_raw_safetensors(out / "nan.safetensors", nan, nan_header), "NaN or inf")
    cases["a_bundle"] = BadInput(bundle, "That is a bundle")
    version = {**header, "format_version": "7"}
    cases["format_version"] = BadInput(_raw_safetensors(out / "version.safetensors", tensors, version), "format version '7'")
    return cases


class _Canary:
    """Unpickling this object creates a folder: proof that something was (or was not) unpickled."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def pickled_npy(path: Path, canary: Path) -> Path:
    """A .npy holding a pickled object whose unpickling would create `canary`."""
    array = np.empty((2, 2), dtype=object)
    array[:] = _Canary(canary)
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=True)
    return path


def bad_priors(tasks: list[str], out: Path) -> dict[str, BadInput]:
    """Broken relation matrices for `tasks` (.npy and .csv)."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    t = len(tasks)
    good = np.full((t, t), 0.2, dtype=np.float32)
    np.fill_diagonal(good, 1.0)
    cases: dict[str, BadInput] = {}

    def npy(name: str, array, expected: str) -> None:
        path = out / f"{name}.npy"
        np.save(path, array, allow_pickle=False)
        cases[name] = BadInput(path, expected)

    npy("wrong_shape", good[:3, :3], f"is 3x3 but there are {t} tasks")
    npy("not_square", good[:, :-1], "must be square")
    npy("three_d", good[None], "must be square")
    with_nan = good.copy()
    with_nan[1, 2] = with_nan[2, 1] = np.nan
    npy("nan", with_nan, "NaN or inf")
    with_inf = good.copy()
    with_inf[0, 1] = with_inf[1, 0] = np.inf
    npy("inf", with_inf, "NaN or inf")
    negative = good.copy()
    negative[0, 3] = negative[3, 0] = -0.5
    npy("negative", negative, "negative entries")
    asymmetric = good.copy()
    asymmetric[0, 1] = 0.9
    npy("asymmetric", asymmetric, "not symmetric")
    npy("strings", np.array([["a"] * t] * t), "must hold numbers")
    whole = out / "whole.npy"
    np.save(whole, good, allow_pickle=False)
    (out / "truncated.npy").write_bytes(whole.read_bytes()[:-40])
    cases["truncated"] = BadInput(out / "truncated.npy", "truncated")
    huge = io.BytesIO()  # a header whose shape's size overflows int64 (found by the fuzzer)
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f8", "fortran_order": False, "shape": (2**62, 2**62)})
    (out / "huge_shape.npy").write_bytes(huge.getvalue() + bytes(64))
    cases["huge_shape"] = BadInput(out / "huge_shape.npy", "too large for any array")
    (out / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    cases["garbage"] = BadInput(out / "garbage.npy", "not a valid .npy array")
    cases["pickled"] = BadInput(pickled_npy(out / "pickled.npy", out / "CANARY-unpickled"), "refuses to unpickle")
    renamed = list(tasks)
    renamed[-1] = "not_a_task"
    pd.DataFrame(good, index=renamed, columns=renamed).to_csv(out / "names.csv")
    cases["csv_names"] = BadInput(out / "names.csv", "task names do not match")
    pd.DataFrame(good, index=list(tasks), columns=list(reversed(tasks))).to_csv(out / "header_index.csv")
    cases["csv_header_index"] = BadInput(out / "header_index.csv", "header and the index")
    words = pd.DataFrame(good, index=list(tasks), columns=list(tasks)).astype(object)
    words.iloc[0, 1] = "high"
    words.to_csv(out / "words.csv")
    cases["csv_not_numbers"] = BadInput(out / "words.csv", "must be a number")
    (out / "binary.csv").write_bytes(b"\x00\xff\xfe" * 50)
    cases["csv_unreadable"] = BadInput(out / "binary.csv", "not a readable CSV relation matrix")
    cases["missing"] = BadInput(out / "absent.npy", "does not exist")
    (out / "matrix.txt").write_text("1 0\n0 1\n")
    cases["suffix"] = BadInput(out / "matrix.txt", "expected .npy or .csv")
    return cases


def molecules(n: int, start: int = 0) -> list[str]:
    """`n` SMILES from the rdkit wheel's NCI set (the builtin dataset's molecules) that RDKit parses."""
    from cft.data.builtin import builtin_molecules

    return builtin_molecules(n, start)


def labelled_csv(path: Path, n: int = 120) -> Path:
    """A small chemprop-style CSV (smiles, two binary tasks with both classes) that trains."""
    smiles = molecules(n)
    rows = ["smiles,has_N,has_O"] + [f"{s},{int('N' in s)},{int('O' in s)}" for s in smiles]
    path.write_text("\n".join(rows) + "\n")
    return path


# the names of bad_csvs()'s cases, spelled out so that tests can parametrise over them
CSV_CASES = [
    "all_labels_missing_strict", "binary_garbage", "binary_kind_mismatch", "bad_split_value", "empty_file", "empty_test", "empty_valid",
    "header_only", "infinite_label", "missing_file", "missing_split_column", "mixed_kinds", "no_smiles_column", "no_smiles_parse",
    "no_task_column", "no_train_labels", "non_numeric_label", "repeated_header", "task_glob_matches_nothing", "unparseable_strict",
]


def bad_csvs(out: Path) -> dict[str, tuple[str | bytes | None, dict, str]]:
    """Broken CSV datasets: name -> (file text/bytes, or None for absent; extra data settings; expected)."""
    good = molecules(40)
    body = "".join(f"{s},{i % 2}\n" for i, s in enumerate(good))
    split = "".join(f"{s},{i % 2},{'train' if i < 30 else 'test'}\n" for i, s in enumerate(good))
    no_train_labels = "".join(f"{s},{i % 2},{'' if i < 30 else i % 2},{'train' if i < 30 else ('valid' if i < 35 else 'test')}\n" for i, s in enumerate(good))
    return {
        "missing_file": (None, {}, "does not exist"),
        "empty_file": ("", {}, "is empty"),
        "header_only": ("smiles,a\n", {}, "has a header but no data rows"),
        "binary_garbage": (b"smiles,a\nCCO,1\n" + b"\xff\xfe\xfa,\x00\n" * 5, {}, "not a readable CSV"),
        "no_smiles_column": ("mol,a\n" + body, {"smiles_column": "smiles"}, "has no SMILES column 'smiles'"),
        "no_task_column": ("smiles\n" + "".join(f"{s}\n" for s in good), {}, "no task columns"),
        "non_numeric_label": ("smiles,a\n" + body + "CCO,maybe\n", {}, "label 'maybe' is not a number"),
        "infinite_label": ("smiles,a\n" + body + "CCO,inf\n", {}, "found inf"),
        "all_labels_missing_strict": ("smiles,a,b\n" + "".join(f"{s},{i % 2},\n" for i, s in enumerate(good)), {"strict": True}, "1 task column(s) have no label in any row: b"),
        "repeated_header": ("smiles,a,b,a\n" + "".join(f"{s},{i % 2},1,0\n" for i, s in enumerate(good)), {}, "the header repeats 1 column name(s): 'a' in columns 2, 4"),
        "no_smiles_parse": ("smiles,a\n" + "".join(f"notasmiles{i},{i % 2}\n" for i in range(20)), {}, "no SMILES could be parsed"),
        "unparseable_strict": ("smiles,a\n" + body + "C1CC,1\nnot_a_molecule,0\n", {"strict": True}, "2 SMILES cannot be parsed by RDKit (row 42: 'C1CC'; row 43: 'not_a_molecule')"),
        "no_train_labels": ("smiles,a,b,split\n" + no_train_labels, {"split": {"method": "column", "column": "split"}, "strict": True}, "b have no labels in the training split (data.strict: true refuses them)"),
        "empty_valid": ("smiles,a,split\n" + split, {"split": {"method": "column", "column": "split"}}, "leaves valid empty"),
        "empty_test": ("smiles,a\n" + body, {"split": {"method": "random", "fractions": [0.9, 0.1, 0.0]}}, "leaves test empty"),
        "bad_split_value": ("smiles,a,split\n" + split.replace(",test\n", ",tst\n", 1), {"split": {"method": "column", "column": "split"}}, "split value 'tst' is not train, valid or test"),
        "missing_split_column": ("smiles,a\n" + body, {"split": {"method": "column", "column": "fold"}}, "has no split column 'fold'"),
        "task_glob_matches_nothing": ("smiles,a\n" + body, {"tasks": ["NR-*"]}, "matches no column"),
        "binary_kind_mismatch": ("smiles,a\n" + "".join(f"{s},{i * 0.5}\n" for i, s in enumerate(good)), {"task_kinds": {"a": "binary"}}, "says binary but the labels are not all 0/1"),
        "mixed_kinds": ("smiles,a,b\n" + "".join(f"{s},{i % 2},{i * 0.5}\n" for i, s in enumerate(good)), {}, "mix binary and regression"),
    }
