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

from tensorframe.fields import FieldSpec
from tensorframe.heads.tensor import Basis, CartesianTensorHead, select_words
from tensorframe.ops.basis import WordSet, complete_words
from tensorframe.specs import FeatureDims, FieldTable, PluginConfig


def _field(fields: FieldTable, name: str) -> FieldSpec:
    """The spec of ``name`` in the field table; a ValueError listing the table when absent."""
    try:
        return fields[name]
    except KeyError:
        raise ValueError(
            f"field {name!r} is not registered (registered fields: {', '.join(sorted(fields)) or 'none'})"
        ) from None


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


def named_words(field: FieldSpec, basis: Basis) -> WordSet:
    """The words of a named head: the paper's, completed unless ``basis == "paper"``.
    Edge-only heads (forces, dielectric) stay edge-only. Fields the paper has no head for
    (dipole, polarizability, hyperpolarizability) take the general tensor head's words."""
    if field.name not in PAPER_WORDS:
        return select_words(field.symmetry, field.parity, basis)
    paper = PAPER_WORDS[field.name]
    if basis == "paper":
        return paper
    return complete_words(field.symmetry, field.parity, paper, use_triplets=bool(paper.triplet))


def _build(field_name: str, config: NamedHeadConfig, dims: FeatureDims, fields: FieldTable,
           **options) -> CartesianTensorHead:
    """The head predicting ``fields[field_name]`` with its named words; ``options`` go to
    :class:`CartesianTensorHead`."""
    field = _field(fields, field_name)
    words = named_words(field, config.basis)
    return CartesianTensorHead(
        field, dims, words.edge, words.triplet, hidden=config.hidden, atom_words=words.atom, **options
    )


def build_force_head(config: ForceHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    return _build("forces", config, dims, fields)


def build_born_head(config: BornHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    return _build("born_charges", config, dims, fields, subtract_structure_mean=config.acoustic_sum_rule,
                  mean_over=config.sum_rule_over)


def build_dielectric_head(config: DielectricHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    return _build(
        "dielectric", config, dims, fields, nonnegative=config.positive_definite, add_identity=config.positive_definite
    )


def build_piezo_head(config: PiezoHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    return _build("piezo", config, dims, fields)


def build_dipole_head(config: DipoleHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    return _build("dipole", config, dims, fields, charge_flow=config.charge_flow)


def build_polarizability_head(
    config: PolarizabilityHeadConfig, dims: FeatureDims, fields: FieldTable
) -> CartesianTensorHead:
    return _build("polarizability", config, dims, fields, charge_flow=config.charge_flow)


def build_hyperpolarizability_head(
    config: HyperpolarizabilityHeadConfig, dims: FeatureDims, fields: FieldTable
) -> CartesianTensorHead:
    return _build("hyperpolarizability", config, dims, fields)
