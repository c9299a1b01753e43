"""The backbone contract. Concrete backbones live in their own distributions (plugins/)."""

from tensorframe.backbones.base import Backbone

__all__ = ["Backbone"]
