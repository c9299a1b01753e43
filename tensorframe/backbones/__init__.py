"""The backbone contract, and the reference backbone the built-in plugin registers
(``reference``). Other backbones live in their own distributions (plugins/)."""

from tensorframe.backbones.base import Backbone

__all__ = ["Backbone"]
