"""Fuzzing the four readers of user files: recipes, CSVs, bundles, priors.

Arbitrary bytes and structurally mutated valid files may only ever produce cft's own error type
(CftError) or a valid result - never another exception, a hang, or a write.

Profiles (CFT_FUZZ=...): `ci` (default; derandomized, 30 examples per test, about a minute in all on
a loaded 2-core machine) and `deep` (3000 random examples per test; run it locally after
changing a reader: `CFT_FUZZ=deep pytest tests/test_reliability_fuzz.py`). CFT_FUZZ_EXAMPLES=N
overrides the number of examples of either profile.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY_RECIPE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_kit import assert_unchanged, molecules, snapshot

settings.register_profile(
    "ci", max_examples=30, deadline=timedelta(seconds=10), derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "deep", max_examples=3000, deadline=timedelta(seconds=2), print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PROFILE = settings(settings.get_profile(os.environ.get("CFT_FUZZ", "ci")), **(
    {"max_examples": int(os.environ["CFT_FUZZ_EXAMPLES"])} if os.environ.get("CFT_FUZZ_EXAMPLES") else {}))
HANG_SECONDS = 30


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Pay the heavy imports (torch, rdkit, pandas) once, outside any example's deadline."""
    import cft.data.csvsource  # noqa: F401
    import cft.data.dataset  # noqa: F401
    import cft.files.bundle  # noqa: F401
    import cft.prior.files  # noqa: F401
    import cft.recipe.load  # noqa: F401

    _smiles()


