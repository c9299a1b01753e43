"""Old home of the reference backbone, kept so that existing imports work: it lives in
:mod:`tensorframe.backbones.reference`."""

from tensorframe.backbones.reference import ReferenceBackbone, ReferenceBackboneConfig, build_reference_backbone

__all__ = ["ReferenceBackbone", "ReferenceBackboneConfig", "build_reference_backbone"]
