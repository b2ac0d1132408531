"""Bad input through the composition commands (`cft compose`, `cft prior build|show`,
`cft inspect-routing`, `cft predict`): a clear error, exit code 2, no traceback, nothing written.

The rows of docs/reliability.md for these commands (`compose_inputs::NAME[case]`). The broken
inputs come from tests/reliability_kit.py, the same factories the `cft train`/`cft eval` rows use;
the two tiny bundles are conftest's session fixture `tiny_parts` (shared with tests/test_compose.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_PART_TASKS, assert_user_error
from reliability_kit import (
    CSV_CASES,
    assert_unchanged,
    bad_bundles,
    bad_csvs,
    bad_priors,
    cli,
    molecules,
    snapshot,
)

A_TASKS, B_TASKS = TINY_PART_TASKS

BUNDLE_CASES = [
    "corrupt_header", "empty", "extra_tensor", "fingerprint", "format_kind", "format_version", "garbage", "metadata_bad_value", "metadata_data_config",
    "metadata_huge_adapters", "metadata_more_tasks", "metadata_not_json", "metadata_rank", "metadata_wrong_type",
    "missing_tensor", "nan_tensor", "not_cft", "text", "truncated", "truncated_header", "wrong_dtype", "wrong_shape",
]


@pytest.fixture(scope="module")
def broken(tiny_parts, tmp_path_factory) -> dict:
    """Every bad bundle of `bad_bundles`, made from bundle B, with B's backbone beside them."""
    folder = tmp_path_factory.mktemp("broken")
    shutil.copyfile(tiny_parts["B"].parent / "backbone.safetensors", folder / "backbone.safetensors")
    cases = bad_bundles(tiny_parts["B"], folder)
    assert sorted(cases) == sorted(BUNDLE_CASES), "keep BUNDLE_CASES (and docs/reliability.md) in step with bad_bundles()"
    return cases


def _refused(result, *fragments: str, before: dict, folders: tuple, absent: tuple = ()) -> None:
    """Exit 2 with the fragments, no traceback, nothing under the output names, no folder changed."""
    assert_user_error(result, *fragments)
    for path in absent:
        assert not Path(path).exists(), f"{path} was written"
    assert_unchanged(before, *folders)


# ------------------------------------------------------------------ cft compose


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bad_bundle_is_refused_by_compose(tiny_parts, broken, tmp_path, case):
    bad = broken[case]
    # a bundle whose backbone fingerprint differs composes with nothing: the bank shares one frozen backbone
    expected = "same frozen backbone" if case == "fingerprint" else bad.expected
    out = tmp_path / "AB.safetensors"
    before = snapshot(tmp_path, bad.path.parent)
    _refused(cli("compose", tiny_parts["A"], bad.path, "-o", out), expected, before=before, folders=(tmp_path, bad.path.parent), absent=(out,))


# tests/test_compose.py::test_refuses_bad_priors covers these cases of bad_priors with its own files
PRIORS_IN_TEST_COMPOSE = {"wrong_shape", "nan", "inf", "negative", "asymmetric", "pickled", "missing", "garbage", "csv_names"}
PRIOR_CASES = ["csv_header_index", "csv_not_numbers", "csv_unreadable", "huge_shape", "not_square", "strings", "suffix", "three_d", "truncated"]


@pytest.mark.parametrize("case", PRIOR_CASES)
def test_bad_prior_is_refused_by_compose(tiny_parts, tmp_path, case):
    cases = bad_priors(A_TASKS + B_TASKS, tmp_path / "priors")
    assert sorted(cases) == sorted(PRIORS_IN_TEST_COMPOSE | set(PRIOR_CASES)), "every bad prior is covered here or in test_compose.py"
    out = tmp_path / "AB.safetensors"
    before = snapshot(tmp_path)
    _refused(cli("compose", tiny_parts["A"], tiny_parts["B"], "--prior", cases[case].path, "-o", out), cases[case].expected,
             before=before, folders=(tmp_path,), absent=(out,))


