"""The plugin system: built-ins and third-party distributions through the same hooks.

Third-party plugins are real (throwaway) distributions: a module plus a ``*.dist-info``
folder with METADATA and entry_points.txt in ``tmp_path``, put on ``sys.path``, so they are
found by ``importlib.metadata`` exactly as an installed package would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.build
import numpy as np
import pytest
import torch

import tensorframe
from tensorframe import ConfigError, PluginError, build_model, hookspecs, registry
from tensorframe.io.read import read_structures
from tensorframe.registry import KINDS, PluginProblem, build_registry, get_registry, list_plugins, reset_registry

BUILTINS = {
    "backbone": {"reference"},
    "head": {"force", "born", "dielectric", "piezo", "dipole", "polarizability", "hyperpolarizability", "energy",
             "scalar", "tensor"},
    "field": {"energy", "forces", "dipole", "born_charges", "dielectric", "polarizability", "piezo",
              "hyperpolarizability", "piezo_strain", "elastic", "stress", "virial", "atomic_dipole",
              "atomic_polarizability", "nmr_shielding"},
    "reader": {"ase", "asedb", "deepmd", "id_prop", "matten-nmr", "vasp"},
}
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("tensorframe_"))

# A complete third-party plugin, one item per hook: the example of docs/plugins.md.
TOY_PLUGIN = (Path(__file__).parents[1] / "docs" / "examples" / "toy_plugin.py").read_text()


def make_distribution(root: Path, distribution: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution: modules plus ``<name>-0.1.dist-info``."""
    info = root / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tensorframe]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for throwaway distributions; the global registry is rebuilt
    from it and restored afterwards, and the plugin modules are forgotten."""
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_registry()
    yield tmp_path
    reset_registry()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def run_cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "tensorframe", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def rows_of(plugin: str, rows) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for row in rows:
        if row.plugin == plugin:
            found[row.kind].add(row.name)
    return found


# ---- built-ins ----

def test_builtins_are_registered_through_the_hooks_as_plugin_tensorframe():
    rows = list_plugins()
    assert rows_of("tensorframe", rows) == BUILTINS
    for row in rows:
        if row.plugin == "tensorframe":
            assert row.distribution == "tensorframe"
    manager = get_registry().manager
    assert manager.get_plugin("tensorframe") is tensorframe.builtin_plugin
    assert {impl.plugin_name for impl in manager.hook.tensorframe_register_heads.get_hookimpls()} >= {"tensorframe"}


def test_every_hookspec_is_collected_by_the_registry():
    """A new hook in hookspecs.py must be wired into the registry (and into these tests)."""
    assert sorted(registry._HOOKS.values()) == HOOKS
    assert set(registry._HOOKS) == set(KINDS)


def test_builtin_field_specs_carry_their_physics():
    fields = get_registry().items["field"]
    assert (fields["born_charges"].symmetry, fields["born_charges"].parity, fields["born_charges"].level) == ("ij", 1, "atom")
    assert (fields["dielectric"].symmetry, fields["dielectric"].reduce) == ("ij=ji", "mean")
    assert (fields["piezo"].symmetry, fields["piezo"].parity, fields["piezo"].reduce) == ("ijk=ikj", -1, "mean")
    assert (fields["polarizability"].reduce, fields["hyperpolarizability"].parity) == ("sum", -1)


# ---- a working third-party plugin ----

def test_third_party_plugin_implements_every_hook_and_is_listed_with_its_distribution(site):
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    fresh = build_registry()
    assert fresh.problems == []
    toy_module = fresh.manager.get_plugin("toy")
    assert sorted(n for n in dir(toy_module) if n.startswith("tensorframe_")) == HOOKS
    expected = {"backbone": {"toy"}, "head": {"toy_moment"}, "field": {"toy_moment"}, "reader": {"toy"}}
    assert rows_of("toy", fresh.rows()) == expected
    assert {r.distribution for r in fresh.rows() if r.plugin == "toy"} == {"tensorframe-toy"}
    assert rows_of("tensorframe", fresh.rows()) == BUILTINS  # the built-ins are untouched
    # The process-wide registry sees it after a reset.
    assert rows_of("toy", list_plugins()) == expected


def test_build_model_uses_the_plugin_backbone_and_head_and_the_result_is_equivariant(site):
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    torch.manual_seed(0)
    model = build_model({
        "cutoff": 4.0,
        "backbone": {"name": "toy", "width": 6},
        "heads": [{"name": "toy_moment"}, {"name": "born", "hidden": 8}],
    }).double()
    assert type(model.backbone).__name__ == "ToyBackbone"
    assert type(model.backbone).__module__ == "toy_plugin"
    assert model.backbone.embedding.embedding_dim == 6
    assert model.fields["toy_moment"].units == "e*A"
    assert model.lifting is not None  # the toy backbone has no triplets; born needs them
    atoms = ase.build.molecule("CH3OH")
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    turned = atoms.copy()
    turned.positions = atoms.positions @ rotation.T
    before, after = model.predict([atoms, turned])
    assert before["toy_moment"].shape == (3,) and np.linalg.norm(before["toy_moment"]) > 1e-6
    np.testing.assert_allclose(after["toy_moment"], rotation @ before["toy_moment"], atol=1e-10)
    np.testing.assert_allclose(after["born_charges"], rotation @ before["born_charges"] @ rotation.T, atol=1e-10)


def test_plugin_reader_is_chosen_by_extension(site):
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    path = site / "water.toy"
    path.write_text("8 0 0 0.12\n1 0 0.76 -0.48\n1 0 -0.76 -0.48\n")
    (sample,) = read_structures(path)
    assert sample.numbers.tolist() == [8, 1, 1]
    np.testing.assert_allclose(sample.positions[1], [0, 0.76, -0.48])
    (by_name,) = read_structures(path, format="toy")
    np.testing.assert_array_equal(by_name.positions, sample.positions)


def test_plugin_options_are_validated_against_the_plugins_config(site):
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    with pytest.raises(ConfigError, match=r"^backbone\.widht: unknown option; did you mean 'width'"):
        build_model({"backbone": {"name": "toy", "widht": 4}, "heads": [{"name": "toy_moment"}]})


def test_cli_lists_a_third_party_plugin(site):
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    result = run_cli("plugins", pythonpath=site)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["backbone", "toy", "toy", "tensorframe-toy"] == lines_starting(lines, "backbone", "toy")[:4]
    assert ["head", "toy_moment", "toy", "tensorframe-toy"] == lines_starting(lines, "head", "toy_moment")[:4]
    assert ["reader", "toy", "toy", "tensorframe-toy"] == lines_starting(lines, "reader", "toy")[:4]
    assert ["backbone", "reference", "tensorframe", "tensorframe"] == lines_starting(lines, "backbone", "reference")[:4]


def lines_starting(lines: list[list[str]], kind: str, name: str) -> list[str]:
    matches = [line for line in lines if line[:2] == [kind, name]]
    assert len(matches) == 1, f"{kind} {name}: {matches}"
    return matches[0]


# ---- broken plugins never hide the others ----

BROKEN_IMPORT = '''
import tensorframe
raise ImportError("this plugin needs libfrobnicate")
'''


def test_plugin_that_fails_to_import_is_reported_and_the_others_still_work(site):
    make_distribution(site, "tensorframe-broken", {"broken": "broken_plugin"}, {"broken_plugin": BROKEN_IMPORT})
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    fresh = build_registry()
    problems = [p for p in fresh.problems if p.plugin == "broken"]
    assert len(problems) == 1
    (problem,) = problems
    assert isinstance(problem, PluginProblem)
    assert problem.distribution == "tensorframe-broken"
    assert "broken_plugin" in problem.message and "libfrobnicate" in problem.message
    assert str(problem).startswith("plugin 'broken' (distribution 'tensorframe-broken'): ")
    assert rows_of("tensorframe", fresh.rows()) == BUILTINS
    assert "toy" in fresh.names("backbone")
    # Asking for something that is missing mentions the broken plugin as a likely cause.
    with pytest.raises(PluginError, match=r"(?s)unknown backbone 'frobnicator'.*failed to load.*tensorframe-broken"):
        fresh.get("backbone", "frobnicator")
    model = build_model({"backbone": {"name": "reference"}, "heads": [{"name": "force"}]}, registry=fresh)
    assert model.predict([ase.build.molecule("H2O")])[0]["forces"].shape == (3, 3)


def test_cli_prints_the_working_plugins_and_one_error_line_for_a_broken_one(site):
    make_distribution(site, "tensorframe-broken", {"broken": "broken_plugin"}, {"broken_plugin": BROKEN_IMPORT})
    result = run_cli("plugins", pythonpath=site)
    assert result.returncode == 1
    lines = [line.split() for line in result.stdout.splitlines()]
    for kind, names in BUILTINS.items():
        for name in names:
            assert lines_starting(lines, kind, name)[2:4] == ["tensorframe", "tensorframe"]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: plugin 'broken' (distribution 'tensorframe-broken'): failed to import")
    assert "libfrobnicate" in errors[0]


def twin_plugin(description: str) -> str:
    return f'''
import tensorframe
from tensorframe.specs import BackboneSpec
from tensorframe.testing.reference_backbone import ReferenceBackboneConfig, build_reference_backbone


@tensorframe.hookimpl
def tensorframe_register_backbones():
    return [BackboneSpec("twin", ReferenceBackboneConfig, build_reference_backbone, "{description}")]
'''


def test_the_same_name_from_two_plugins_is_an_error_naming_both(site):
    make_distribution(site, "tensorframe-twin-a", {"twin_a": "twin_a"}, {"twin_a": twin_plugin("first")})
    make_distribution(site, "tensorframe-twin-b", {"twin_b": "twin_b"}, {"twin_b": twin_plugin("second")})
    fresh = build_registry()
    problems = [p for p in fresh.problems if "twin" in p.message]
    assert len(problems) == 1
    text = str(problems[0])
    for word in ("twin_a", "twin_b", "tensorframe-twin-a", "tensorframe-twin-b", "backbone 'twin'"):
        assert word in text
    assert "twin" not in fresh.names("backbone")
    with pytest.raises(PluginError) as info:
        fresh.get("backbone", "twin")
    for word in ("more than one plugin", "'twin_a' (tensorframe-twin-a)", "'twin_b' (tensorframe-twin-b)"):
        assert word in str(info.value)
    with pytest.raises(ConfigError, match=r"^backbone\.name: backbone 'twin' is registered by more than one plugin"):
        build_model({"backbone": {"name": "twin"}, "heads": [{"name": "force"}]}, registry=fresh)
    # Both owners are still listed, so a user can see what to uninstall.
    owners = sorted((r.plugin, r.distribution) for r in fresh.rows() if r.name == "twin")
    assert owners == [("twin_a", "tensorframe-twin-a"), ("twin_b", "tensorframe-twin-b")]
    assert "reference" in fresh.names("backbone")


def test_a_plugin_reusing_a_builtin_name_is_reported(site):
    source = '''
    import tensorframe
    from tensorframe.heads.named import ForceHeadConfig, build_force_head
    from tensorframe.specs import HeadSpec


    @tensorframe.hookimpl
    def tensorframe_register_heads():
        return [HeadSpec("force", ForceHeadConfig, build_force_head, "a second force head")]
    '''
    make_distribution(site, "tensorframe-copycat", {"copycat": "copycat"}, {"copycat": source})
    fresh = build_registry()
    assert any(p.plugin == "copycat" and "'force'" in p.message and "'tensorframe'" in p.message for p in fresh.problems)
    with pytest.raises(PluginError, match="copycat"):
        fresh.get("head", "force")
    assert "born" in fresh.names("head")


MISSPELLED = '''
import tensorframe
from tensorframe.specs import BackboneSpec
from tensorframe.testing.reference_backbone import ReferenceBackboneConfig, build_reference_backbone


@tensorframe.hookimpl
def tensorframe_register_backbone():  # missing the final "s"
    return [BackboneSpec("typo", ReferenceBackboneConfig, build_reference_backbone)]
'''


def test_misspelled_hook_is_caught_by_check_pending_and_reported(site):
    make_distribution(site, "tensorframe-typo", {"typo": "typo_plugin"}, {"typo_plugin": MISSPELLED})
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    fresh = build_registry()
    (problem,) = [p for p in fresh.problems if p.plugin == "typo"]
    assert problem.distribution == "tensorframe-typo"
    assert "tensorframe_register_backbone" in problem.message
    assert "typo" not in fresh.names("backbone")
    assert not fresh.manager.is_registered(sys.modules["typo_plugin"])
    assert {"toy", "reference"} <= set(fresh.names("backbone"))
    fresh.manager.check_pending()  # what is left registered is valid


class RaisingPlugin:
    """A plugin object (not a module) whose head hook raises; its backbone hook works."""

    __distribution__ = "tensorframe-raising"

    @tensorframe.hookimpl
    def tensorframe_register_heads(self):
        raise RuntimeError("head table is corrupt")

    @tensorframe.hookimpl
    def tensorframe_register_backbones(self):
        from tensorframe.specs import BackboneSpec
        from tensorframe.testing.reference_backbone import ReferenceBackboneConfig, build_reference_backbone

        return [BackboneSpec("raising_ok", ReferenceBackboneConfig, build_reference_backbone)]


def test_hook_that_raises_is_reported_and_the_rest_is_kept():
    fresh = build_registry(extra_plugins=[("raising", RaisingPlugin())], load_entry_points=False)
    (problem,) = fresh.problems
    assert (problem.plugin, problem.distribution) == ("raising", "tensorframe-raising")
    assert "tensorframe_register_heads raised RuntimeError: head table is corrupt" in problem.message
    assert set(fresh.names("head")) == BUILTINS["head"]
    assert "raising_ok" in fresh.names("backbone")


def test_extra_plugin_with_a_field_and_reader_registers_through_the_same_hooks():
    class Extra:
        @tensorframe.hookimpl
        def tensorframe_register_fields(self):
            return [tensorframe.FieldSpec("quadrupole", "structure", "ij=ji", 1, "e*A^2", "sum")]

        @tensorframe.hookimpl
        def tensorframe_register_readers(self):
            return [tensorframe.ReaderSpec("none", lambda path: [], (".none",))]

    fresh = build_registry(extra_plugins=[("extra", Extra())], load_entry_points=False)
    assert fresh.problems == []
    assert fresh.get("field", "quadrupole").shape == (3, 3)
    assert [(r.plugin, r.distribution) for r in fresh.rows() if r.name in ("quadrupole", "none")] == [
        ("extra", "local"), ("extra", "local")]


# ---- unknown names ----

def test_unknown_backbone_or_head_name_is_a_config_error_with_the_choices():
    with pytest.raises(ConfigError) as info:
        build_model({"backbone": {"name": "etgnnn"}, "heads": [{"name": "force"}]})
    assert str(info.value).startswith("backbone.name: unknown backbone 'etgnnn'; valid choices: ")
    assert "reference" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_model({"backbone": {"name": "reference"}, "heads": [{"name": "dielectrik"}]})
    message = str(info.value)
    assert message.startswith("heads[0].name: unknown head 'dielectrik'; valid choices: ")
    assert all(name in message for name in BUILTINS["head"])


def test_unknown_reader_lists_the_readers():
    with pytest.raises(PluginError, match=r"unknown reader 'vasprun'; valid choices: .*ase"):
        read_structures("x.xml", format="vasprun")


# ---- the plugin guide: every python block is tested code ----

GUIDE = Path(__file__).parents[1] / "docs" / "plugins.md"
EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"
TESTED_EXAMPLES = {
    "toy_plugin.py": "installed and used here; its suite runs in tests/test_plugin_guide.py",
    "toy_plugin_tests.py": "run on the installed toy by tests/test_plugin_guide.py",
    "quadrupole_head_plugin.py": "registered, used and line-counted by tests/test_plugin_guide.py",
    "quadrupole_head_tests.py": "run with the plugin by tests/test_plugin_guide.py",
}
"""The example files and the test that uses each: a guide block found verbatim in one is tested."""


def python_blocks(markdown: str) -> list[str]:
    """The contents of the markdown's ```python blocks, in order."""
    return [block.split("```", 1)[0] for block in markdown.split("```python\n")[1:]]


