"""The plan of a sweep: grids of `--set` values, presets, variant names and seeds.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from cft.errors import CftError
from cft.recipe.load import read_yaml_file, validate_raw
from cft.recipe.overrides import apply_override, apply_overrides, check_key_path
from cft.recipe.schema import Recipe

PRESETS: dict[str, dict[str, list[Any]]] = {
    # the paper's sensitivity studies, one knob at a time around the recipe's values
    "paper": {
        "routing.temperature": [0.1, 0.3, 1.0, 3.0, 10.0],
        "routing.threshold": [0.0, 0.05, 0.1, 0.2, 0.3],
        "train.reg_strength": [0.0, 0.001, 0.01, 0.1, 1.0],
        "adapters.rank": [1, 4, 8, 16, 32],
        "adapters.num_adapters": [1, 2, 4, 8, 16],
        "prior.source": ["labels", "identity", "learned"],
    },
}


# keys a sweep cannot vary: the seed is what --seeds varies; the others do not change a run
_NOT_KNOBS = {
    "seed": "the seed is varied by --seeds N (seeds recipe.seed, recipe.seed+1, ...)",
    "output_dir": "every run gets its own folder under --output-dir",
    "description": "it does not change a run",
}


BASE_NAME = "base"
_MAX_NAME = 96


@dataclass
class Grid:
    key: str
    parts: tuple[str, ...]
    texts: list[str]  # the values as written
    values: list[Any]  # parsed like --set values (YAML)
    coerced: list[Any] = field(default_factory=list)  # as the recipe holds them (set by build_plan)


def parse_values(text: str, origin: str) -> list[Any]:
    """`V1,V2,...` read as a YAML flow sequence (`[V1,V2,...]`), each value as `--set` reads one:
    `adapters.layers=[0,1],all` gives `[0, 1]` and `all`; quotes keep a comma inside a value."""
    try:
        values = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CftError(
            f"{origin}: cannot read {text!r} as a comma-separated list of values ({problem}): an empty value "
            "(two commas in a row), an unclosed bracket or an unclosed quote is the usual cause.",
            hint="Brackets group a list value and quotes keep a comma inside one, e.g. adapters.layers=[0,1],all or prior.path='a,b.npy'.",
        ) from None
    if not isinstance(values, list):  # `a]` closes the sequence early
        raise CftError(f"{origin}: cannot read {text!r} as a comma-separated list of values (unbalanced bracket).")
    return values


def parse_grid(text: str) -> Grid:
    """`KEY=V1,V2,...` -> Grid (the key checked against the recipe schema, values YAML-parsed)."""
    if "=" not in text:
        raise CftError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid adapters.rank=4,8,16.")
    key, values_text = (s.strip() for s in text.split("=", 1))
    origin = f"--grid {key}"
    parts = check_key_path(key, "--grid")
    if key in _NOT_KNOBS:
        raise CftError(f"{origin}: `{key}` cannot be swept: {_NOT_KNOBS[key]}.")
    if not values_text:
        raise CftError(f"{origin}: the list of values is empty.", hint=f"Give at least one value, e.g. --grid {key}=V1,V2.")
    values = parse_values(values_text, origin)
    return Grid(key=key, parts=parts, texts=[format_value(v) for v in values], values=values)


def preset_grids(name: str) -> list[Grid]:
    if name not in PRESETS:
        raise CftError(f"--preset {name!r} is not a preset; presets: {', '.join(PRESETS)}.")
    return [Grid(key=k, parts=tuple(k.split(".")), texts=[format_value(v) for v in vs], values=list(vs)) for k, vs in PRESETS[name].items()]


def format_value(value: Any) -> str:
    """A knob value as people write it: 0.1, 8, true, labels, [0, 1]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _slug_value(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return "-".join(format_value(v) for v in value)
    return format_value(value)


def variant_name(changes: dict[str, Any]) -> str:
    """A stable, readable folder name: sorted key=value pairs of the knobs that differ from the
    recipe (`base` when none does), with a short hash when it is long or had to be cleaned."""
    if not changes:
        return BASE_NAME
    raw = "__".join(f"{k}={_slug_value(changes[k])}" for k in sorted(changes))
    clean = re.sub(r"[^A-Za-z0-9._=+-]", "_", raw)
    digest = hashlib.sha1(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if clean != raw or len(clean) > _MAX_NAME:
        clean = f"{clean[:_MAX_NAME - 9]}-{digest}"
    return clean


def _get(tree: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def is_numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


@dataclass
class Variant:
    name: str
    knobs: dict[str, Any]  # every swept key -> its (coerced) value in this variant
    changes: dict[str, Any]  # the knobs whose value differs from the recipe's
    recipe: Recipe  # validated; output_dir None

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={format_value(v)}" for k, v in self.changes.items()) or "(recipe)"


@dataclass
class Plan:
    recipe_path: Path
    sets: list[str]
    grids: list[Grid]
    mode: str  # "grid" (cartesian product) or "one-at-a-time"
    preset: Optional[str]
    seeds: list[int]
    base: Recipe
    base_knobs: dict[str, Any]
    variants: list[Variant]

    @property
    def keys(self) -> list[str]:
        return [g.key for g in self.grids]

    def runs(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in self.seeds]


def build_plan(
    recipe_path: Path,
    grid_texts: list[str],
    sets: list[str],
    *,
    one_at_a_time: bool = False,
    preset: Optional[str] = None,
    seeds: int = 1,
) -> Plan:
    """Parse and validate the whole sweep; raise CftError (naming the key) before anything runs."""
    if seeds < 1:
        raise CftError(f"--seeds must be at least 1, got {seeds}.")
    raw, lines = read_yaml_file(recipe_path)
    set_keys: dict[str, str] = {}
    for text, (parts, _value) in zip(sets, apply_overrides(raw, lines, sets)):
        set_keys[".".join(parts)] = text
    # field types and ranges of the recipe itself; cross-field rules are checked per variant (a
    # sweep may supply what the recipe lacks, e.g. --set prior.source=file --grid prior.path=a.npy,b.npy)
    try:
        base = Recipe.model_validate(copy.deepcopy(raw))
    except ValidationError:
        validate_raw(copy.deepcopy(raw), str(recipe_path), lines)
        raise

    grids: dict[str, Grid] = {}
    if preset:
        grids.update({g.key: g for g in preset_grids(preset)})
        one_at_a_time = True
    given = [parse_grid(t) for t in grid_texts]
    seen: set[str] = set()
    for grid in given:
        if grid.key in seen:
            raise CftError(f"--grid {grid.key} is given twice; put all its values in one --grid {grid.key}=V1,V2,....")
        seen.add(grid.key)
        grids[grid.key] = grid  # a --grid replaces the preset's values for that key
    if not grids:
        raise CftError("Nothing to sweep: give at least one --grid KEY=V1,V2,... or --preset paper.")
    for key in grids:
        if key in set_keys:
            raise CftError(f"--grid {key} and --set {set_keys[key]} both set {key}; drop one of them.")
    grid_list = list(grids.values())

    # 1. every value alone on the recipe: types and ranges (pydantic), reported all at once
    problems: list[str] = []
    coerced: dict[str, list[Any]] = {}
    for grid in grid_list:
        coerced[grid.key] = []
        for text, value in zip(grid.texts, grid.values):
            trial = copy.deepcopy(raw)
            apply_override(trial, grid.parts, value)
            try:
                recipe = Recipe.model_validate(trial)
            except ValidationError:
                try:
                    validate_raw(trial, f"--grid {grid.key}={text}")
                except CftError as exc:
                    # validate_raw lists `  path (line N): message`; the path is the key itself
                    for line in exc.message.splitlines()[1:]:
                        line = line.strip()
                        if line.startswith(grid.key + ":"):
                            line = line[len(grid.key) + 1:].strip()
                        problems.append(f"  --grid {grid.key}={text}: {line}")
                    continue
                raise
            coerced[grid.key].append(_get(recipe.model_dump(mode="json"), grid.parts))
        dup = _first_duplicate(coerced[grid.key])
        if dup is not None and len(coerced[grid.key]) == len(grid.texts):
            problems.append(f"  --grid {grid.key}: the value {format_value(dup)} is given twice.")
    if problems:
        raise CftError("Bad --grid values (nothing was run):\n" + "\n".join(problems))
    for grid in grid_list:
        grid.coerced = coerced[grid.key]

    base_dump = base.model_dump(mode="json")
    base_knobs = {g.key: _get(base_dump, g.parts) for g in grid_list}

    # 2. the variants, each validated as a whole recipe (cross-field rules too)
    assignments: list[dict[str, Any]] = []
    if one_at_a_time:
        assignments.append(dict(base_knobs))
        for grid in grid_list:
            for value in coerced[grid.key]:
                if value != base_knobs[grid.key]:
                    assignments.append({**base_knobs, grid.key: value})
    else:
        for combo in itertools.product(*(coerced[g.key] for g in grid_list)):
            assignments.append(dict(zip(grids, combo)))

    variants: list[Variant] = []
    names: dict[str, Variant] = {}
    bad: list[str] = []
    for knobs in assignments:
        trial = copy.deepcopy(raw)
        for grid in grid_list:
            if knobs[grid.key] != base_knobs[grid.key]:
                apply_override(trial, grid.parts, knobs[grid.key])
        changes = {k: v for k, v in knobs.items() if v != base_knobs[k]}
        describe = ", ".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "the recipe's own values"
        try:
            recipe = validate_raw(trial, f"variant {describe}")
        except CftError as exc:
            bad.append(exc.message)
            continue
        recipe.output_dir = None
        name = variant_name(changes)
        if name in names:
            continue
        variant = Variant(name=name, knobs=knobs, changes=changes, recipe=recipe)
        names[name] = variant
        variants.append(variant)
    if bad and len(bad) == len(assignments):
        validate_raw(copy.deepcopy(raw), str(recipe_path), lines)  # the recipe itself is the problem: say so once
    if bad:
        more = f"\n({len(bad) - 3} more invalid variants)" if len(bad) > 3 else ""
        raise CftError(
            f"{len(bad)} of {len(assignments)} variants are not valid recipes (nothing was run):\n" + "\n".join(bad[:3]) + more,
            hint="Change the --grid values (or the recipe) so that every combination is valid.",
        )
    return Plan(
        recipe_path=Path(recipe_path), sets=list(sets), grids=grid_list, mode="one-at-a-time" if one_at_a_time else "grid",
        preset=preset, seeds=[base.seed + i for i in range(seeds)], base=base, base_knobs=base_knobs, variants=variants,
    )


def _first_duplicate(values: list[Any]) -> Any:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            return v
        seen.append(v)
    return None


def seeded(recipe: Recipe, seed: int) -> Recipe:
    return recipe.model_copy(update={"seed": seed})