def test_compose_output_paths(tiny_parts, tmp_path, unwritable_parent):
    """-o a folder, the wrong suffix, one of the inputs, or in a folder cft cannot write to: refused,
    nothing written. An existing file is replaced (atomically), as `--json` of `cft eval` is."""
    a, b = tiny_parts["A"], tiny_parts["B"]
    folder = tmp_path / "AB.safetensors"
    folder.mkdir()
    before = snapshot(tmp_path, a.parent)
    _refused(cli("compose", a, b, "-o", folder), "is a folder", before=before, folders=(tmp_path, a.parent))
    _refused(cli("compose", a, b, "-o", tmp_path / "AB.bin"), "written as .safetensors", before=before, folders=(tmp_path, a.parent), absent=(tmp_path / "AB.bin",))
    _refused(cli("compose", a, b, "-o", a), "is one of the bundles to compose", before=before, folders=(tmp_path, a.parent))
    _refused(cli("compose", a, b, "-o", unwritable_parent / "AB.safetensors"), "Cannot write", before=before, folders=(tmp_path, a.parent))
    assert not (unwritable_parent / "AB.safetensors").exists()
    existing = tmp_path / "old.safetensors"
    existing.write_bytes(b"an older file")
    result = cli("compose", a, b, "-o", existing)
    assert result.returncode == 0, result.stderr
    from cft.files.bundle import read_bundle_info

    assert read_bundle_info(existing).spec.tasks == A_TASKS + B_TASKS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AB.safetensors", "old.safetensors"], "no temporary file left"


def test_compose_writes_the_bundle_atomically(tiny_parts, tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves the old file under the name and no temporary."""
    import errno
    import os

    import cft.files.stfile

    target = tmp_path / "AB.safetensors"
    target.write_bytes(b"the previous bundle")
    real = cft.files.stfile.save_file

    def disk_full(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cft.files.stfile, "save_file", disk_full)
    assert_user_error(cli("compose", tiny_parts["A"], tiny_parts["B"], "-o", target), "Cannot write", "No space left on device")
    assert target.read_bytes() == b"the previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AB.safetensors"], "no temporary file left"


# ------------------------------------------------------------------ cft prior build | show


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_is_refused_by_prior_build(tmp_path, case):
    """`--data FILE.csv` when the case needs no data settings, else `--data RECIPE.yaml` whose data
    section holds them (the two forms --data takes)."""
    cases = bad_csvs(tmp_path)
    assert sorted(cases) == sorted(CSV_CASES), "keep CSV_CASES (and docs/reliability.md) in step with bad_csvs()"
    text, settings, expected = cases[case]
    csv = tmp_path / "data.csv"
    if text is not None:
        csv.write_bytes(text if isinstance(text, bytes) else text.encode())
    data = csv
    if settings:
        data = tmp_path / "data.yaml"
        data.write_text(yaml.safe_dump({"data": {"source": "csv", "path": str(csv), **settings}}))
    out = tmp_path / "out" / "rel.npy"
    before = snapshot(tmp_path)
    _refused(cli("prior", "build", "--data", data, "-o", out, "--png", tmp_path / "out" / "rel.png", "--min-support", "1"), expected,
             before=before, folders=(tmp_path,), absent=(out, tmp_path / "out"))


def _labels(path: Path) -> Path:
    smiles = molecules(60)
    path.write_text("smiles,has_N,has_O\n" + "".join(f"{s},{int('N' in s)},{int('O' in s)}\n" for s in smiles))
    return path


def test_prior_build_output_paths(tmp_path, unwritable_parent):
    """Unwritable -o or --png, a folder in their place, a folder where the task-name list goes: refused,
    and nothing of the three files (matrix, task names, picture) is written."""
    csv = _labels(tmp_path / "d.csv")
    build = ("prior", "build", "--data", csv, "--min-support", "1")
    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "side.tasks.json").mkdir()
    (tmp_path / "pic.png").mkdir()
    before = snapshot(tmp_path)
    folders = (tmp_path,)
    _refused(cli(*build, "-o", unwritable_parent / "rel.npy"), "Cannot write", before=before, folders=folders, absent=(unwritable_parent / "rel.npy",))
    _refused(cli(*build, "-o", tmp_path / "dir.npy"), "Cannot write", before=before, folders=folders)
    _refused(cli(*build, "-o", tmp_path / "side.npy"), "Cannot write", "side.tasks.json", before=before, folders=folders, absent=(tmp_path / "side.npy",))
    _refused(cli(*build, "-o", tmp_path / "rel.npy", "--png", unwritable_parent / "rel.png"), "Cannot write", before=before, folders=folders, absent=(tmp_path / "rel.npy",))
    _refused(cli(*build, "-o", tmp_path / "rel.csv", "--png", tmp_path / "pic.png"), "Cannot write", before=before, folders=folders, absent=(tmp_path / "rel.csv",))
    _refused(cli(*build, "-o", tmp_path / "rel.txt"), "as .npy or .csv", before=before, folders=folders)
    ok = cli(*build, "-o", tmp_path / "rel.npy", "--png", tmp_path / "rel.png")
    assert ok.returncode == 0, ok.stderr
    assert {"rel.npy", "rel.tasks.json", "rel.png"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left"


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bad_bundle_is_refused_by_prior_show(broken, tmp_path, case):
    bad = broken[case]
    if case == "fingerprint":  # the prior is read without the backbone
        result = cli("prior", "show", bad.path, "--png", tmp_path / "p.png")
        assert result.returncode == 0 and (tmp_path / "p.png").exists(), result.stderr
        return
    before = snapshot(tmp_path, bad.path.parent)
    _refused(cli("prior", "show", bad.path, "--png", tmp_path / "p.png"), bad.expected, before=before, folders=(tmp_path, bad.path.parent), absent=(tmp_path / "p.png",))


@pytest.mark.parametrize("case", sorted(set(PRIOR_CASES) | PRIORS_IN_TEST_COMPOSE - {"wrong_shape", "csv_names"}))
def test_bad_matrix_is_refused_by_prior_show(tmp_path, case):
    """Every bad prior but the two that are only wrong for a given model's tasks (shape, names)."""
    bad = bad_priors(A_TASKS + B_TASKS, tmp_path / "priors")[case]
    before = snapshot(tmp_path)
    expected = {"missing": "does not exist", "suffix": "expected a .npy or .csv"}.get(case, bad.expected)
    _refused(cli("prior", "show", bad.path, "--png", tmp_path / "p.png"), expected, before=before, folders=(tmp_path,), absent=(tmp_path / "p.png",))
    assert not (tmp_path / "priors" / "CANARY-unpickled").exists(), "the pickled .npy was unpickled"


# ------------------------------------------------------------------ cft inspect-routing


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bad_bundle_is_refused_by_inspect_routing(broken, tmp_path, case):
    bad = broken[case]
    args = ("inspect-routing", bad.path, "--png", tmp_path / "r.png", "--json", tmp_path / "r.json")
    if case == "fingerprint":  # routes are read without the backbone: a bundle whose backbone is elsewhere is still shown
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "r.json").exists() and (tmp_path / "r.png").exists()
        return
    before = snapshot(tmp_path, bad.path.parent)
    _refused(cli(*args), bad.expected, before=before, folders=(tmp_path, bad.path.parent), absent=(tmp_path / "r.png", tmp_path / "r.json"))


