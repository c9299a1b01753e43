"""tensorframe: equivariant tensor properties (forces, Born charges, dielectric, piezo, ...)
of molecules and crystals from any rotation-invariant graph neural network.

Everything a plugin author needs is importable from here (docs/plugins.md):

    from tensorframe import (Backbone, BackboneSpec, CartesianTensorHead, FeatureDims, FieldSpec,
                             FieldTable, Graph, GraphSettings, Head, HeadSpec, InvariantFeatures,
                             PluginConfig, ReaderSpec, Sample, hookimpl, scatter_sum)

The test kit for plugin test suites is :mod:`tensorframe.testing` (not imported here).
"""

from tensorframe._version import __version__
from tensorframe.backbones import Backbone
from tensorframe.calculator import TensorframeCalculator
from tensorframe.checkpoint import load_model, save_checkpoint
from tensorframe.compilation import compile_model
from tensorframe.config import ConfigError, ModelConfig
from tensorframe.fields import FieldSpec
from tensorframe.heads import CartesianTensorHead, Head, ScalarHead
from tensorframe.hookspecs import hookimpl
from tensorframe.io.read import read_structures
from tensorframe.io.validation import InputError
from tensorframe.model import TensorModel, build_model
from tensorframe.ops.basis import WordSet, complete_words
from tensorframe.ops.blocking import blocked_inference, row_blocks
from tensorframe.ops.radial import BesselBasis, GaussianBasis, cosine_cutoff, legendre_basis
from tensorframe.ops.scatter import scatter_mean, scatter_sum
from tensorframe.ops.triplet_kernels import TripletBasis, gather_mul, gather_mul_scatter
from tensorframe.registry import PluginError, Registry, build_registry, get_registry, list_plugins
from tensorframe.specs import (
    BackboneSpec,
    FeatureDims,
    FieldTable,
    GraphSettings,
    HeadSpec,
    PluginConfig,
    ReaderSpec,
)
from tensorframe.types import Graph, InvariantFeatures, Sample

__all__ = [
    # for plugins: base classes, specs, graph types, the hook marker, the basis words of
    # CartesianTensorHead, radial bases, scatter sums, registries (docs/plugins.md)
    "Backbone", "BackboneSpec", "BesselBasis", "CartesianTensorHead", "FeatureDims", "FieldSpec", "FieldTable",
    "GaussianBasis", "Graph", "GraphSettings", "Head", "HeadSpec", "InvariantFeatures", "PluginConfig", "ReaderSpec",
    "Registry", "Sample", "ScalarHead", "WordSet", "build_registry", "complete_words", "cosine_cutoff", "hookimpl",
    "legendre_basis", "scatter_mean", "scatter_sum", "TripletBasis", "gather_mul", "gather_mul_scatter", "row_blocks",
    "blocked_inference",
    # for users
    "ConfigError", "InputError", "ModelConfig", "PluginError", "TensorModel", "TensorframeCalculator", "__version__",
    "build_model", "compile_model", "get_registry", "list_plugins", "load_model", "read_structures", "save_checkpoint",
]
