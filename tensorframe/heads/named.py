"""The paper's heads as special cases of :class:`CartesianTensorHead`, with complete word sets.

    force       F_j   = sum_k t_kj e_kj                                             (3)
    born        Z*_j  = sum_k t_kj e_kj(x)e_kj + sum_{k!=i} t_kji e_kj(x)e_ji         (4-6)
    dielectric  eps   = 1/N sum_j sum_k t_kj e_kj(x)e_kj                            (7)
    piezo       e     = 1/N sum_j [sum_k t_kj e_kj(x)e_kj(x)e_kj
                                   + sum_{k!=i} t_kji e_kj(x)e_ji(x)e_ji]            (8)

These are the word sets of ``basis: paper``. The default ``basis: complete`` adds to each the
isotropic words (``delta_ij`` per atom and per edge; ``delta_ij a_k`` placements at rank 3)
and the normal-direction words of triplets (``c (x) c``; ``c (x) c (x) a`` placements), so
that planar and linear environments get every component their point group allows
(docs/physics.md, "Completeness on degenerate environments"). Forces are already complete.
"""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from tensorframe.heads.tensor import Basis, CartesianTensorHead, select_words
from tensorframe.ops.basis import WordSet, complete_words
from tensorframe.registry import get_registry
from tensorframe.specs import FeatureDims, PluginConfig


def _field(name: str):
    return get_registry().get("field", name)


class NamedHeadConfig(PluginConfig):
    hidden: PositiveInt = 64
    basis: Basis = "complete"
    """``complete`` (default): the paper's words plus isotropic and normal-direction words;
    ``paper``: exactly the paper's Eqs. 3-8."""


class ForceHeadConfig(NamedHeadConfig):
    pass


class BornHeadConfig(NamedHeadConfig):
    acoustic_sum_rule: bool = False
    """Subtract the mean Born charge so that sum_k Z*_k = 0 exactly, over each structure or
    each fragment (``sum_rule_over``)."""
    sum_rule_over: Literal["structure", "fragment"] = "structure"
    """``structure``: one sum rule for the whole structure (a crystal, one molecule): the mean
    is over every atom, so disconnected pieces are coupled (water next to NH3, 50 Å apart,
    shift each other's charges). ``fragment``: one sum rule per connected fragment (atoms
    joined by edges within the cutoff): right for several neutral molecules in one file."""


class DielectricHeadConfig(NamedHeadConfig):
    positive_definite: bool = False
    """Non-negative coefficients on positive semi-definite words (e(x)e, and the identity per
    atom with the complete basis) plus the identity: eps >= 1 in every direction."""


class PiezoHeadConfig(NamedHeadConfig):
    pass


class DipoleHeadConfig(NamedHeadConfig):
    charge_flow: bool = False
    """Add sum_i q_i (r_i - r_c) with sum_i q_i = 0 (molecules only; refused on periodic structures)."""


class PolarizabilityHeadConfig(NamedHeadConfig):
    charge_flow: bool = False
    """Add sum_i nu_i (x) (r_i - r_c) + transpose (molecules only; refused on periodic structures)."""


class HyperpolarizabilityHeadConfig(NamedHeadConfig):
    pass


PAPER_WORDS = {
    "forces": WordSet(edge=("a",)),
    "born_charges": WordSet(edge=("aa",), triplet=("ab",)),
    "dielectric": WordSet(edge=("aa",)),
    "piezo": WordSet(edge=("aaa",), triplet=("abb",)),
}


def named_words(field_name: str, basis: Basis) -> WordSet:
    """The words of a named head: the paper's, completed unless ``basis == "paper"``.
    Edge-only heads (forces, dielectric) stay edge-only. Fields the paper has no head for
    (dipole, polarizability, hyperpolarizability) take the general tensor head's words."""
    if field_name not in PAPER_WORDS:
        field = _field(field_name)
        return select_words(field.symmetry, field.parity, basis)
    paper = PAPER_WORDS[field_name]
    if basis == "paper":
        return paper
    field = _field(field_name)
    return complete_words(field.symmetry, field.parity, paper, use_triplets=bool(paper.triplet))


def _build(field_name: str, config: NamedHeadConfig, dims: FeatureDims, **options) -> CartesianTensorHead:
    words = named_words(field_name, config.basis)
    return CartesianTensorHead(
        _field(field_name), dims, words.edge, words.triplet, hidden=config.hidden, atom_words=words.atom, **options
    )


def build_force_head(config: ForceHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build("forces", config, dims)


def build_born_head(config: BornHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build("born_charges", config, dims, subtract_structure_mean=config.acoustic_sum_rule,
                  mean_over=config.sum_rule_over)


def build_dielectric_head(config: DielectricHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build(
        "dielectric", config, dims, nonnegative=config.positive_definite, add_identity=config.positive_definite
    )


def build_piezo_head(config: PiezoHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build("piezo", config, dims)


def build_dipole_head(config: DipoleHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build("dipole", config, dims, charge_flow=config.charge_flow)


def build_polarizability_head(config: PolarizabilityHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build("polarizability", config, dims, charge_flow=config.charge_flow)


def build_hyperpolarizability_head(config: HyperpolarizabilityHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return _build("hyperpolarizability", config, dims)
