"""The import layering of tensorframe (issue 12): no import cycle, the registry only at the
edges, and the lower layers free of the upper ones.

    graph, ops                    import no heads, io, train or registry
    heads, io                     are given the field table; they never ask the global registry
    registry -> builtin_plugin    builds the built-ins (heads, io readers, backbones.reference)
    model, checkpoint, io.read    default to the global registry when none is given
    commands, cli, __init__       the edges: they call get_registry()
    testing                       the test kit: imported by tests and plugin test suites only

Each check is run on a small synthetic package too, to show that it catches what it forbids.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import tensorframe

PACKAGE_DIR = Path(tensorframe.__file__).resolve().parent
PLUGIN_PACKAGES = ("tensorframe_schnet", "tensorframe_cgcnn", "tensorframe_etgnn")

GET_REGISTRY_ALLOWED_MODULES = {"tensorframe", "tensorframe.cli", "tensorframe.registry"}
"""Modules that may call ``get_registry()`` anywhere (with ``tensorframe.commands.*``): the edges."""
GET_REGISTRY_ALLOWED_PREFIXES = ("tensorframe.commands.",)
GET_REGISTRY_ALLOWED_FUNCTIONS = {
    ("tensorframe.model", "build_model"),  # registry=None: the installed plugins
    ("tensorframe.checkpoint", "load_model"),  # registry=None: the installed plugins
    ("tensorframe.checkpoint", "with_paper_basis"),  # registry=None: the installed plugins
    ("tensorframe.io.read", "read_structures"),  # registry=None: the installed plugins
    ("tensorframe.io.read", "guess_format"),  # registry=None: the installed plugins
    ("tensorframe.testing.completeness", "assert_registered_heads_complete"),  # test kit: registry=None
    ("tensorframe.testing.equivariance", "field_specs"),  # test kit: a plain function's fields
}
"""(module, function) pairs whose documented default is the global registry."""


# ---------------------------------------------------------------- static import graph


def module_name(root: Path, path: Path) -> str:
    """``root/heads/tensor.py`` -> ``<root.name>.heads.tensor``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name."""
    return {module_name(root, path): path for path in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top level, in ``if``/``try`` blocks, but not
    under ``if TYPE_CHECKING:`` nor inside functions or classes."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from module_level_imports(node.body)
            yield from module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from module_level_imports(block)


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement asks for (``from a import b`` gives ``a.b``, which is
    the module ``a.b`` when there is one and a name in ``a`` otherwise); relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names]


def import_edges(modules: dict[str, Path], module: str, name: str) -> set[str]:
    """The package's modules that importing ``name`` from ``module`` runs: the named module
    (the longest prefix of ``name`` that is one) and the packages on the way to it, except
    the packages holding ``module`` (already being imported) and the root package (the
    import's entry point, unless it is what is imported)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    if not parts:
        return set()
    edges = {".".join(parts)} if len(parts) == 1 else set()
    for depth in range(2, len(parts) + 1):
        target = ".".join(parts[:depth])
        if not module.startswith(target + "."):
            edges.add(target)
    edges.discard(module)
    return edges


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules its module-level imports run (see :func:`import_edges`)."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path)).body):
            for name in imported_names(node, module, path.name == "__init__.py"):
                edges |= import_edges(modules, module, name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, branches = [start], [iter(sorted(graph[start]))]
        while branches:
            target = next(branches[-1], None)
            if target is None:
                done.add(path.pop())
                branches.pop()
            elif target in path:
                return path[path.index(target):] + [target]
            elif target not in done:
                path.append(target)
                branches.append(iter(sorted(graph[target])))
    return None


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package ``root`` with ``files`` (relative path -> source); returns ``root``."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def test_tensorframe_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE_DIR))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_direct_relative_and_package_cycles_but_not_type_checking_or_local_imports(tmp_path):
    direct = write_package(tmp_path / "direct", {
        "__init__.py": "",
        "a.py": "from direct.b import thing\n",
        "b.py": "from direct import c\n",
        "c.py": "from . import a\n",
    })
    assert find_cycle(import_graph(direct)) == ["direct.a", "direct.b", "direct.c", "direct.a"]
    # registry -> plugin -> readers (a package whose __init__ re-exports a reader of the registry)
    through_package = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "registry.py": "from pkg import plugin\n",
        "plugin.py": "from pkg.io.reader import read\n",
        "io/__init__.py": "from pkg.io.read import read_structures\n",
        "io/reader.py": "def read(): ...\n",
        "io/read.py": "from pkg.registry import get_registry\n",
    })
    assert find_cycle(import_graph(through_package)) == [
        "pkg.io", "pkg.io.read", "pkg.registry", "pkg.plugin", "pkg.io"]
    dodged = write_package(tmp_path / "dodged", {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dodged.b import B\n",
        "b.py": "def f():\n    from dodged import a\n",
        "c.py": "import dodged.a\nfrom .sub import d\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..a import x\n",
    })
    assert find_cycle(import_graph(dodged)) is None
    assert import_graph(dodged)["dodged.c"] == {"dodged.a", "dodged.sub", "dodged.sub.d"}
    assert import_graph(dodged)["dodged.sub.d"] == {"dodged.a"}


