"""Security: nothing user-supplied is ever unpickled, and names from recipes, data and metadata
cannot make cft write outside the output folder it was given."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TINY_RECIPE, assert_user_error
from reliability_kit import _Canary, cli, labelled_csv, pickled_npy, snapshot

PACKAGE = REPO / "cft"


# ------------------------------------------------------------------ the scan


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            yield node, owner, name


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unsafe_loads(source: str, filename: str) -> list[str]:
    """Every way of unpickling (or evaluating) data that the package must not use."""
    problems = []
    lines = source.splitlines()
    for needle in ("allow_pickle=True", "pickle.load", "cPickle", "yaml.load(", "yaml.unsafe_load", "yaml.full_load", "read_pickle", "marshal.load", "dill.", "joblib.load", "shelve."):
        for i, line in enumerate(lines, 1):
            if needle in line:
                problems.append(f"{filename}:{i}: {needle} in: {line.strip()}")
    for i, line in enumerate(lines, 1):
        for match in re.finditer(r"torch\.load\(", line):
            call = source.split("\n", i - 1)[-1][match.start():]
            head = call[: call.find(")\n") + 1 if ")\n" in call else 400]
            if "weights_only=True" not in head:
                problems.append(f"{filename}:{i}: torch.load( without weights_only=True: {line.strip()}")
    tree = ast.parse(source)
    for node, owner, name in _calls(tree):
        where = f"{filename}:{node.lineno}"
        if name == "load" and owner == "torch" and _kw(node, "weights_only") is not True:
            problems.append(f"{where}: torch.load without weights_only=True")
        if name == "load" and owner in ("np", "numpy") and _kw(node, "allow_pickle") is not False:
            problems.append(f"{where}: np.load without an explicit allow_pickle=False")
        if name in ("load", "loads", "Unpickler") and owner in ("pickle", "cPickle", "_pickle", "dill", "marshal"):
            problems.append(f"{where}: {owner}.{name}")
        if isinstance(node.func, ast.Name) and name in ("eval", "exec", "__import__"):
            problems.append(f"{where}: {name}()")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "_pickle", "dill", "marshal", "shelve"):
            problems.append(f"{filename}:{node.lineno}: from {node.module} import ...")
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            problems.append(f"{filename}:{node.lineno}: from torch import load (hides torch.load from this scan)")
        if isinstance(node, ast.Import) and any(a.name in ("pickle", "cPickle", "dill", "marshal", "shelve") for a in node.names):
            problems.append(f"{filename}:{node.lineno}: import of a pickle module")
    return problems


def test_the_package_never_unpickles_user_data():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += unsafe_loads(path.read_text(), str(path.relative_to(REPO)))
    assert not problems, "\n".join(problems)


def test_the_scan_catches_what_it_claims_to():
    bad = (
        "import pickle\nx = torch.load(path)\ny = torch.load(path, weights_only=False)\nz = pickle.load(fh)\n"
        "a = np.load(p, allow_pickle=True)\nb = np.load(p)\nc = yaml.load(t)\nok = torch.load(p, map_location='cpu', weights_only=True)\n"
        "model.eval()\neval(text)\n"
    )
    found = "\n".join(unsafe_loads(bad, "sample.py"))
    for fragment in ("sample.py:2: torch.load without", "sample.py:3: torch.load without", "pickle.load", "allow_pickle=True", "sample.py:6: np.load without", "yaml.load(", "import of a pickle module"):
        assert fragment in found, fragment
    assert "sample.py:8" not in found and "sample.py:9" not in found
    assert "sample.py:10: eval()" in found


# ------------------------------------------------------------------ refusals, with a live payload


def test_pickle_payload_is_live_but_never_unpickled_by_cft(tmp_path):
    from cft.errors import CftError
    from cft.prior.files import read_relation

    live = pickled_npy(tmp_path / "live.npy", tmp_path / "proof")
    np.load(live, allow_pickle=True)  # what an unsafe reader would do: the payload runs
    assert (tmp_path / "proof").is_dir()
    canary = tmp_path / "canary"
    payload = pickled_npy(tmp_path / "prior.npy", canary)
    with pytest.raises(CftError, match="refuses to unpickle it"):
        read_relation(payload, ["a", "b"])
    assert not canary.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sec")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.replace("epochs: 3", "epochs: 1"))
    run = folder / "run"
    assert cli("train", recipe, "-o", run).returncode == 0
    return recipe, run


@pytest.mark.parametrize("kind", ["pickled_object", "truncated"])
def test_a_malicious_or_damaged_checkpoint_is_refused_on_resume(tiny_run, tmp_path, kind):
    recipe, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    canary = tmp_path / "canary"
    if kind == "pickled_object":
        torch.save({"format": "cft-checkpoint-1", "model": _Canary(canary)}, copy / "checkpoint.pt")
    else:
        data = (copy / "checkpoint.pt").read_bytes()
        (copy / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert_user_error(cli("train", recipe, "-o", copy, "--resume"), "cannot be resumed from", "--overwrite")
    assert not canary.exists(), "the checkpoint's pickle payload ran"


def test_a_pickled_bundle_or_backbone_is_not_read(tiny_run, tmp_path):
    """A .pt file renamed to .safetensors (what a malicious 'bundle' would be) is refused as not safetensors."""
    recipe, _ = tiny_run
    canary = tmp_path / "canary"
    fake = tmp_path / "bundle.safetensors"
    torch.save(_Canary(canary), fake)
    assert_user_error(cli("eval", fake), "not a readable safetensors file")
    raw = yaml.safe_load(recipe.read_text())
    raw["backbone"]["path"] = str(fake)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert_user_error(cli("train", tmp_path / "r.yaml", "-o", tmp_path / "run"), "not a readable safetensors file")
    assert not canary.exists()


@pytest.mark.parametrize("planted", ["pre_transform.pt", "geometric_data_processed.pt"])
def test_a_pickle_planted_in_an_ogb_folder_is_not_run(data_root, tmp_path, planted):
    """The real OGB path: PyG reads processed/pre_transform.pt with torch.load(weights_only=False) and ogb
    reads geometric_data_processed.pt with torch.load(path); cft's guard makes both weights-only, so a
    pickle planted there is refused (CftError naming the folder) and never runs."""
    from ogb_layout import write_ogb_folder

    from cft.data.dataset import load_dataset
    from cft.errors import CftError
    from cft.recipe.schema import DataConfig

    root = tmp_path / "ogb"
    folder = write_ogb_folder(data_root / "tox21.csv", root, limit=60)
    config = DataConfig(source="ogb", name="ogbg-moltox21")
    assert len(load_dataset(config, root)) > 0  # processes the raw files once: processed/ now exists
    canary = tmp_path / "canary"
    target = folder / "processed" / planted
    assert target.exists()
    torch.save(_Canary(canary), target)
    try:
        load_dataset(config, root)
        refused = None
    except CftError as exc:
        refused = exc.render()
    assert not canary.exists(), f"the pickle planted in processed/{planted} ran"
    assert refused is not None and "ogb could not load" in refused and str(folder) in refused, refused


# ------------------------------------------------------------------ writes stay inside the output folder


@pytest.mark.parametrize("output_dir", ["/tmp/cft-escape", "../escape", "runs/../../escape", "~/cft-escape", ".", ""])
def test_a_recipe_cannot_name_a_run_folder_outside_the_working_folder(tmp_path, monkeypatch, output_dir):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = work / "r.yaml"
    raw = yaml.safe_load(TINY_RECIPE)
    raw["output_dir"] = output_dir
    recipe.write_text(yaml.safe_dump(raw))
    before = snapshot(tmp_path)
    expected = "is not a folder name" if not output_dir else "points outside the current folder"
    assert_user_error(cli("train", recipe), expected, *(["--output-dir"] if output_dir else []))
    assert snapshot(tmp_path) == before
    assert not Path("/tmp/cft-escape").exists()


def test_a_recipe_may_name_a_run_folder_below_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    raw = yaml.safe_load(TINY_RECIPE)
    raw["output_dir"] = "runs/../runs/mine"
    raw["train"]["epochs"] = 1
    recipe.write_text(yaml.safe_dump(raw))
    assert cli("train", recipe).returncode == 0
    assert (tmp_path / "runs" / "mine" / "bundle.safetensors").exists()
    # --output-dir (the user's own choice on the command line) may point anywhere
    assert cli("train", recipe, "-o", tmp_path.parent / f"{tmp_path.name}-elsewhere").returncode == 0
    shutil.rmtree(tmp_path.parent / f"{tmp_path.name}-elsewhere")


def test_names_from_data_and_metadata_never_become_paths(tmp_path):
    """Task names, file names and bundle metadata that look like paths are only ever names."""
    data = tmp_path / "data"
    data.mkdir()
    csv = labelled_csv(data / "..%2f..%2fevil.csv", 100)
    text = csv.read_text().replace("smiles,has_N,has_O", 'smiles,../../escaped,/tmp/cft-abs-escape')
    csv.write_text(text)
    raw = yaml.safe_load(TINY_RECIPE)
    raw["data"] = {"source": "csv", "path": str(csv), "split": {"method": "random"}}
    raw["train"]["epochs"] = 1
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    outside = snapshot(tmp_path)
    run = tmp_path / "out" / "run"
    result = cli("train", tmp_path / "r.yaml", "-o", run)
    assert result.returncode == 0, result.stderr
    new = sorted(set(snapshot(tmp_path)) - set(outside))
    assert all(p.startswith(str(tmp_path / "out")) for p in new), new
    assert not Path("/tmp/cft-abs-escape").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["../../escaped", "/tmp/cft-abs-escape"]
    assert cli("eval", run).returncode == 0
    assert sorted(set(snapshot(tmp_path)) - set(outside)) == new, "eval wrote nothing"


def test_metadata_paths_are_only_read_and_only_when_they_are_files(tiny_run, tmp_path):
    """A bundle's provenance may list source paths (where composed bundles came from); cft only
    ever reads backbone files there, and skips anything that is not a regular file (a FIFO would
    otherwise block forever)."""
    from reliability_kit import read_safetensors
    from safetensors.torch import save_file

    _, run = tiny_run
    trap = tmp_path / "trap"
    trap.mkdir()
    os.mkfifo(trap / "backbone.safetensors")
    tensors, header = read_safetensors(run / "bundle.safetensors")
    header["provenance"]["source_paths"] = [str(trap / "part.safetensors"), 42, None]
    lone = tmp_path / "lone"
    lone.mkdir()
    save_file(tensors, str(lone / "bundle.safetensors"), metadata={"cft": json.dumps(header, sort_keys=True)})

    def hung(*_):
        raise AssertionError("cft blocked on a FIFO named by bundle metadata")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        assert_user_error(cli("eval", lone), "needs backbone")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "", " ", ".", "..", "C:evil", "tab\there", "nul\x00", "a\\b", "x" * 300])
def test_contained_name_refuses_anything_but_one_plain_name(name):
    from cft.errors import CftError
    from cft.files.paths import contained_name

    with pytest.raises(CftError, match="cannot be used as a file name"):
        contained_name(name)


def test_safe_join_stays_inside_its_base(tmp_path):
    from cft.errors import CftError
    from cft.files.paths import safe_join

    assert safe_join(tmp_path, "variant-lr=0.01", "bundle.safetensors") == tmp_path / "variant-lr=0.01" / "bundle.safetensors"
    assert safe_join(tmp_path, "NR-AR (task)").name == "NR-AR (task)"
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(CftError, match="outside"):
        safe_join(tmp_path, "link", "x")
    with pytest.raises(CftError):
        safe_join(tmp_path, "..", "x")
