"""tensorframe: equivariant tensor properties (forces, Born charges, dielectric, piezo, ...)
of molecules and crystals from any rotation-invariant graph neural network."""

from tensorframe.calculator import TensorframeCalculator
from tensorframe.checkpoint import load_model, save_checkpoint
from tensorframe.config import ConfigError, ModelConfig
from tensorframe.fields import FieldSpec
from tensorframe.hookspecs import hookimpl
from tensorframe.io.read import read_structures
from tensorframe.model import TensorModel, build_model
from tensorframe.registry import PluginError, get_registry, list_plugins
from tensorframe.specs import BackboneSpec, FeatureDims, GraphSettings, HeadSpec, PluginConfig, ReaderSpec
from tensorframe.types import Graph, InvariantFeatures, Sample

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec", "ConfigError", "FeatureDims", "FieldSpec", "Graph", "GraphSettings", "HeadSpec",
    "InvariantFeatures", "ModelConfig", "PluginConfig", "PluginError", "ReaderSpec", "Sample", "TensorModel", "TensorframeCalculator",
    "build_model", "get_registry", "hookimpl", "list_plugins", "load_model", "read_structures", "save_checkpoint",
]
