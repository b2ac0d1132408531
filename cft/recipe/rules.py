"""Cross-field rules of a recipe that pydantic field types cannot express.
"""

from __future__ import annotations

from typing import Any

from cft.recipe.schema import DataConfig, Recipe


def semantic_problems(recipe: Recipe) -> list[tuple[tuple, str, Any]]:
    """Cross-field rules pydantic field types cannot express: (path, message, value)."""
    out: list[tuple[tuple, str, Any]] = []

    def data_rules(prefix: tuple, data: DataConfig) -> None:
        if data.source == "csv" and not data.path:
            out.append((prefix + ("path",), "required when source is csv", None))
        if data.source == "ogb":
            if not data.name:
                out.append((prefix + ("name",), "required when source is ogb", None))
            elif not data.name.startswith("ogbg-mol"):
                out.append((prefix + ("name",), "must be an ogbg-mol* dataset", data.name))
        if data.split.method == "column" and not data.split.column:
            out.append((prefix + ("split", "column"), "required when split.method is column", None))
        if data.split.method == "file" and not data.split.path:
            out.append((prefix + ("split", "path"), "required when split.method is file", None))
        if data.split.method == "official" and data.source != "ogb":
            out.append((prefix + ("split", "method"), "`official` exists only for source: ogb", "official"))

    data_rules(("data",), recipe.data)
    bb = recipe.backbone
    given = [name for name in ("pretrained", "path", "pretrain") if getattr(bb, name)]
    if len(given) > 1:  # one source of starting weights
        out.append((("backbone", given[-1]), f"give one of backbone.pretrained, backbone.path and backbone.pretrain, not {' and '.join('backbone.' + g for g in given)} "
                    f"(keep one and set the others to null, e.g. --set backbone.{given[0]}=null)", None))
    if bb.frozen_dropout and not bb.freeze:
        out.append((("backbone", "frozen_dropout"), "applies to a frozen backbone; a trained one drops out at backbone.dropout", bb.frozen_dropout))
    if bb.pretrain:
        data_rules(("backbone", "pretrain", "data"), bb.pretrain.data)
    ad = recipe.adapters
    if isinstance(ad.layers, list):
        bad = [layer for layer in ad.layers if layer >= bb.num_layers]
        if bad:
            out.append((("adapters", "layers"), f"layer indices must be < backbone.num_layers ({bb.num_layers})", bad))
    if ad.placement != "output" and bb.arch != "gin":
        out.append((("adapters", "placement"), f"`{ad.placement}` places the adapters in a GIN MLP; backbone.arch {bb.arch} has none (use `output`)", ad.placement))
    if ad.virtual_node and ad.placement != "mlp-both":
        out.append((("adapters", "virtual_node"), "adapts the virtual node's MLP beside `placement: mlp-both` only; set adapters.placement: mlp-both", True))
    if ad.virtual_node and not bb.virtual_node:  # a backbone file must match the recipe's backbone section, so this covers files too
        out.append((("adapters", "virtual_node"), "the backbone has no virtual node (backbone.virtual_node: false)", True))
    if ad.virtual_node_rank is not None and not ad.virtual_node:
        out.append((("adapters", "virtual_node_rank"), "is the rank of the virtual node's banks, which adapters.virtual_node: false leaves out; set it true or drop this field", ad.virtual_node_rank))
    if ad.virtual_node_rank is not None and ad.virtual_node_rank > bb.hidden:
        out.append((("adapters", "virtual_node_rank"), f"must be <= backbone.hidden ({bb.hidden})", ad.virtual_node_rank))
    if ad.embeddings_rank is not None and not ad.embeddings:
        out.append((("adapters", "embeddings_rank"), "is the rank of the embeddings' bank, which adapters.embeddings: false leaves out; set it true or drop this field", ad.embeddings_rank))
    # the bank updates a [hidden, n] map (n: the atom features' values): a rank above min(hidden, n) adds nothing
    if ad.embeddings_rank is not None and ad.embeddings_rank > min(bb.hidden, values := _atom_values()):
        out.append((("adapters", "embeddings_rank"), f"must be <= {min(bb.hidden, values)}: the bank updates a map from the atoms' {values} feature values "
                    f"to backbone.hidden ({bb.hidden}) channels, whose rank is at most the smaller of the two", ad.embeddings_rank))
    if ad.embeddings and isinstance(ad.layers, list) and 0 not in ad.layers:
        out.append((("adapters", "embeddings"), "the embeddings' bank acts under layer 0's weights; add 0 to adapters.layers (or use `all`)", True))
    elif ad.embeddings and recipe.routing.readout == "task" and ad.layers == [0]:
        out.append((("adapters", "embeddings"), "under routing.readout: task layer 0 would hold the experts; add a layer above 0 to adapters.layers", True))
    if ad.rank > bb.hidden:
        out.append((("adapters", "rank"), f"must be <= backbone.hidden ({bb.hidden})", ad.rank))
    if recipe.routing.top_k is not None and recipe.routing.top_k > ad.num_adapters:
        out.append((("routing", "top_k"), f"must be <= adapters.num_adapters ({ad.num_adapters})", recipe.routing.top_k))
    pr = recipe.prior
    if (pr.source == "file" or (pr.source == "learned" and pr.init == "file")) and not pr.path:
        out.append((("prior", "path"), "required when the prior comes from a file", None))
    if recipe.train.trainable == "routing" and not recipe.train.init_bundle:
        out.append((("train", "init_bundle"), "trainable: routing calibrates an existing bundle; give its path", None))
    if recipe.eval.metric == "rmse" and recipe.data.source == "builtin":
        out.append((("eval", "metric"), "the builtin tasks are binary; use ap or rocauc", "rmse"))
    return out


def _atom_values() -> int:
    """n: the values of OGB's atom features together (the rows of the atom encoder's nine tables)."""
    from ogb.utils.features import get_atom_feature_dims  # only when the field is set: it costs a quarter second

    return sum(get_atom_feature_dims())
