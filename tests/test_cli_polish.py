"""The command line under careless use: broken plugins, reST in help, ``--debug`` in either
position, device strings, ``--key-map`` before the positionals, ``--graph-memory``, and one
error line for every bad command line. In-process through ``tensorframe.cli.main``."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tensorframe
from tensorframe import registry
from tensorframe.cli import build_parser, main, one_line
from tensorframe.commands import COMMANDS
from tensorframe.commands.options import parse_key_map, plain_text
from tensorframe.registry import build_registry, reset_registry
from tensorframe.specs import BackboneSpec, HeadSpec, ReaderSpec
from tensorframe.testing.reference_backbone import ReferenceBackboneConfig, build_reference_backbone

# One valid positional command line per command (files need not exist: parsing only).
COMMAND_LINES = {
    "plugins": ["plugins"],
    "demo": ["demo"],
    "train": ["train", "config.yaml"],
    "evaluate": ["evaluate", "model.pt", "data.xyz"],
    "predict": ["predict", "model.pt", "in.xyz", "-o", "out.xyz"],
    "native": ["native", "status"],
}
DEVICE_COMMANDS = ("train", "evaluate", "predict")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


@pytest.fixture
def fresh_registry():
    """The process-wide registry is rebuilt for the test and again afterwards."""
    reset_registry()
    yield
    reset_registry()


def error_lines(captured) -> list[str]:
    return [line for line in captured.err.splitlines() if line.strip()]


# ---- broken plugins never take the command line down ----

def good_backbone(name: str) -> BackboneSpec:
    return BackboneSpec(name, ReferenceBackboneConfig, build_reference_backbone, "works")


class WrongReturns:
    """Every hook returns something wrong, next to one good backbone."""

    __distribution__ = "tensorframe-wrong"

    @tensorframe.hookimpl
    def tensorframe_register_backbones(self):
        return [good_backbone("wrong_ok"), SimpleNamespace(description="no name"), "reference2"]

    @tensorframe.hookimpl
    def tensorframe_register_heads(self):
        return "force"  # a string, not a list

    @tensorframe.hookimpl
    def tensorframe_register_fields(self):
        return 3  # not iterable

    @tensorframe.hookimpl
    def tensorframe_register_readers(self):
        return [
            ReaderSpec("not_callable", read="read_me", extensions=(".nc",)),
            HeadSpec("a_head", ReferenceBackboneConfig, build_reference_backbone),  # the wrong spec type
            SimpleNamespace(name="duck", read=lambda path: [], extensions=()),     # has .name, is no ReaderSpec
        ]


def test_every_wrong_hook_return_is_one_problem_and_the_valid_items_stay():
    fresh = build_registry(extra_plugins=[("wrong", WrongReturns())], load_entry_points=False)
    messages = [p.message for p in fresh.problems]
    assert all((p.plugin, p.distribution) == ("wrong", "tensorframe-wrong") for p in fresh.problems)
    expected = [
        r"tensorframe_register_backbones item 1: expected a BackboneSpec, got SimpleNamespace .*; skipped",
        r"tensorframe_register_backbones item 2: expected a BackboneSpec, got str 'reference2'; skipped",
        r"tensorframe_register_heads returned str 'force'; expected a list of HeadSpec",
        r"tensorframe_register_fields returned int 3; expected a list of FieldSpec",
        r"tensorframe_register_readers item 0: 'not_callable': read must be callable, got str 'read_me'; skipped",
        r"tensorframe_register_readers item 1: expected a ReaderSpec, got HeadSpec",
        r"tensorframe_register_readers item 2: expected a ReaderSpec, got SimpleNamespace",
    ]
    assert len(messages) == len(expected), messages
    for pattern, message in zip(expected, messages, strict=True):
        assert re.match(pattern, message), (pattern, message)
    assert "wrong_ok" in fresh.names("backbone")  # the plugin's valid item is kept
    assert {"force", "born", "tensor"} <= set(fresh.names("head"))
    assert "born_charges" in fresh.names("field") and "ase" in fresh.names("reader")
    assert not {"not_callable", "duck", "a_head"} & set(fresh.names("reader"))
    # A lookup of a missing name stays one line, mentioning the broken plugin.
    with pytest.raises(tensorframe.PluginError) as info:
        fresh.get("backbone", "nosuch")
    assert "\n" not in str(info.value) and "tensorframe-wrong" in str(info.value)


def test_a_spec_with_unusable_members_is_refused():
    class Hollow:
        @tensorframe.hookimpl
        def tensorframe_register_backbones(self):
            return [BackboneSpec("no_config", None, build_reference_backbone), BackboneSpec("", ReferenceBackboneConfig,
                    build_reference_backbone), BackboneSpec("no_build", ReferenceBackboneConfig, None)]

    fresh = build_registry(extra_plugins=[("hollow", Hollow())], load_entry_points=False)
    messages = [p.message for p in fresh.problems]
    assert "config must be a PluginConfig subclass, got NoneType None" in messages[0]
    assert "name must be a non-empty string without spaces, got ''" in messages[1]
    assert "build must be callable, got NoneType None" in messages[2]
    assert not {"no_config", "no_build"} & set(fresh.names("backbone"))


def test_cli_lists_the_good_plugins_and_one_error_line_per_problem(monkeypatch, capsys):
    fresh = build_registry(extra_plugins=[("wrong", WrongReturns())], load_entry_points=False)
    monkeypatch.setattr("tensorframe.commands.plugins.get_registry", lambda: fresh)
    assert main(["plugins"]) == 1
    captured = capsys.readouterr()
    rows = {tuple(line.split()[:4]) for line in captured.out.splitlines()}
    assert ("backbone", "wrong_ok", "wrong", "tensorframe-wrong") in rows
    assert ("head", "born", "tensorframe", "tensorframe") in rows
    errors = error_lines(captured)
    assert len(errors) == len(fresh.problems) == 7
    assert all(line.startswith("error: plugin 'wrong' (distribution 'tensorframe-wrong'): ") for line in errors)


class FakeEntryPoint:
    """An installed entry point whose module does something at import."""

    def __init__(self, name: str, raises: BaseException) -> None:
        self.name, self.value, self.raises = name, f"{name}_plugin", raises
        self.dist = SimpleNamespace(name=f"tensorframe-{name}")

    def load(self):
        raise self.raises


def test_a_plugin_calling_sys_exit_at_import_is_a_problem_not_the_end(monkeypatch, capsys, fresh_registry):
    monkeypatch.setattr(registry, "_entry_points", lambda: [FakeEntryPoint("quitter", SystemExit(3))])
    assert main(["plugins"]) == 1
    captured = capsys.readouterr()
    assert ("backbone", "reference") in {tuple(line.split()[:2]) for line in captured.out.splitlines()}
    assert error_lines(captured) == [
        "error: plugin 'quitter' (distribution 'tensorframe-quitter'): failed to import 'quitter_plugin': "
        "SystemExit: it called sys.exit(3)"
    ]


def test_keyboard_interrupt_while_importing_a_plugin_still_stops(monkeypatch):
    monkeypatch.setattr(registry, "_entry_points", lambda: [FakeEntryPoint("slow", KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        build_registry()


def test_a_hook_calling_sys_exit_is_a_problem():
    class Quitter:
        @tensorframe.hookimpl
        def tensorframe_register_heads(self):
            raise SystemExit("bye")

    (problem,) = build_registry(extra_plugins=[("quitter", Quitter())], load_entry_points=False).problems
    assert problem.message == "tensorframe_register_heads raised SystemExit: it called sys.exit('bye')"


# ---- the listing ----

def test_plugins_shows_units_and_shapes_of_fields_within_100_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100
    fields = {line.split()[1]: line for line in lines if line.startswith("field ")}
    assert re.search(r"tensorframe\s+\[e\] \(N,3,3\) Born effective", fields["born_charges"])
    assert "[eV/Å] (N,3) force" in fields["forces"] and "[eV] scalar total energy" in fields["energy"]
    assert "[e·Å] (3,) electric dipole" in fields["dipole"] and "[C/m^2] (3,3,3) piezo" in fields["piezo"]
    assert main(["plugins", "--full"]) == 0
    full = capsys.readouterr().out
    assert "first index the field direction, second the displacement" in full


# ---- help is plain text ----

@pytest.mark.parametrize("argv", [[], *([name] for name in COMMANDS)])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":(func|class|data|mod|meth):", text), text
    if not argv:  # the command list keeps its layout
        assert re.search(r"^ {4}tensorframe predict CKPT INPUT {3}predicted tensors", text, re.M), text


def test_plain_text_strips_rest_markup():
    assert plain_text("The ``tensorframe`` line, see :func:`tensorframe.graph.neighbor_list` and "
                      ":class:`~tensorframe.specs.HeadSpec`, `x`.") == (
        "The tensorframe line, see tensorframe.graph.neighbor_list and HeadSpec, x.")


# ---- --debug before and after the command ----

@pytest.mark.parametrize("name", COMMANDS)
def test_debug_is_accepted_before_and_after_every_command(name):
    parse = build_parser().parse_args
    argv = COMMAND_LINES[name]
    assert parse(argv).debug is False
    assert parse(["--debug", *argv]).debug is True
    assert parse([*argv, "--debug"]).debug is True


def test_debug_after_the_command_shows_the_traceback(tmp_path, capsys):
    from tensorframe.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        main(["predict", str(tmp_path / "missing.pt"), "in.xyz", "-o", "out.xyz", "--debug"])
    assert main(["predict", str(tmp_path / "missing.pt"), "in.xyz", "-o", "out.xyz"]) == 2
    assert len(error_lines(capsys.readouterr())) == 1


# ---- --device ----

@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_device_accepts_cuda_n_and_refuses_garbage(name, capsys):
    parse = build_parser().parse_args
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert parse([*COMMAND_LINES[name], "--device", device]).device == device
    with pytest.raises(SystemExit) as info:
        parse([*COMMAND_LINES[name], "--device", "gpu"])
    assert info.value.code == 2
    (line,) = error_lines(capsys.readouterr())[-1:]
    assert line == f"tensorframe {name}: error: argument --device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"


@NO_CUDA
@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_cuda_on_a_machine_without_it_is_one_line(name, capsys):
    assert main([*COMMAND_LINES[name], "--device", "cuda:0"]) == 2
    captured = capsys.readouterr()
    assert error_lines(captured) == [
        f"tensorframe {name}: error: --device cuda:0: CUDA is not available on this machine (torch {torch.__version__})"
    ]
    assert captured.out == ""


def test_train_refuses_mps(capsys):
    assert main(["train", "config.yaml", "--device", "mps"]) == 2
    assert error_lines(capsys.readouterr()) == [
        "tensorframe train: error: --device mps: training runs on cpu or cuda (MPS is supported by predict and evaluate)"
    ]


# ---- --key-map ----

def test_key_map_before_the_positionals_takes_one_pair(capsys):
    args = build_parser().parse_args(["evaluate", "--key-map", "REF_forces=forces", "--key-map", "a=b,c=d",
                                      "model.pt", "data.xyz", "more.xyz"])
    assert (args.checkpoint, args.data) == ("model.pt", ["data.xyz", "more.xyz"])
    assert parse_key_map(args.key_map) == {"REF_forces": "forces", "a": "b", "c": "d"}
    assert main(["evaluate", "--key-map", "forces", "model.pt", "data.xyz"]) == 2
    assert error_lines(capsys.readouterr()) == [
        "tensorframe evaluate: error: --key-map: expected FILE_KEY=FIELD, got 'forces'"]


def test_a_file_key_mapped_to_two_fields_is_refused(capsys):
    """A dict keeps the last of ``a=b,a=c`` silently; the command refuses it."""
    assert main(["evaluate", "--key-map", "a=b", "--key-map", "a=c", "model.pt", "data.xyz"]) == 2
    assert error_lines(capsys.readouterr()) == [
        "tensorframe evaluate: error: --key-map: file key 'a' is mapped twice, to 'b' and to 'c'"]


def test_parse_key_map_still_takes_lists_of_lists():
    assert parse_key_map([["a=b", "c=d"], ["e=f"]]) == {"a": "b", "c": "d", "e": "f"}
    assert parse_key_map(None) == {}
    # Files labelling one field under different keys: both may be mapped (the reader refuses
    # a structure that carries both).
    assert parse_key_map(["REF_forces=forces,dft_forces=forces"]) == {"REF_forces": "forces", "dft_forces": "forces"}


# ---- --graph-memory ----

@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_graph_memory_sets_the_budget_before_anything_is_read(name, tmp_path, capsys):
    from tensorframe.graph import limits

    argv = [name, *(str(tmp_path / a) if "." in a else a for a in COMMAND_LINES[name][1:])]
    try:
        assert main([*argv, "--graph-memory", "0.25"]) == 2  # the files do not exist
        assert limits.graph_memory_budget_gb() == 0.25
    finally:
        limits.set_graph_memory_budget(None)
    assert len(error_lines(capsys.readouterr())) == 1
    with pytest.raises(SystemExit):
        main([*argv, "--graph-memory", "0"])
    assert "argument --graph-memory: expected a positive, finite number, got 0" in capsys.readouterr().err


# ---- every error is one line ----

@pytest.mark.parametrize("argv", [
    ["plugins", "extra"],
    ["train", "missing.yaml"],
    ["train"],
    ["evaluate", "missing.pt"],
    ["evaluate", "missing.pt", "missing.xyz", "--batch-size", "x"],
    ["predict", "missing.pt", "missing.xyz"],
    ["predict", "missing.pt", "missing.xyz", "-o", "out.json"],
    ["predict", "missing.pt", "missing.xyz", "--born-file"],
    ["demo", "--seconds", "soon"],
])
def test_bad_command_lines_give_one_error_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as error:  # argparse
        code = error.code
    assert code == 2
    captured = capsys.readouterr()
    errors = error_lines(captured)
    # argparse names the top-level parser for arguments no subcommand took ("extra").
    assert re.match(rf"tensorframe( {argv[0]})?: error: ", errors[-1]), captured.err
    assert all(line.startswith("usage:") or line.startswith(" ") for line in errors[:-1]), captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--epochs", "0", "expected a positive integer, got 0"),
    ("--seconds", "-5", "expected a positive, finite number, got -5"),
])
def test_demo_budgets_are_checked_before_use(option, value, expected, capsys):
    """``demo --epochs 0`` used to fail inside the config with ``<config>: epochs: ...``."""
    with pytest.raises(SystemExit):
        main(["demo", option, value])
    assert error_lines(capsys.readouterr())[-1] == f"tensorframe demo: error: argument {option}: {expected}"


def test_a_multi_line_message_is_printed_on_one_line():
    assert one_line(ValueError("first\n  second\n")) == "first; second"
    assert one_line(KeyError()) == "KeyError"


# ---- docs/prediction.md: the calculator example runs ----

def test_the_calculator_example_of_the_docs_runs(tmp_path, monkeypatch, capsys):
    guide = (Path(__file__).parents[1] / "docs" / "prediction.md").read_text()
    (snippet,) = [block.split("```")[0] for block in guide.split("```python\n")[1:] if "tensors.pt" in block]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(snippet, "prediction.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out == ["['born_charges', 'dielectric']", "(2, 3, 3) (3, 3) True",
                   "get_forces: PropertyNotImplementedError forces property not implemented"]