# ---------------------------------------------------------------- what is imported at run time


def modules_after(code: str, stub_root: bool = False) -> list[str]:
    """``sys.modules`` after running ``code`` in a fresh interpreter. With ``stub_root`` the
    package ``tensorframe`` is an empty stand-in (its ``__init__`` imports everything), so
    that ``import tensorframe.graph`` runs only what ``tensorframe.graph`` imports."""
    stub = (
        "import sys, types\n"
        f"root = types.ModuleType('tensorframe'); root.__path__ = [{str(PACKAGE_DIR)!r}]\n"
        "sys.modules['tensorframe'] = root\n"
    ) if stub_root else ""
    script = f"{stub}{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def forbidden(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules that are one of ``prefixes`` or inside one."""
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


TEST_KIT = ("tensorframe.testing", "hypothesis", "pytest")
UPPER_LAYERS = ("tensorframe.heads", "tensorframe.io", "tensorframe.train", "tensorframe.registry")


def test_the_registry_does_not_import_the_test_kit():
    loaded = modules_after("import tensorframe\nregistry = tensorframe.get_registry()\nassert 'reference' in registry.names('backbone')")
    assert "tensorframe.backbones.reference" in loaded
    assert forbidden(loaded, TEST_KIT) == []
    # the check sees a test-kit import
    assert forbidden(modules_after("import tensorframe.testing"), TEST_KIT) != []


def test_graph_and_ops_import_no_heads_io_train_or_registry():
    """Every module of tensorframe.graph and tensorframe.ops, imported without tensorframe/__init__."""
    lower = sorted(m for m in package_modules(PACKAGE_DIR) if m.startswith(("tensorframe.graph", "tensorframe.ops")))
    loaded = modules_after("\n".join(f"import {m}" for m in lower), stub_root=True)
    assert {"tensorframe.graph.collate", "tensorframe.ops.basis"} <= set(loaded)
    assert forbidden(loaded, UPPER_LAYERS) == []
    assert "tensorframe.model" not in loaded  # the stand-in root kept tensorframe/__init__ from running
    # the check sees an upper layer
    assert "tensorframe.heads" in forbidden(modules_after("import tensorframe.heads", stub_root=True), UPPER_LAYERS)


@pytest.mark.parametrize("first", ["tensorframe.registry", "tensorframe.io.read"])
def test_the_registry_and_the_readers_import_in_either_order(first):
    """With tensorframe/__init__ out of the way, importing the registry (which imports the
    built-in readers) or the reading function (which defaults to the registry) first works: no
    loop hides behind the order tensorframe/__init__ happens to import them in."""
    loaded = modules_after(f"import {first}", stub_root=True)
    assert {"tensorframe.registry", "tensorframe.io.ase_reader"} <= set(loaded)


# ---------------------------------------------------------------- the registry is given, not looked up


class QuadrupolePlugin:
    """A field the installed plugins do not have."""

    @tensorframe.hookimpl
    def tensorframe_register_fields(self):
        return [tensorframe.FieldSpec("quadrupole", "structure", "ij=ji", 1, "e*A^2", "sum")]


def test_heads_and_readers_use_the_fields_of_the_registry_they_are_given(tmp_path):
    from tensorframe.io.read import read_structures
    from tensorframe.registry import build_registry

    registry = build_registry(extra_plugins=[("quadrupole", QuadrupolePlugin())], load_entry_points=False)
    assert "quadrupole" not in tensorframe.get_registry().fields
    config = {"backbone": {"name": "reference", "hidden": 8, "num_radial": 4},
              "heads": [{"name": "tensor", "field": "quadrupole", "hidden": 8}], "cutoff": 3.0}
    field = tensorframe.build_model(config, registry=registry).fields["quadrupole"]
    assert (field.symmetry, field.parity, field.units, field.reduce) == ("ij=ji", 1, "e*A^2", "sum")
    with pytest.raises(tensorframe.ConfigError, match=r"heads\[0\]: field 'quadrupole' is not a registered field"):
        tensorframe.build_model(config)  # the installed plugins do not know it
    path = tmp_path / "q.xyz"
    path.write_text('2\nPBC="F F F" quadrupole="1 2 3 2 4 5 3 5 6" Properties=species:S:1:pos:R:3\n'
                    "H 0 0 0\nH 0 0 0.74\n")
    (sample,) = read_structures(path, registry=registry)
    assert sample.targets["quadrupole"].tolist() == [[1, 2, 3], [2, 4, 5], [3, 5, 6]]
    assert read_structures(path)[0].targets == {}  # unknown to the installed plugins: not a label


