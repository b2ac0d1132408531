"""`--set key.path=value`: the one engine that overrides recipe fields (train, eval, compose
calibration and sweeps all use it). Values are parsed as YAML scalars.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, get_origin

import yaml
from pydantic import BaseModel

from cft.errors import CftError
from cft.recipe.schema import Recipe, submodel


def check_key_path(dotted: str, origin: str = "--set") -> tuple[str, ...]:
    """Check that `dotted` names a recipe field; return its parts."""
    parts = tuple(dotted.split("."))
    if not dotted or any(not p for p in parts):
        raise CftError(f"{origin} {dotted!r}: expected a dotted field path such as routing.temperature.")
    model: Any = Recipe
    for depth, part in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            # inside a free-form mapping (e.g. data.task_kinds.<task>): any key goes
            if _is_mapping_field(model):
                return parts
            raise CftError(f"{origin} {dotted}: `{'.'.join(parts[:depth])}` is a value, not a section.")
        if part not in model.model_fields:
            names = list(model.model_fields)
            close = difflib.get_close_matches(part, names, n=1)
            where = ".".join(parts[:depth]) or "the recipe"
            raise CftError(
                f"{origin} {dotted}: {where} has no field `{part}`"
                + (f" (did you mean `{close[0]}`?)" if close else "")
                + f". Valid fields: {', '.join(names)}."
            )
        sub = submodel(model, part)
        model = sub if sub is not None else model.model_fields[part].annotation
    return parts


def _is_mapping_field(annotation: Any) -> bool:
    return get_origin(annotation) is dict


def parse_override(text: str, origin: str = "--set") -> tuple[tuple[str, ...], Any]:
    if "=" not in text:
        raise CftError(f"{origin} {text!r}: expected key.path=value, e.g. {origin} routing.temperature=0.5.")
    key, value_text = text.split("=", 1)
    parts = check_key_path(key.strip(), origin)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        value = value_text  # keep as a plain string; validation will judge it
    return parts, value


def apply_override(raw: dict, parts: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict, lines: dict[tuple, int], sets: Iterable[str], origin: str = "--set") -> list[tuple[tuple[str, ...], Any]]:
    """Apply every `key.path=value` of `sets` to a raw recipe mapping, in order (the last one of a
    key wins), and forget the YAML line of each overridden key (the value no longer comes from
    that line). Returns the parsed (parts, value) pairs."""
    applied = []
    for text in sets:
        parts, value = parse_override(text, origin)
        apply_override(raw, parts, value)
        lines.pop(parts, None)
        applied.append((parts, value))
    return applied
