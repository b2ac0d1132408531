"""Reading recipes: YAML with line numbers, validation, and one message listing every problem.

Each problem is reported with its field path and the YAML line it comes from.
"""

from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from cft.errors import CftError
from cft.recipe.overrides import apply_overrides
from cft.recipe.rules import semantic_problems
from cft.recipe.schema import Recipe, field_names


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return lines
    seen: set[int] = set()

    def walk(node: Any, path: tuple) -> None:
        # an alias (*name) is the same node object again: walking it once keeps anchors that nest
        # aliases ("billion laughs") linear instead of exponential
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    try:
        walk(root, ())
    except RecursionError:
        pass
    return lines


def _describe_error(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    templates = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "missing": "required field is missing",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "int_type": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping of fields",
        "model_attributes_type": "must be a mapping of fields",
        "literal_error": "must be one of {expected}",
        "tuple_type": "must be a list",
        "too_short": "has too few items",
        "too_long": "has too many items",
    }
    if kind in templates:
        try:
            pretty = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}
            return templates[kind].format(**pretty)
        except (KeyError, IndexError):
            pass
    msg = err.get("msg", kind)
    return msg.removeprefix("Value error, ")


def format_problems(source: str, problems: list[tuple[tuple, str, Any, bool]], lines: dict[tuple, int]) -> str:
    """One line per problem: `path (line N): message, got value`."""
    rendered = []
    for path, message, value, show_value in problems:
        dotted = ".".join(str(p) for p in path) or "(top level)"
        line = None
        for cut in range(len(path), 0, -1):  # nearest enclosing key that has a line
            if path[:cut] in lines:
                line = lines[path[:cut]]
                break
        where = f" (line {line})" if line else ""
        got = f", got {_short_repr(value)}" if show_value else ""
        rendered.append(f"  {dotted}{where}: {message}{got}")
    noun = "problem" if len(problems) == 1 else "problems"
    return f"{source}: {len(problems)} {noun}:\n" + "\n".join(rendered)


_REPR = reprlib.Repr()

_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def _short_repr(value: Any) -> str:
    """repr of a user's value, bounded in size and depth (YAML aliases can nest a value in itself)."""
    return _REPR.repr(value)


def validate_raw(raw: dict, source: str, lines: Optional[dict[tuple, int]] = None) -> Recipe:
    """Validate a raw mapping; raise CftError listing every problem with its path and line."""
    lines = lines or {}
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            # drop pydantic's union-member tags (`list[int]`, `literal['all']`), but never the
            # unknown key itself, which is the user's text and may contain anything
            keep_last = err["type"] == "extra_forbidden" and loc
            head = loc[:-1] if keep_last else loc
            path = tuple(p for p in head if not (isinstance(p, str) and ("[" in p or p.startswith("literal")))) + (loc[-1:] if keep_last else ())
            message = _describe_error(err)
            if err["type"] == "extra_forbidden":
                names = field_names(Recipe, path[:-1])
                close = difflib.get_close_matches(str(path[-1]), names, n=1)
                message = "unknown field" + (f" (did you mean `{close[0]}`?)" if close else "")
                if names:
                    message += f"; valid fields here: {', '.join(names)}"
                problems.append((path, message, None, False))
            else:
                problems.append((path, message, err.get("input"), err["type"] != "missing"))
        raise CftError(format_problems(source, _dedupe(problems), lines)) from None
    semantic = semantic_problems(recipe)
    if semantic:
        raise CftError(
            format_problems(source, [(p, m, v, v is not None) for p, m, v in semantic], lines)
        )
    return recipe


def _dedupe(problems: list) -> list:
    seen, out = set(), []
    for problem in problems:
        key = (problem[0], problem[1])
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def read_yaml_file(path: str | os.PathLike) -> tuple[dict, dict[tuple, int]]:
    """Read a recipe YAML into a raw mapping plus key-path -> line numbers."""
    p = Path(path)
    if not p.exists():
        raise CftError(f"Recipe file {p} does not exist.", hint="Check the path; `cft recipes list` shows shipped recipes.")
    if p.is_dir():
        raise CftError(f"Recipe path {p} is a folder, not a YAML file.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CftError(f"Cannot read recipe {p}: {exc}.") from None
    return parse_yaml_text(text, str(p))


def parse_yaml_text(text: str, source: str) -> tuple[dict, dict[tuple, int]]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CftError(f"{source}{where}: invalid YAML: {problem}.", hint="Fix the syntax (indentation, colons, quotes).") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. absurd numbers or nesting
        raise CftError(f"{source}: invalid YAML: {exc}.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CftError(f"{source}: a recipe must be a YAML mapping of fields (data, backbone, ...), got {type(raw).__name__}.")
    return raw, _yaml_lines(text)


def load_recipe(path: str | os.PathLike, sets: Optional[list[str]] = None) -> Recipe:
    """Load, override and validate a recipe file; CftError lists every problem at once."""
    raw, lines = read_yaml_file(path)
    apply_overrides(raw, lines, sets or [])
    recipe = validate_raw(raw, str(path), lines)
    if recipe.output_dir is None:
        recipe.output_dir = str(Path("runs") / Path(path).stem)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def resolve_data_root(cli_root: Optional[str], recipe_root: Optional[str]) -> Path:
    """Precedence: --data-root, then CFT_DATA_ROOT, then the recipe's data.root, then '.'."""
    for candidate in (cli_root, os.environ.get("CFT_DATA_ROOT"), recipe_root):
        if candidate:
            return Path(candidate).expanduser()
    return Path(".")