class Hang(BaseException):
    """Not an Exception: cft's broad `except Exception` handlers must not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(*_):
        raise Hang(f"no answer within {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only_cft_errors(call, *watched: Path):
    """Run `call`; CftError (with a message) or a result are fine, anything else fails the test.
    Nothing under `watched` may be created, changed or removed."""
    from cft.errors import CftError

    before = snapshot(*watched)
    try:
        with time_limit(HANG_SECONDS):
            result = call()
    except CftError as exc:
        assert exc.render().strip(), "a CftError without a message"
        result = exc
    assert_unchanged(before, *watched)
    return result


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory(prefix="cft-fuzz-") as folder:
        yield Path(folder)


# --------------------------------------------------------------------------- generic values

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def mutate_tree(data, obj):
    """Set, delete or add a few entries anywhere in a JSON-like tree (drawn by hypothesis)."""
    obj = json.loads(json.dumps(obj, allow_nan=True))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["set", "delete", "add"]), label="action")
        if action == "set":
            parent[path[-1]] = data.draw(values, label="value")
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10), label="new key")] = data.draw(values, label="new value")
        else:
            parent.append(data.draw(values, label="new item"))
    return obj


def mutate_bytes(data, blob: bytes) -> bytes:
    """Truncate, overwrite, insert or delete bytes of a valid file."""
    blob = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        op = data.draw(st.sampled_from(["truncate", "overwrite", "insert", "delete"]), label="op")
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)), label="at")
        if op == "truncate":
            del blob[at:]
        elif op == "overwrite":
            chunk = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
            blob[at : at + len(chunk)] = chunk
        elif op == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        else:
            del blob[at : at + data.draw(st.integers(1, 16), label="length")]
    return bytes(blob)


def mutate_text(data, text: str) -> str:
    """Splice random text into a valid text file at random places."""
    for _ in range(data.draw(st.integers(1, 3), label="splices")):
        at = data.draw(st.integers(0, len(text)), label="at")
        cut = data.draw(st.integers(0, 12), label="cut")
        text = text[:at] + data.draw(st.text(max_size=12), label="insert") + text[at + cut :]
    return text


# --------------------------------------------------------------------------- recipes

RECIPE_BASES = [TINY_RECIPE] + [p.read_text() for p in sorted((REPO / "recipes").glob("*.yaml"))]


def _load_recipe_file(folder: Path, payload: bytes, sets=()):
    from cft.recipe.load import load_recipe

    path = folder / "recipe.yaml"
    path.write_bytes(payload)
    return only_cft_errors(lambda: load_recipe(path, list(sets)), folder)  # (load_recipe writes nothing)


@settings(PROFILE)
@given(st.binary(max_size=3000))
def test_recipe_loader_arbitrary_bytes(payload):
    with scratch() as folder:
        _load_recipe_file(folder, payload)


@settings(PROFILE)
@given(st.data())
def test_recipe_loader_mutated_recipes(data):
    base = yaml.safe_load(data.draw(st.sampled_from(RECIPE_BASES), label="base"))
    raw = mutate_tree(data, base)
    with scratch() as folder:
        text = yaml.safe_dump(raw, allow_unicode=True)
        if data.draw(st.booleans(), label="also splice text"):
            text = mutate_text(data, text)
        _load_recipe_file(folder, text.encode("utf-8", "surrogatepass"))


@settings(PROFILE)
@given(st.lists(st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    ["seed", "train.lr", "adapters.layers", "data.task_kinds.x", "routing.top_k", "backbone.pretrain.data.path", "prior"]), st.text(max_size=30))), max_size=4))
def test_recipe_set_overrides(sets):
    with scratch() as folder:
        _load_recipe_file(folder, TINY_RECIPE.encode(), sets)


def _alias_bomb(tail: str) -> str:
    """9 levels of 9 aliases each: 9**9 (~387 million) leaves if anything expands it."""
    levels = ["a: &a [" + ", ".join(["x"] * 9) + "]"]
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(levels) + "\n" + tail


def test_recipe_alias_bomb_is_refused_fast_with_a_bounded_message():
    """Nested YAML aliases (a 'billion laughs' recipe) are refused as a CftError naming the file and
    the field, within a few seconds and with a short message (the line map walks each node once,
    values are shown through a bounded repr)."""
    import time

    from cft.errors import CftError

    with scratch() as folder:
        start = time.perf_counter()
        result = _load_recipe_file(folder, _alias_bomb("train:\n  epochs: *i\n").encode())  # (itself under a 30 s limit)
        elapsed = time.perf_counter() - start
        assert isinstance(result, CftError), f"the alias bomb was accepted: {result!r}"
        message = result.render()
        assert str(folder / "recipe.yaml") in message and "train.epochs (line 11): must be an integer" in message, message
        assert "a (line 1): unknown field" in message, message
        assert max(map(len, message.splitlines())) < 300 and len(message) < 6000, f"message of {len(message)} characters"
        assert elapsed < 5, f"took {elapsed:.1f}s"


def test_recipe_alias_bomb_through_the_cli_exits_2(tmp_path):
    from conftest import assert_user_error, run_cli_inprocess

    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_alias_bomb("data:\n  tasks: *i\n"))
    with time_limit(20):
        result = run_cli_inprocess("train", recipe, "-o", tmp_path / "run")
    assert_user_error(result, str(recipe), "data.tasks")
    assert max(map(len, result.stderr.splitlines())) < 300 and len(result.stderr) < 6000, result.stderr[:2000]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- CSV datasets

_SMILES = None


def _smiles() -> list[str]:
    global _SMILES
    if _SMILES is None:
        _SMILES = molecules(40)
    return _SMILES


def _csv_text(rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in rows) + "\n"


def _read_csv(folder: Path, payload: bytes, options: dict, full: bool = False):
    from cft.data.csvsource import read_csv_table
    from cft.data.dataset import load_dataset
    from cft.recipe.schema import DataConfig

    name = options.pop("_name", "data.csv")
    path = folder / name
    path.write_bytes(payload)
    cfg = DataConfig.model_validate({"source": "csv", "path": str(path), **options})
    only_cft_errors(lambda: read_csv_table(cfg, folder), folder)
    if full:  # featurise, split, check labels (writes only to the cache folder, not beside the data)
        only_cft_errors(lambda: load_dataset(cfg, folder, 0), folder)


@settings(PROFILE)
@given(st.binary(max_size=2000), st.sampled_from(["data.csv", "data.csv.gz"]))
def test_csv_reader_arbitrary_bytes(payload, name):
    with scratch() as folder:
        _read_csv(folder, payload, {"_name": name})


@settings(PROFILE)
@given(st.data())
def test_csv_reader_mutated_files(data):
    smiles = _smiles()[: data.draw(st.integers(1, 40), label="rows")]
    rows = [["smiles", "a", "b", "split"]] + [[s, str(i % 2), str((i // 2) % 2), ["train", "valid", "test"][i % 3]] for i, s in enumerate(smiles)]
    cell = st.one_of(st.sampled_from(["", "nan", "1", "0", "0.5", "-inf", "1e400", '"', '"a,b"', "x\ny", "train", "NA", "  1 "]), st.text(max_size=8))
    for _ in range(data.draw(st.integers(0, 4), label="cell edits")):
        r = data.draw(st.integers(0, len(rows) - 1), label="row")
        c = data.draw(st.integers(0, len(rows[r]) - 1), label="column")
        rows[r][c] = data.draw(cell, label="cell")
    if data.draw(st.booleans(), label="drop a column"):
        c = data.draw(st.integers(0, 3), label="dropped")
        rows = [r[:c] + r[c + 1 :] for r in rows]
    text = _csv_text(rows)
    if data.draw(st.booleans(), label="splice"):
        text = mutate_text(data, text)
    header = rows[0]
    options = {}
    if data.draw(st.booleans(), label="smiles column"):
        options["smiles_column"] = data.draw(st.sampled_from(header + ["absent"]), label="smiles_column")
    if data.draw(st.booleans(), label="tasks"):
        options["tasks"] = data.draw(st.lists(st.sampled_from(header + ["*", "?", "[", "absent"]), min_size=1, max_size=3), label="tasks")
    options["split"] = data.draw(st.sampled_from([{"method": "column", "column": "split"}, {"method": "random"}, {"method": "scaffold"}, {"method": "scaffold_balanced"}]), label="split")
    if data.draw(st.booleans(), label="task kinds"):
        options["task_kinds"] = {data.draw(st.sampled_from(header), label="kind task"): data.draw(st.sampled_from(["binary", "regression"]), label="kind")}
    options["strict"] = data.draw(st.booleans(), label="strict")
    with scratch() as folder:
        _read_csv(folder, text.encode("utf-8", "surrogatepass"), options, full=data.draw(st.booleans(), label="load"))


# --------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    import torch

    from cft.files.bundle import save_bundle
    from cft.nn.backbone import Backbone
    from cft.nn.model import CftModel
    from cft.spec import BackboneSpec, ModelSpec, PartSpec

    torch.manual_seed(0)
    backbone = Backbone(BackboneSpec(num_layers=2, hidden=8, dropout=0.0))
    part = PartSpec(name="fuzz", tasks=["a", "b", "c"], layers=[0, 1], num_adapters=2, rank=2, embed_dim=4)
    spec = ModelSpec(backbone=backbone.spec, tasks=["a", "b", "c"], kinds=["binary"] * 3, parts=[part])
    relation = np.array([[1, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 1]], dtype=np.float32)
    model = CftModel(backbone, spec, [relation])
    path = tmp_path_factory.mktemp("fuzz-bundle") / "bundle.safetensors"
    save_bundle(path, model, data={}, metrics={"metric": "rocauc"}, provenance={"kind": "trained", "seed": 0})
    return path.read_bytes(), backbone


def _load_bundle(folder: Path, payload: bytes, backbone):
    from cft.files.bundle import load_bundle, read_bundle_info

    path = folder / "bundle.safetensors"
    path.write_bytes(payload)
    only_cft_errors(lambda: read_bundle_info(path), folder)
    only_cft_errors(lambda: load_bundle(path, backbone=backbone), folder)


def _split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header, allow_nan=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@settings(PROFILE)
@given(st.binary(max_size=2000))
def test_bundle_reader_arbitrary_bytes(tiny_bundle, payload):
    with scratch() as folder:
        _load_bundle(folder, payload, tiny_bundle[1])


@settings(PROFILE)
@given(st.data())
def test_bundle_reader_mutated_bytes(tiny_bundle, data):
    blob, backbone = tiny_bundle
    with scratch() as folder:
        _load_bundle(folder, mutate_bytes(data, blob), backbone)


@settings(PROFILE)
@given(st.data())
def test_bundle_reader_mutated_metadata(tiny_bundle, data):
    """Valid safetensors whose cft metadata (spec, fingerprint, format, metrics, ...) is mutated."""
    blob, backbone = tiny_bundle
    header, body = _split_safetensors(blob)
    meta = json.loads(header["__metadata__"]["cft"])
    header["__metadata__"]["cft"] = json.dumps(mutate_tree(data, meta), allow_nan=True)
    with scratch() as folder:
        _load_bundle(folder, _join_safetensors(header, body), backbone)


@settings(PROFILE)
@given(st.data())
def test_bundle_reader_mutated_tensor_table(tiny_bundle, data):
    """Valid cft metadata, but the safetensors tensor table (dtypes, shapes, offsets) is mutated."""
    blob, backbone = tiny_bundle
    header, body = _split_safetensors(blob)
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        name = data.draw(st.sampled_from(names), label="tensor")
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "rename"]), label="field")
        if field == "dtype":
            header[name]["dtype"] = data.draw(st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "I8", "BOOL", "U8", "F8_E4M3", "XX"]), label="dtype")
        elif field == "shape":
            header[name]["shape"] = data.draw(st.lists(st.integers(0, 2**40), max_size=4), label="shape")
        elif field == "data_offsets":
            header[name]["data_offsets"] = data.draw(st.lists(st.integers(0, 2**40), min_size=2, max_size=2), label="offsets")
        elif field == "drop":
            del header[name]
            names.remove(name)
            if not names:
                break
        else:
            header[data.draw(st.text(min_size=1, max_size=12), label="new name")] = header.pop(name)
            names = sorted(k for k in header if k != "__metadata__")
    with scratch() as folder:
        _load_bundle(folder, _join_safetensors(header, body), backbone)


# --------------------------------------------------------------------------- priors

PRIOR_TASKS = ["a", "b", "c"]


def _read_prior(folder: Path, payload: bytes, suffix: str):
    from cft.prior.files import read_relation

    path = folder / f"prior{suffix}"
    path.write_bytes(payload)
    return only_cft_errors(lambda: read_relation(path, PRIOR_TASKS), folder)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


GOOD_PRIOR = np.array([[1, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 1]], dtype=np.float32)


@settings(PROFILE)
@given(st.binary(max_size=1000), st.sampled_from([".npy", ".csv", ".csv.gz"]))
def test_prior_reader_arbitrary_bytes(payload, suffix):
    with scratch() as folder:
        _read_prior(folder, payload, suffix)


@settings(PROFILE)
@given(st.data())
def test_prior_reader_mutated_npy(data):
    blob = _npy(GOOD_PRIOR)
    with scratch() as folder:
        _read_prior(folder, mutate_bytes(data, blob), ".npy")


@settings(PROFILE)
@given(
    st.sampled_from(["<f4", "<f8", ">f8", "<i8", "|b1", "|u1", "<U3", "|O", "|V8", "<c16", "<M8[D]", "[('a', '<f4')]", "'x'", "<f4 junk"]),
    st.one_of(st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)), st.lists(st.integers(-5, 2**62), max_size=4).map(tuple)),
    st.sampled_from(["False", "True", "None", "1"]),
)
def test_prior_reader_npy_headers(descr, shape, fortran):
    """Hand-written .npy headers: any dtype, any shape (up to 2^62 elements), any order flag."""
    header = "{'descr': " + (descr if descr.startswith("[") or descr.startswith("'") else repr(descr)) + f", 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    header = header.encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    payload = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + GOOD_PRIOR.tobytes()
    with scratch() as folder:
        _read_prior(folder, payload, ".npy")


@settings(PROFILE)
@given(st.data())
def test_prior_reader_mutated_csv(data):
    rows = [["", *PRIOR_TASKS]] + [[t, *map(str, GOOD_PRIOR[i])] for i, t in enumerate(PRIOR_TASKS)]
    cell = st.one_of(st.sampled_from(["", "nan", "inf", "-1", "0.5", "a", '"', "1e999", "b"]), st.text(max_size=6))
    for _ in range(data.draw(st.integers(0, 4), label="cell edits")):
        r = data.draw(st.integers(0, len(rows) - 1), label="row")
        c = data.draw(st.integers(0, len(rows[r]) - 1), label="column")
        rows[r][c] = data.draw(cell, label="cell")
    text = _csv_text(rows)
    if data.draw(st.booleans(), label="splice"):
        text = mutate_text(data, text)
    with scratch() as folder:
        _read_prior(folder, text.encode("utf-8", "surrogatepass"), ".csv")


def test_valid_inputs_still_load(tiny_bundle):
    """The fuzz bases are valid: the readers accept them unchanged (so mutations test refusals)."""
    from cft.files.bundle import BundleInfo

    blob, backbone = tiny_bundle
    with scratch() as folder:
        (folder / "bundle.safetensors").write_bytes(blob)
        from cft.files.bundle import load_bundle

        model, info = load_bundle(folder / "bundle.safetensors", backbone=backbone)
        assert isinstance(info, BundleInfo) and info.tasks == ["a", "b", "c"]
        header, body = _split_safetensors(blob)
        (folder / "again.safetensors").write_bytes(_join_safetensors(header, body))
        load_bundle(folder / "again.safetensors", backbone=backbone)
        assert np.array_equal(_read_prior(folder, _npy(GOOD_PRIOR), ".npy"), GOOD_PRIOR)
        from cft.recipe.schema import Recipe

        for text in RECIPE_BASES:
            assert isinstance(_load_recipe_file(folder, text.encode()), Recipe)


def test_regressions_found_by_fuzzing():
    """Inputs that once raised something other than CftError."""
    with scratch() as folder:
        _load_recipe_file(folder, b"seed: 0\n'[': null\n")  # IndexError: a user key that looked like a pydantic union tag
        _load_recipe_file(folder, b"data:\n  task_kinds:\n    '[x': foo\n")
        broken = bytearray(_npy(GOOD_PRIOR))
        broken[10] = 0  # the header's opening brace: numpy's parser raised tokenize.TokenError
        _read_prior(folder, bytes(broken), ".npy")
