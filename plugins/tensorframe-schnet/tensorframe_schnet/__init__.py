"""SchNet as a tensorframe backbone plugin (entry point ``schnet``)."""

from tensorframe_schnet.schnet import SchNet, SchNetConfig, build_schnet

__all__ = ["SchNet", "SchNetConfig", "build_schnet"]
