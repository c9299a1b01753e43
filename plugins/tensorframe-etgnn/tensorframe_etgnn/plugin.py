"""Registers the ETGNN backbone with tensorframe (entry point group ``tensorframe``)."""

from __future__ import annotations

import tensorframe
from tensorframe import BackboneSpec
from tensorframe_etgnn.config import ETGNNConfig
from tensorframe_etgnn.model import build_etgnn


@tensorframe.hookimpl
def tensorframe_register_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            "etgnn", ETGNNConfig, build_etgnn,
            "ETGNN (Zhong et al. 2023): DimeNet++ edge messages plus triplet messages; authors' cutoffs 6 Å / 4 Å",
        )
    ]
