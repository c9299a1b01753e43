"""The public face of tensorframe: the top-level API plugins build on, one version source, and
the example plugins of docs/plugins.md under the shipped contracts.

    docs/examples/toy_plugin.py              backbone + head + field + reader, installed as a
                                             throwaway distribution ``tensorframe-toy``; its suite
                                             docs/examples/toy_plugin_tests.py runs here
    docs/examples/quadrupole_head_plugin.py  a head plugin under 40 lines, given as an extra
                                             plugin; its suite docs/examples/quadrupole_head_tests.py
                                             runs here

tests/test_plugins.py checks that every python block of docs/plugins.md is one of these files'
code or runs on its own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import ase.build
import numpy as np
import pytest

import tensorframe
from tensorframe.registry import build_registry, reset_registry

sys.path.insert(0, str(Path(__file__).parent))
from test_plugins import make_distribution  # noqa: E402

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "docs" / "examples"


def load_example(name: str) -> ModuleType:
    """``docs/examples/<name>.py`` as a module called ``guide_<name>`` (not put on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"guide_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the public API

PLUGIN_API = {
    "Backbone": "tensorframe.backbones.base",
    "BackboneSpec": "tensorframe.specs",
    "BesselBasis": "tensorframe.ops.radial",
    "CartesianTensorHead": "tensorframe.heads.tensor",
    "FeatureDims": "tensorframe.specs",
    "FieldSpec": "tensorframe.fields",
    "FieldTable": "tensorframe.specs",
    "GaussianBasis": "tensorframe.ops.radial",
    "Graph": "tensorframe.types",
    "GraphSettings": "tensorframe.specs",
    "Head": "tensorframe.heads.base",
    "HeadSpec": "tensorframe.specs",
    "InvariantFeatures": "tensorframe.types",
    "PluginConfig": "tensorframe.specs",
    "ReaderSpec": "tensorframe.specs",
    "Registry": "tensorframe.registry",
    "Sample": "tensorframe.types",
    "ScalarHead": "tensorframe.heads.scalar",
    "WordSet": "tensorframe.ops.basis",
    "build_registry": "tensorframe.registry",
    "complete_words": "tensorframe.ops.basis",
    "cosine_cutoff": "tensorframe.ops.radial",
    "hookimpl": "tensorframe.hookspecs",
    "legendre_basis": "tensorframe.ops.radial",
    "read_structures": "tensorframe.io.read",
    "scatter_mean": "tensorframe.ops.scatter",
    "scatter_sum": "tensorframe.ops.scatter",
}
"""What a plugin author imports from ``tensorframe``, and where it is defined."""


@pytest.mark.parametrize("name", sorted(PLUGIN_API))
def test_what_plugins_need_is_exported_from_the_top_level(name):
    assert name in tensorframe.__all__
    assert getattr(tensorframe, name) is getattr(importlib.import_module(PLUGIN_API[name]), name)


def test_everything_in_all_exists():
    assert [name for name in tensorframe.__all__ if not hasattr(tensorframe, name)] == []


HEAVY = ("matplotlib", "hypothesis", "pytest", "tensorframe.testing")


def heavy_modules_after(code: str) -> list[str]:
    """The modules of :data:`HEAVY` (or inside one) loaded by ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_import_tensorframe_stays_light():
    """The public API imports no plotting and no test kit; the check sees one that does."""
    assert heavy_modules_after("import tensorframe\nfrom tensorframe import *") == []
    assert "tensorframe.testing" in heavy_modules_after("import tensorframe.testing")


# ---------------------------------------------------------------- one version source


def test_the_version_is_written_once():
    """pyproject.toml takes the version from tensorframe/_version.py (what a fresh install
    builds its metadata from), and the installed metadata agrees with ``__version__``."""
    from setuptools.config.pyprojecttoml import load_file, read_configuration

    from tensorframe import _version

    raw = load_file(ROOT / "pyproject.toml")["project"]
    assert "version" not in raw and "version" in raw["dynamic"]
    assert read_configuration(ROOT / "pyproject.toml")["project"]["version"] == _version.__version__
    assert tensorframe.__version__ == _version.__version__ == importlib.metadata.version("tensorframe")


# ---------------------------------------------------------------- a head plugin from the guide alone

QUADRUPOLE_FILE = EXAMPLES / "quadrupole_head_plugin.py"
QUADRUPOLE_PLUGIN = load_example("quadrupole_head_plugin")


def test_the_head_plugin_of_the_guide_is_under_40_lines():
    lines = QUADRUPOLE_FILE.read_text().splitlines()
    assert len(lines) < 40, len(lines)


def test_the_head_plugin_registers_its_field_and_head_and_predicts_a_symmetric_tensor():
    registry = build_registry(extra_plugins=[("quadrupole", QUADRUPOLE_PLUGIN)], load_entry_points=False)
    assert registry.problems == []
    assert registry.fields["quadrupole"] is QUADRUPOLE_PLUGIN.QUADRUPOLE
    config = {"cutoff": 3.0, "backbone": {"name": "reference", "hidden": 8, "num_radial": 4},
              "heads": [{"name": "quadrupole", "hidden": 8}]}
    model = tensorframe.build_model(config, registry=registry).double()
    assert isinstance(model.heads["quadrupole"], tensorframe.CartesianTensorHead)
    (prediction,) = model.predict([ase.build.molecule("CH3OH")])
    q = prediction["quadrupole"]
    assert q.shape == (3, 3) and np.abs(q).max() > 1e-6
    np.testing.assert_allclose(q, q.T, atol=1e-12)
    with pytest.raises(tensorframe.ConfigError, match=r"unknown head 'quadrupole'"):
        tensorframe.build_model(config, registry=build_registry(load_entry_points=False))


_quadrupole_suite = load_example("quadrupole_head_tests")


class TestQuadrupoleHeadSuite(_quadrupole_suite.TestQuadrupoleHead):
    """docs/examples/quadrupole_head_tests.py with the plugin given, not installed."""

    extra_plugins = [("quadrupole", QUADRUPOLE_PLUGIN)]


# ---------------------------------------------------------------- the toy plugin, installed


@pytest.fixture(scope="class")
def toy_installed(tmp_path_factory):
    """docs/examples/toy_plugin.py installed as ``tensorframe-toy`` for one test class; the
    global registry and the module are forgotten afterwards."""
    site = tmp_path_factory.mktemp("toy_site")
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"},
                      {"toy_plugin": (EXAMPLES / "toy_plugin.py").read_text()})
    sys.path.insert(0, str(site))
    reset_registry()
    yield site
    sys.path.remove(str(site))
    reset_registry()
    sys.modules.pop("toy_plugin", None)


_toy_suite = load_example("toy_plugin_tests")


@pytest.mark.usefixtures("toy_installed")
class TestToyBackboneSuite(_toy_suite.TestToyBackbone):
    """docs/examples/toy_plugin_tests.py: the backbone contract on the installed toy."""


@pytest.mark.usefixtures("toy_installed")
class TestToyMomentHeadSuite(_toy_suite.TestToyMomentHead):
    """docs/examples/toy_plugin_tests.py: the head contract on the installed toy's head."""