# ---------------------------------------------------------------- get_registry() only at the edges


def get_registry_calls(root: Path) -> list[tuple[str, str, int]]:
    """(module, enclosing top-level function or "<module>", line) of each ``get_registry(...)`` call."""
    calls = []
    for module, path in package_modules(root).items():
        tree = ast.parse(path.read_text(), str(path))
        for top in tree.body:
            owner = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else "<module>"
            for node in ast.walk(top):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                    if name == "get_registry":
                        calls.append((module, owner, node.lineno))
    return calls


def misplaced_get_registry_calls(root: Path) -> list[str]:
    """``module:line (function)`` for each call outside the allowed places."""
    return [
        f"{module}:{line} ({owner})"
        for module, owner, line in get_registry_calls(root)
        if module not in GET_REGISTRY_ALLOWED_MODULES
        and not module.startswith(GET_REGISTRY_ALLOWED_PREFIXES)
        and (module, owner) not in GET_REGISTRY_ALLOWED_FUNCTIONS
    ]


def test_get_registry_is_called_only_at_the_edges():
    assert misplaced_get_registry_calls(PACKAGE_DIR) == []
    assert ("tensorframe.model", "build_model") in {(m, o) for m, o, _ in get_registry_calls(PACKAGE_DIR)}


def test_the_edge_check_sees_a_head_asking_the_global_registry(tmp_path):
    fake = write_package(tmp_path / "tensorframe", {
        "__init__.py": "from tensorframe.registry import get_registry\n",
        "registry.py": "def get_registry(): ...\nget_registry()\n",
        "commands/predict.py": "def run():\n    get_registry()\n",
        "model.py": "def build_model(registry=None):\n    return registry or get_registry()\n",
        "heads/tensor.py": "import tensorframe.registry as r\ndef build_tensor_head(options, dims):\n    return r.get_registry()\n",
        "model_extra.py": "def helper():\n    get_registry()\n",
    })
    assert misplaced_get_registry_calls(fake) == ["tensorframe.heads.tensor:3 (build_tensor_head)",
                                                  "tensorframe.model_extra:2 (helper)"]


# ---------------------------------------------------------------- the core never imports a plugin


def plugin_imports(root: Path) -> list[str]:
    """``module:line name`` of every import of a plugin package anywhere in ``root`` (module
    level or not)."""
    found = []
    for module, path in package_modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in imported_names(node, module, path.name == "__init__.py"):
                    if name.split(".")[0] in PLUGIN_PACKAGES:
                        found.append(f"{module}:{node.lineno} {name}")
    return found


def test_the_core_never_imports_a_plugin(tmp_path):
    assert plugin_imports(PACKAGE_DIR) == []
    fake = write_package(tmp_path / "core", {"__init__.py": "", "demo.py": "def f():\n    import tensorframe_etgnn.model\n",
                                             "x.py": "from tensorframe_schnet import build\n"})
    assert plugin_imports(fake) == ["core.demo:2 tensorframe_etgnn.model", "core.x:1 tensorframe_schnet.build"]


def test_only_the_test_kit_imports_the_test_kit():
    """Outside ``tensorframe.testing`` nothing imports it, even inside a function."""
    outside = [
        f"{module}:{node.lineno}"
        for module, path in package_modules(PACKAGE_DIR).items()
        if not (module == "tensorframe.testing" or module.startswith("tensorframe.testing."))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(n == "tensorframe.testing" or n.startswith("tensorframe.testing.")
                for n in imported_names(node, module, path.name == "__init__.py"))
    ]
    assert outside == []


@pytest.mark.parametrize("name", ["ReferenceBackbone", "ReferenceBackboneConfig", "build_reference_backbone"])
def test_the_old_reference_backbone_path_still_works(name):
    from tensorframe.backbones import reference
    from tensorframe.testing import reference_backbone

    assert getattr(reference_backbone, name) is getattr(reference, name)
