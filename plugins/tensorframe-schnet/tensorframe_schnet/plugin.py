"""The plugin module named by the ``tensorframe`` entry point ``schnet``."""

from __future__ import annotations

import tensorframe
from tensorframe import BackboneSpec
from tensorframe_schnet.schnet import SchNetConfig, build_schnet


@tensorframe.hookimpl
def tensorframe_register_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            "schnet", SchNetConfig, build_schnet,
            "SchNet (Schütt et al. 2018): continuous-filter convolutions on a Gaussian distance expansion",
        )
    ]