def test_inspect_routing_of_a_run_without_a_bundle_or_with_unwritable_outputs(tiny_parts, tmp_path, unwritable_parent):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    before = snapshot(tmp_path)
    _refused(cli("inspect-routing", run), "has no bundle.safetensors", "--resume", before=before, folders=(tmp_path,))
    _refused(cli("inspect-routing", tmp_path / "absent.safetensors"), "does not exist", before=before, folders=(tmp_path,))
    bundle = tiny_parts["A"]
    (tmp_path / "dir.json").mkdir()
    before = snapshot(tmp_path)
    # either output unwritable: neither is written
    _refused(cli("inspect-routing", bundle, "--png", unwritable_parent / "r.png", "--json", tmp_path / "r.json"), "Cannot write",
             before=before, folders=(tmp_path,), absent=(tmp_path / "r.json",))
    _refused(cli("inspect-routing", bundle, "--png", tmp_path / "r.png", "--json", unwritable_parent / "r.json"), "Cannot write",
             before=before, folders=(tmp_path,), absent=(tmp_path / "r.png",))
    _refused(cli("inspect-routing", bundle, "--png", tmp_path / "r.png", "--json", tmp_path / "dir.json"), "Cannot write",
             before=before, folders=(tmp_path,), absent=(tmp_path / "r.png",))


