"""A head plugin: the quadrupole moment of a molecule (a new field and its head)."""

import tensorframe
from tensorframe import CartesianTensorHead, FeatureDims, FieldSpec, FieldTable, HeadSpec, PluginConfig, complete_words

QUADRUPOLE = FieldSpec(
    "quadrupole", "structure", "ij=ji", 1, "e*A^2", "sum",
    "second moment of the charge density Q_ij = sum q r_i r_j about the centre of mass (not traceless)",
)


class QuadrupoleHeadConfig(PluginConfig):
    hidden: int = 32


def build_quadrupole_head(config: QuadrupoleHeadConfig, dims: FeatureDims, fields: FieldTable) -> CartesianTensorHead:
    """Invariant coefficients times the complete words of a symmetric, even rank-2 tensor
    (e_kj e_kj per edge, the identity per atom and edge, normal directions per triplet),
    summed over atoms. Shapes: -> (B, 3, 3)"""
    field = fields["quadrupole"]
    words = complete_words(field.symmetry, field.parity)
    return CartesianTensorHead(field, dims, words.edge, words.triplet, atom_words=words.atom, hidden=config.hidden)


@tensorframe.hookimpl
def tensorframe_register_fields():
    return [QUADRUPOLE]


@tensorframe.hookimpl
def tensorframe_register_heads():
    return [HeadSpec("quadrupole", QuadrupoleHeadConfig, build_quadrupole_head, "molecular quadrupole moment")]
