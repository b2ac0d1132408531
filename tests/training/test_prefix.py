"""Batches sliced from the compact store, and the frozen-prefix cache: same batches as PyG's
collation, same logits as the uncached forward, same training result, fallbacks, memory/disk keys."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch_geometric.data import Batch

from cft.data.graphs import GraphDataset, featurise
from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.recipe.load import load_recipe
from cft.spec import BackboneSpec, ModelSpec, PartSpec
from cft.training import prefix as prefix_mod
from cft.training.prefix import PrefixCache, StoreBatches, compute_prefix, prefix_cache_for, slice_batch
from cft.training.trainer import PendingLosses, train_recipe
from tests.conftest import TINY_RECIPE
from tests.model_kit import SMILES

MORE_SMILES = [*SMILES, "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "C1CCCCC1", "N#Cc1ccccc1", "OCC(O)CO", "c1ccc2ccccc2c1", "CCCCCCCCCC"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store():
    graphs, valid, _, _ = featurise(MORE_SMILES, use_cache=False)
    assert valid.all()
    return graphs


def test_slice_batch_is_pyg_collation(store):
    y = torch.randn(len(store), 3)
    idx = np.array([5, 0, 11, 3, 3, 7])
    ours = slice_batch(store, y, idx)
    ds = GraphDataset(store, y, idx)
    pyg = Batch.from_data_list([ds[i] for i in range(len(ds))])
    for key in ("x", "edge_index", "edge_attr", "y", "batch", "ptr"):
        a, b = getattr(ours, key), getattr(pyg, key)
        assert a.dtype == b.dtype and torch.equal(a, b), key
    assert ours.num_graphs == pyg.num_graphs == 6


def test_an_epochs_batches_iterate_as_a_sequence(store):
    """Plain iteration (and list()) ends after the last batch: an index past it raises IndexError."""
    y = torch.zeros(len(store), 2)
    batches = StoreBatches(store, y, np.arange(len(store)), 5)
    listed = list(itertools.islice(batches, 10))  # bounded: without the IndexError iteration would not end
    assert [b.num_graphs for b in listed] == [5, 5, 2] and len(batches) == 3
    assert torch.equal(batches[-1].x, listed[-1].x)
    with pytest.raises(IndexError):
        batches[3]


@pytest.mark.parametrize("layers", [(1,), (2,)])
def test_cached_prefix_gives_the_uncached_logits(store, layers):
    model = _three_layer_model(layers)
    model.train()  # training mode of the adapters; the frozen backbone stays in eval mode
    assert model.prefix_layer() == layers[0]
    cache = PrefixCache(compute_prefix(model, store, layers[0], CPU, batch_size=4))
    batch = slice_batch(store, torch.zeros(len(store), 3), np.array([9, 2, 4, 0]), with_index=True)
    plain, routes_plain = model(batch, with_routes=True)
    cached, routes_cached = model(batch, with_routes=True, prefix=cache.take(batch, CPU))
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
    for layer in routes_plain:
        torch.testing.assert_close(routes_cached[layer], routes_plain[layer])


def test_head_only_caches_the_whole_backbone(store):
    """No adapters: every layer is fixed, the cache holds the last layer's node states and the
    logits are the heads on their pooled rows, as without the cache."""
    model = _three_layer_model(())
    model.train()
    assert model.prefix_layer() == 3
    cache = prefix_cache_for(model, store, CPU)
    assert cache is not None and cache.states.layer == 3
    batch = slice_batch(store, torch.zeros(len(store), 3), np.array([9, 2, 4, 0]), with_index=True)
    torch.testing.assert_close(model(batch, prefix=cache.take(batch, CPU)), model(batch), rtol=1e-5, atol=1e-6)


def test_bf16_cache_is_close(store):
    model = _three_layer_model((2,))
    states = compute_prefix(model, store, 2, CPU, dtype=torch.bfloat16)
    assert states.h.dtype == torch.bfloat16 and states.nbytes == (store.x.size(0) + len(store)) * 16 * 2
    batch = slice_batch(store, torch.zeros(len(store), 3), np.arange(len(store)), with_index=True)
    torch.testing.assert_close(model(batch, prefix=PrefixCache(states).take(batch, CPU)), model(batch), rtol=0.05, atol=0.02)


def test_no_cache_where_the_prefix_is_not_fixed(store):
    assert prefix_cache_for(_three_layer_model((0, 1)), store, CPU) is None  # adapters from layer 0: nothing below
    assert prefix_cache_for(_three_layer_model((1,), freeze=False), store, CPU) is None  # full fine-tuning
    assert prefix_cache_for(_three_layer_model((1,)), store, CPU, mode="recompute") is None
    unfrozen = _three_layer_model((1,), freeze=False)
    with pytest.raises(ValueError, match="does not fit"):
        unfrozen(slice_batch(store, None, [0, 1]), prefix=(1, torch.zeros(1, 16), None))


def test_frozen_weights_get_no_gradient(store):
    model = _three_layer_model((1, 2))
    model.train()
    batch = slice_batch(store, torch.ones(len(store), 3), np.arange(8), with_index=True)
    cache = PrefixCache(compute_prefix(model, store, 1, CPU))
    for prefix in (None, cache.take(batch, CPU)):
        model.zero_grad(set_to_none=True)
        logits = model(batch, prefix=prefix)
        model.task_loss(logits, batch.y).backward()
        assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
        assert all(p.grad is not None for p in model.adapters.parameters())


def test_memory_and_disk_keys(store, tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path))
    prefix_mod.clear_memory()
    model = _three_layer_model((2,))
    first = prefix_cache_for(model, store, CPU, mode="disk")
    files = list((tmp_path / "prefix").glob("*.safetensors"))
    assert len(files) == 1 and set(load_file(str(files[0]))) == {"h", "vn"}
    assert prefix_cache_for(model, store, CPU).states is first.states  # the same process: from memory
    prefix_mod.clear_memory()
    calls = []
    monkeypatch.setattr(prefix_mod, "compute_prefix", lambda *a, **k: calls.append(1))
    again = prefix_cache_for(model, store, CPU, mode="disk")  # a later run: from the file
    assert not calls and torch.equal(again.states.h, first.states.h) and torch.equal(again.states.vn, first.states.vn)
    files[0].write_bytes(b"damaged")  # a damaged file is recomputed, never trusted
    prefix_mod.clear_memory()
    monkeypatch.undo()
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path))
    assert torch.equal(prefix_cache_for(model, store, CPU, mode="disk").states.h, first.states.h)
    assert torch.equal(load_file(str(files[0]))["h"], first.states.h)  # and rewritten
    other = _three_layer_model((2,))
    with torch.no_grad():
        other.backbone.atom_encoder.atom_embedding_list[0].weight.add_(1.0)  # another backbone: another key
    assert prefix_mod.prefix_key(other, store, 2, torch.float32) != prefix_mod.prefix_key(model, store, 2, torch.float32)
    assert prefix_mod.prefix_key(model, store, 1, torch.float32) != prefix_mod.prefix_key(model, store, 2, torch.float32)
    assert prefix_mod.prefix_key(model, store.select(np.arange(5)), 2, torch.float32) != prefix_mod.prefix_key(model, store, 2, torch.float32)


def test_pending_losses_sum_like_floats():
    pending = PendingLosses(CPU, every=3)
    values = [(0.1, 0.01, 0.2), (0.3, 0.02, 0.4), (0.7, 0.0, 0.9)]
    due = [pending.add(*(torch.tensor(v, dtype=torch.float32) for v in row), batch=i + 1) for i, row in enumerate(values)]
    assert due == [False, False, True] and pending.first == 1 and pending.count == 3
    expected = [sum(float(torch.tensor(row[j], dtype=torch.float32)) for row in values) for j in range(3)]
    assert pending.sums.tolist() == expected


@pytest.mark.parametrize("adapters", ["adapters.layers=[2]", "adapters.enabled=false"])
def test_training_with_and_without_the_cache_agrees(tmp_path, monkeypatch, adapters):
    """A few epochs of adapters in the top layer of a frozen 3-layer backbone, or of the heads alone:
    losses, metrics and every bundle tensor match at float32 whether the prefix is cached (memory,
    disk) or recomputed."""
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path / "cache"))
    prefix_mod.clear_memory()
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(TINY_RECIPE.replace("limit: 400", "limit: 160").replace("num_layers: 2", "num_layers: 3").replace("epochs: 3", "epochs: 2"))
    summaries, bundles = {}, {}
    for mode in ("recompute", "memory", "disk"):
        recipe = load_recipe(recipe_path, [adapters, f"train.prefix_cache={mode}", "train.threads=1"])
        summaries[mode] = train_recipe(recipe, tmp_path / mode, Path("."))
        bundles[mode] = load_file(str(tmp_path / mode / "bundle.safetensors"))
        if mode == "recompute":  # nothing cached, in this process or on disk (a state, not a time: the cores are shared)
            assert not prefix_mod._MEMORY
            assert not list((tmp_path / "cache").glob("prefix/*.safetensors"))
    assert list((tmp_path / "cache" / "prefix").glob("*.safetensors"))
    history = {m: [json.loads(line) for line in (tmp_path / m / "metrics.jsonl").read_text().splitlines()] for m in summaries}
    for mode in ("memory", "disk"):
        assert summaries[mode]["test"]["mean"] == pytest.approx(summaries["recompute"]["test"]["mean"], abs=1e-6)
        for a, b in zip(history[mode], history["recompute"]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert bundles[mode].keys() == bundles["recompute"].keys()
        for name, tensor in bundles["recompute"].items():
            torch.testing.assert_close(bundles[mode][name], tensor, rtol=1e-4, atol=1e-6)


def _three_layer_model(layers, freeze=True) -> CftModel:
    """A GIN-VN 3 x 16 with adapters in `layers`, non-trivial BatchNorm statistics and adapters (so a wrong prefix shows)."""
    torch.manual_seed(0)
    spec_bb = BackboneSpec(arch="gin", num_layers=3, hidden=16, dropout=0.0)
    names = ["t0", "t1", "t2"]
    part = PartSpec(name="p", tasks=names, layers=list(layers), num_adapters=4, rank=3, embed_dim=8)
    spec = ModelSpec(backbone=spec_bb, tasks=names, kinds=["binary"] * 3, parts=[part])
    model = CftModel(Backbone(spec_bb), spec, [np.eye(3, dtype=np.float32)], freeze_backbone=freeze)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        for bank in model.adapters.values():
            bank.V.normal_(0, 0.1)
    return model
