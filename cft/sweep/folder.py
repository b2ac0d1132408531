"""A sweep's folder: one run folder per variant and seed, and the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cft.errors import CftError
from cft.files.atomic import atomic_write_json, atomic_write_text
from cft.files.paths import safe_join
from cft.files.runfolder import RunFolder
from cft.recipe.load import recipe_to_yaml
from cft.sweep.plan import Plan, Variant, seeded


@dataclass
class RunResult:
    variant: Variant
    seed: int
    status: str  # finished | failed | pending | running | interrupted
    summary: Optional[dict] = None
    error: str = ""
    run_dir: Optional[Path] = None


class SweepFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def variant_dir(self, variant: Variant) -> Path:
        # the name comes from --grid values (a path value can hold `/`): one plain component, never outside
        return safe_join(self.path / "variants", variant.name, what="variant name")

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}"

    def log(self, variant: Variant, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}.log"

    def record(self, variant: Variant, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}.json"

    def is_sweep(self) -> bool:
        return (self.path / "ablation.json").exists()

    def check(self, plan: Plan) -> None:
        """Refuse a folder that is not a sweep, or whose runs were made from other recipes."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise CftError(f"Output path {path} is a file, not a folder.", hint="Choose another --output-dir.")
        if path.exists() and any(p.name not in (".lock", "study.db") for p in path.iterdir()) and not self.is_sweep():
            raise CftError(
                f"Output folder {path} is not empty and does not hold a cft ablation; cft will not write into it.",
                hint="Choose another --output-dir (or an empty folder).",
            )
        conflicts = []
        for variant, seed in plan.runs():
            run = RunFolder(self.run_dir(variant, seed))
            if not run.path.exists():
                continue
            if not run.is_run():
                if any(run.path.iterdir()):
                    conflicts.append(f"{run.path} is not empty and holds no cft run")
                continue
            diffs = run.recipe_differences(seeded(variant.recipe, seed))
            if diffs:
                conflicts.append(f"{run.path} holds a run of a different recipe ({'; '.join(diffs[:3])})")
        if conflicts:
            more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
            raise CftError(
                f"Output folder {path} holds runs that this sweep would have to replace: {'; '.join(conflicts[:3])}{more}.",
                hint="Use another --output-dir, or delete those run folders to rerun them.",
            )

    def status(self, variant: Variant, seed: int) -> RunResult:
        run_dir = self.run_dir(variant, seed)
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            try:
                return RunResult(variant, seed, "finished", json.loads(summary_path.read_text(encoding="utf-8")), run_dir=run_dir)
            except (OSError, ValueError):
                pass
        record = self.record(variant, seed)
        if record.exists():
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if data.get("status") == "failed":
                return RunResult(variant, seed, "failed", error=str(data.get("error", "")), run_dir=run_dir)
        return RunResult(variant, seed, "pending", run_dir=run_dir)

    def write_definition(self, plan: Plan, command: str) -> None:
        for variant in plan.variants:
            vdir = self.variant_dir(variant)
            atomic_write_json(vdir / "variant.json", {"name": variant.name, "knobs": variant.knobs, "changes": variant.changes})
            atomic_write_text(vdir / "recipe.yaml", f"# variant {variant.label} of {plan.recipe_path}\n" + recipe_to_yaml(variant.recipe))
        atomic_write_json(self.path / "ablation.json", {
            "format": "cft-ablation-1",
            "command": command,
            "recipe": str(plan.recipe_path),
            "sets": plan.sets,
            "mode": plan.mode,
            "preset": plan.preset,
            "grids": {g.key: g.coerced for g in plan.grids},
            "recipe_values": plan.base_knobs,
            "seeds": plan.seeds,
            "variants": [{"name": v.name, "knobs": v.knobs, "changes": v.changes} for v in plan.variants],
        })
