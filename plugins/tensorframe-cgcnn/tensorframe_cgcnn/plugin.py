"""The plugin module named by the ``tensorframe`` entry point ``cgcnn``."""

from __future__ import annotations

import tensorframe
from tensorframe import BackboneSpec
from tensorframe_cgcnn.cgcnn import CGCNNConfig, build_cgcnn


@tensorframe.hookimpl
def tensorframe_register_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            "cgcnn", CGCNNConfig, build_cgcnn,
            "CGCNN (Xie & Grossman 2018): gated graph convolutions on a Gaussian distance expansion",
        )
    ]
