"""One spec tree: recipes and bundle metadata are validated by the same bounded types of cft/spec.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from conftest import REPO


def test_tightening_one_bound_in_spec_changes_recipe_and_bundle_validation(tmp_path):
    """Copy the package, lower the bound on the number of adapters in cft/spec.py only, and check
    that both a recipe and a bundle header with 8 adapters are then refused."""
    shutil.copytree(REPO / "cft", tmp_path / "cft")
    spec = tmp_path / "cft" / "spec.py"
    text = spec.read_text()
    assert "NumAdapters = Annotated[int, Field(ge=1, le=256)]" in text
    spec.write_text(text.replace("NumAdapters = Annotated[int, Field(ge=1, le=256)]", "NumAdapters = Annotated[int, Field(ge=1, le=4)]"))
    probe = textwrap.dedent("""
        from pydantic import ValidationError
        from cft.recipe.schema import Recipe
        from cft.spec import BackboneSpec, ModelSpec
        refused = []
        for make in (lambda: Recipe.model_validate({"adapters": {"num_adapters": 8}}),
                     lambda: ModelSpec.from_dict({"backbone": BackboneSpec().to_dict(), "tasks": ["a"], "kinds": ["binary"],
                         "parts": [{"name": "p", "tasks": ["a"], "layers": [0], "num_adapters": 8, "rank": 2}]})):
            try:
                make()
            except ValidationError as exc:
                refused.append("less than or equal to 4" in str(exc))
            else:
                refused.append(False)
        print(refused)
    """)
    tightened = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert tightened.stdout.strip() == "[True, True]", tightened.stderr
    original = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert original.stdout.strip() == "[False, False]", original.stderr