def test_task_names_that_look_like_markup_are_shown_verbatim(tiny_parts, tmp_path):
    """Task names come from bundle metadata: `[bold]x[/]` is a name, not rich markup (a bare closing
    tag would crash rich's parser), in the terminal heatmap, the JSON, `prior show` and `predict`."""
    names = {A_TASKS[0]: "[bold]x[/]", A_TASKS[1]: "[/]", B_TASKS[0]: "[red]ester"}
    renames = [x for old, new in names.items() for x in ("--rename", f"{old}={new}")]
    bundle = tmp_path / "markup.safetensors"
    made = cli("compose", tiny_parts["A"], tiny_parts["B"], *renames, "-o", bundle)
    assert made.returncode == 0, made.stderr
    shown = cli("inspect-routing", bundle, "--json", tmp_path / "r.json", env={"COLUMNS": "120"})
    assert shown.returncode == 0, shown.stderr
    for name in names.values():
        assert name in shown.stdout, f"{name!r} not shown verbatim:\n{shown.stdout}"
    assert json.loads((tmp_path / "r.json").read_text())["tasks"][:2] == ["[bold]x[/]", "[/]"]
    prior = cli("prior", "show", bundle, env={"COLUMNS": "120"})
    assert prior.returncode == 0, prior.stderr
    assert all(name in prior.stdout for name in names.values()), prior.stdout
    shutil.copyfile(tiny_parts["A"].parent / "backbone.safetensors", tmp_path / "backbone.safetensors")
    scored = cli("predict", bundle, "--input", tiny_parts["smiles"], "-o", tmp_path / "p.csv")
    assert scored.returncode == 0, scored.stderr
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")  # the input's columns, then one per task
    assert header[header.index("[bold]x[/]"):][:2] == ["[bold]x[/]", "[/]"], header


# ------------------------------------------------------------------ cft predict


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bad_bundle_is_refused_by_predict(tiny_parts, broken, tmp_path, case):
    bad = broken[case]
    out = tmp_path / "scores.csv"
    before = snapshot(tmp_path, bad.path.parent)
    _refused(cli("predict", bad.path, "--input", tiny_parts["smiles"], "-o", out), bad.expected, before=before, folders=(tmp_path, bad.path.parent), absent=(out,))


PREDICT_INPUTS = {
    "missing_file": (None, (), "does not exist"),
    "a_folder": ("FOLDER", (), "is a folder"),
    "empty_file": ("", (), "is empty"),
    "header_only": ("smiles,id\n", (), "has a header but no data rows"),
    "binary_garbage": (b"smiles\n" + b"\xff\xfe\xfa,\x00\n" * 5, (), "not a readable CSV"),
    "no_such_column": ("smiles,id\nCCO,1\n", ("--smiles-column", "structure"), "has no SMILES column 'structure'"),
    "no_smiles_column": ("id,name\n1,ethanol\n2,benzene\n", (), "no SMILES could be parsed"),
    "no_smiles_parses": ("smiles\nnot_a_molecule\nC1CC\n", (), "no SMILES could be parsed"),
    "output_is_input": ("smiles\nCCO\n", ("SAME",), "is the input file"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_INPUTS))
def test_bad_input_csv_is_refused_by_predict(tiny_parts, tmp_path, case):
    text, extra, expected = PREDICT_INPUTS[case]
    source = tmp_path / "mols.csv"
    if text == "FOLDER":
        source.mkdir()
    elif text is not None:
        source.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = source if extra == ("SAME",) else tmp_path / "scores.csv"
    extra = () if extra == ("SAME",) else extra
    before = snapshot(tmp_path)
    _refused(cli("predict", tiny_parts["A"], "--input", source, "-o", out, *extra), expected, before=before, folders=(tmp_path,),
             absent=() if out == source else (out,))


def test_predict_output_paths(tiny_parts, tmp_path, unwritable_parent, monkeypatch):
    """An unwritable -o or a folder in its place: refused, nothing written; a write that fails half-way
    keeps the old file and leaves no temporary."""
    import errno
    import os

    import pandas as pd

    (tmp_path / "dir.csv").mkdir()
    before = snapshot(tmp_path)
    args = ("predict", tiny_parts["A"], "--input", tiny_parts["smiles"])
    _refused(cli(*args, "-o", unwritable_parent / "s.csv"), "Cannot write", before=before, folders=(tmp_path,), absent=(unwritable_parent / "s.csv",))
    _refused(cli(*args, "-o", tmp_path / "dir.csv"), "Cannot write", before=before, folders=(tmp_path,))
    old = tmp_path / "scores.csv"
    old.write_text("old scores\n")
    real = pd.DataFrame.to_csv

    def disk_full(self, path, *a, **k):
        real(self.head(2), path, *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    assert_user_error(cli(*args, "-o", old), "Cannot write", "No space left on device")
    assert old.read_text() == "old scores\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.csv", "scores.csv"], "no temporary file left"
