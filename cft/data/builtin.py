"""The embedded dataset: NCI molecules shipped inside the rdkit wheel, labels computed by RDKit.

It needs no network, so the quickstart and the tests run anywhere. The 30 binary tasks form
families that are visibly correlated (halogens, nitrogen groups, oxygen groups, sulfur, ring
systems, size/polarity properties), and a few are rare (iodine, nitrile, aldehyde, thiophene),
so the label prior has real structure to find.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import numpy as np
import rdkit
from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import Descriptors, Fragments, Lipinski, rdMolDescriptors

from cft.errors import CftError
from cft.files.atomic import atomic_write_with
from cft.files.paths import cache_dir

BUILTIN_VERSION = "nci-first5k-v1"


def builtin_smiles_path() -> str:
    return os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")


def _has(symbol: str) -> Callable[[Chem.Mol], bool]:
    return lambda m: any(a.GetSymbol() == symbol for a in m.GetAtoms())


def _fused_rings(m: Chem.Mol) -> bool:
    rings = [set(r) for r in m.GetRingInfo().AtomRings()]
    return any(len(a & b) >= 2 for i, a in enumerate(rings) for b in rings[i + 1 :])


def _heteroaromatic(m: Chem.Mol) -> bool:
    return rdMolDescriptors.CalcNumAromaticHeterocycles(m) > 0


def _lipinski_pass(m: Chem.Mol) -> bool:
    violations = sum(
        (
            Descriptors.MolWt(m) > 500,
            Descriptors.MolLogP(m) > 5,
            Lipinski.NumHDonors(m) > 5,
            Lipinski.NumHAcceptors(m) > 10,
        )
    )
    return violations <= 1


def _veber_pass(m: Chem.Mol) -> bool:
    return Lipinski.NumRotatableBonds(m) <= 10 and rdMolDescriptors.CalcTPSA(m) <= 140


# name -> (family, predicate). Order is the task order.
TASKS: dict[str, tuple[str, Callable[[Chem.Mol], bool]]] = {
    "halogen_any": ("halogen", lambda m: Fragments.fr_halogen(m) > 0),
    "has_F": ("halogen", _has("F")),
    "has_Cl": ("halogen", _has("Cl")),
    "has_Br": ("halogen", _has("Br")),
    "has_I": ("halogen", _has("I")),
    "alkyl_halide": ("halogen", lambda m: Fragments.fr_alkyl_halide(m) > 0),
    "primary_amine": ("nitrogen", lambda m: Fragments.fr_NH2(m) > 0),
    "amide": ("nitrogen", lambda m: Fragments.fr_amide(m) > 0),
    "nitro": ("nitrogen", lambda m: Fragments.fr_nitro(m) > 0),
    "nitrile": ("nitrogen", lambda m: Fragments.fr_nitrile(m) > 0),
    "aniline": ("nitrogen", lambda m: Fragments.fr_aniline(m) > 0),
    "pyridine": ("nitrogen", lambda m: Fragments.fr_pyridine(m) > 0),
    "ketone": ("oxygen", lambda m: Fragments.fr_ketone(m) > 0),
    "ester": ("oxygen", lambda m: Fragments.fr_ester(m) > 0),
    "ether": ("oxygen", lambda m: Fragments.fr_ether(m) > 0),
    "phenol": ("oxygen", lambda m: Fragments.fr_phenol(m) > 0),
    "carboxylic_acid": ("oxygen", lambda m: Fragments.fr_COO(m) > 0),
    "aliphatic_OH": ("oxygen", lambda m: Fragments.fr_Al_OH(m) > 0),
    "aldehyde": ("oxygen", lambda m: Fragments.fr_aldehyde(m) > 0),
    "has_S": ("sulfur", _has("S")),
    "sulfide": ("sulfur", lambda m: Fragments.fr_sulfide(m) > 0),
    "sulfonamide": ("sulfur", lambda m: Fragments.fr_sulfonamd(m) > 0),
    "thiophene": ("sulfur", lambda m: Fragments.fr_thiophene(m) > 0),
    "aromatic_rings_ge2": ("rings", lambda m: rdMolDescriptors.CalcNumAromaticRings(m) >= 2),
    "rings_ge3": ("rings", lambda m: rdMolDescriptors.CalcNumRings(m) >= 3),
    "fused_rings": ("rings", _fused_rings),
    "heteroaromatic": ("rings", _heteroaromatic),
    "molwt_gt_300": ("properties", lambda m: Descriptors.MolWt(m) > 300),
    "logp_gt_3": ("properties", lambda m: Descriptors.MolLogP(m) > 3),
    "tpsa_gt_75": ("properties", lambda m: rdMolDescriptors.CalcTPSA(m) > 75),
    "hbd_gt_2": ("properties", lambda m: Lipinski.NumHDonors(m) > 2),
    "hba_gt_5": ("properties", lambda m: Lipinski.NumHAcceptors(m) > 5),
    "rotatable_gt_5": ("properties", lambda m: Lipinski.NumRotatableBonds(m) > 5),
    "lipinski_pass": ("properties", _lipinski_pass),
    "veber_pass": ("properties", _veber_pass),
}


def builtin_molecules(n: int, start: int = 0) -> list[str]:
    """SMILES `start .. start + n - 1` of the embedded set's molecules that RDKit parses (for
    benchmarks and tests that need real molecules without a dataset)."""
    RDLogger.DisableLog("rdApp.*")  # the NCI set holds a few molecules RDKit rejects, noisily
    out: list[str] = []
    with open(builtin_smiles_path(), encoding="utf-8") as fh:
        for line in fh:
            s = line.split()[0] if line.strip() else ""
            if s and Chem.MolFromSmiles(s) is not None:
                out.append(s)
            if len(out) >= start + n:
                break
    return out[start:]


def read_builtin() -> tuple[list[str], list[str], np.ndarray]:
    """(SMILES, task names, labels [n, T] with NaN where RDKit cannot parse the molecule).

    Computing 35 descriptors for 5,000 molecules takes seconds, so the labels are cached."""
    path = builtin_smiles_path()
    if not os.path.exists(path):
        raise CftError(
            f"The embedded dataset {path} is missing from the rdkit installation.",
            hint="Reinstall rdkit from PyPI (the wheel ships rdkit/Data/NCI/first_5K.smi).",
        )
    with open(path, encoding="utf-8") as fh:
        smiles = [line.split()[0] for line in fh if line.strip()]
    names = list(TASKS)
    cached = cache_dir() / "builtin" / f"{BUILTIN_VERSION}-rdkit-{rdkit.__version__}.npy"
    if cached.exists():
        try:
            labels = np.load(cached, allow_pickle=False)
            if labels.shape == (len(smiles), len(names)):
                return smiles, names, labels
        except (OSError, ValueError):
            pass
    labels = _compute_labels(smiles)
    with contextlib.suppress(OSError, CftError):
        atomic_write_with(cached, lambda tmp: _save_npy(tmp, labels))
    return smiles, names, labels


def _save_npy(tmp, array: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _compute_labels(smiles: list[str]) -> np.ndarray:
    RDLogger.DisableLog("rdApp.*")
    labels = np.full((len(smiles), len(TASKS)), np.nan, dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            continue
        labels[i] = [float(bool(pred(mol))) for _, pred in TASKS.values()]
    return labels