def example_holding(block: str, examples: dict[str, str]) -> str | None:
    """The name of the example file whose code holds ``block`` verbatim, or None."""
    return next((name for name, code in examples.items() if block.strip() in code), None)


GUIDE_BLOCKS = python_blocks(GUIDE.read_text())


def test_every_example_file_is_tested():
    """A new example file must say which test uses it (else its blocks would pass unchecked)."""
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(TESTED_EXAMPLES)


@pytest.mark.parametrize("index", range(len(GUIDE_BLOCKS)), ids=lambda i: f"{i}-{GUIDE_BLOCKS[i].strip().splitlines()[0][:40]}")
def test_every_python_block_of_the_guide_is_tested_code_or_runs_as_printed(site, index):
    """docs/plugins.md stays true: each python block is either the code of a tested example
    file, verbatim, or complete (imports included) and runs on its own in a fresh namespace,
    with the toy plugin installed as ``tensorframe-toy``."""
    block = GUIDE_BLOCKS[index]
    examples = {path.name: path.read_text() for path in EXAMPLES.glob("*.py")}
    if example_holding(block, examples) is not None:
        return
    make_distribution(site, "tensorframe-toy", {"toy": "toy_plugin"}, {"toy_plugin": TOY_PLUGIN})
    exec(compile(block, f"docs/plugins.md, python block {index}", "exec"), {"__name__": "guide_block"})


