"""The paper's heads as special cases of :class:`CartesianTensorHead`.

    force       F_j   = sum_k t_kj e_kj                                             (3)
    born        Z*_j  = sum_k t_kj e_kj(x)e_kj + sum_{k!=i} t_kji e_kj(x)e_ji         (4-6)
    dielectric  eps   = 1/N sum_j sum_k t_kj e_kj(x)e_kj                            (7)
    piezo       e     = 1/N sum_j [sum_k t_kj e_kj(x)e_kj(x)e_kj
                                   + sum_{k!=i} t_kji e_kj(x)e_ji(x)e_ji]            (8)
"""

from __future__ import annotations

from tensorframe.heads.tensor import CartesianTensorHead
from tensorframe.registry import get_registry
from tensorframe.specs import FeatureDims, PluginConfig


def _field(name: str):
    return get_registry().get("field", name)


class ForceHeadConfig(PluginConfig):
    hidden: int = 64


class BornHeadConfig(PluginConfig):
    hidden: int = 64
    acoustic_sum_rule: bool = False
    """Subtract each structure's mean Born charge so that sum_k Z*_k = 0 exactly."""


class DielectricHeadConfig(PluginConfig):
    hidden: int = 64
    positive_definite: bool = False
    """Non-negative coefficients on e(x)e plus the identity: eps >= 1 in every direction."""


class PiezoHeadConfig(PluginConfig):
    hidden: int = 64


def build_force_head(config: ForceHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return CartesianTensorHead(_field("forces"), dims, ("a",), (), hidden=config.hidden)


def build_born_head(config: BornHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return CartesianTensorHead(
        _field("born_charges"), dims, ("aa",), ("ab",), hidden=config.hidden,
        subtract_structure_mean=config.acoustic_sum_rule,
    )


def build_dielectric_head(config: DielectricHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return CartesianTensorHead(
        _field("dielectric"), dims, ("aa",), (), hidden=config.hidden,
        nonnegative=config.positive_definite, add_identity=config.positive_definite,
    )


def build_piezo_head(config: PiezoHeadConfig, dims: FeatureDims) -> CartesianTensorHead:
    return CartesianTensorHead(_field("piezo"), dims, ("aaa",), ("abb",), hidden=config.hidden)