def test_the_guide_shows_the_example_plugins():
    """The toy's imports, backbone, head, reader and hooks and the whole head plugin are in the guide."""
    examples = {path.name: path.read_text() for path in EXAMPLES.glob("*.py")}
    shown = [example_holding(block, examples) for block in GUIDE_BLOCKS]
    assert shown.count("toy_plugin.py") >= 5
    assert "quadrupole_head_plugin.py" in shown and "toy_plugin_tests.py" in shown and "quadrupole_head_tests.py" in shown
    blocks = "".join(GUIDE_BLOCKS)
    assert examples["quadrupole_head_plugin.py"].strip() in blocks  # the head plugin whole, not excerpts
    for part in ("from tensorframe import (", "class ToyBackbone(Backbone):", "def build_toy_moment_head(",
                 "def read_toy(", "def tensorframe_register_readers():"):
        assert part in blocks, part


def test_the_block_check_sees_an_edited_or_incomplete_block(site):
    """A block that differs from its example by one character, or that leaves out its imports,
    fails."""
    examples = {"toy_plugin.py": TOY_PLUGIN}
    (backbone,) = [block for block in GUIDE_BLOCKS if "class ToyBackbone(Backbone):" in block]
    assert example_holding(backbone, examples) == "toy_plugin.py"
    assert example_holding(backbone.replace("width", "widht", 1), examples) is None
    without_imports = "model = build_model({'backbone': {'name': 'reference'}, 'heads': [{'name': 'force'}]})"
    with pytest.raises(NameError, match="build_model"):
        exec(compile(without_imports, "block", "exec"), {})
