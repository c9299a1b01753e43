"""The benchmark toolkit: interleaved timing rounds, quick-mode defaults, and the docs sections,
which must be exactly what the report code renders from the stored JSON (a refactor of the
benchmarks may move code, not change a table)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from benchmarks import (
    bench_backbones,
    bench_completeness,
    bench_core,
    bench_flops,
    bench_kernels,
    bench_md,
    bench_scaling,
)
from benchmarks.suite_report import load_speed, merge, section
from benchmarks.toolkit import DOCS, RESULTS, interleaved_rounds, quick_defaults


def test_interleaved_rounds_warm_up_once_then_alternate_the_order():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    times = interleaved_rounds(calls, repeats=3, alternate=True)
    assert order == ["a", "b", "c", "a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}
    order.clear()
    interleaved_rounds(calls, repeats=2)
    assert order == ["a", "b", "c"] * 3


def test_quick_defaults_fill_only_unset_options():
    args = argparse.Namespace(quick=True, sizes=None, repeats=7)
    quick_defaults(args, sizes=((8, 64), (8, 64, 512)), repeats=(1, 5))
    assert args.sizes == [8, 64] and args.repeats == 7


def _docs_section(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", DOCS.read_text(), flags=re.DOTALL)
    assert match is not None, f"docs/benchmarks.md has no {name} section"
    return match.group(1)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _suite() -> str:
    suite = merge([_load("suite.json")])
    return section(suite, "benchmarks/results/suite.json", load_speed(RESULTS / "speed.json", suite["backbone_configs"]))


# Every generated section of docs/benchmarks.md: its stored JSON and how the report code renders it.
RENDERERS = {
    "core": ("core.json", lambda: bench_core.render_markdown(_load("core.json"))),
    "backbones": ("backbones.json", lambda: bench_backbones.render_markdown(_load("backbones.json"))),
    "scaling": ("scaling.json", lambda: bench_scaling.render_markdown(
        _load("scaling.json"), "benchmarks/results/scaling.json",
        {plot: f"benchmarks/{plot}" for plot in (bench_scaling.ATOMS_PLOT, bench_scaling.TRIPLET_PLOT)})),
    "suite": ("suite.json", _suite),
    "completeness": ("completeness.json", lambda: bench_completeness.render(_load("completeness.json"))),
    "md": ("md.json", lambda: bench_md.render(_load("md.json"))),
    "kernels": ("kernels.json", lambda: bench_kernels.render(_load("kernels.json"))),
    "flops": ("flops.json", lambda: bench_flops.render(_load("flops.json"))),
}
SECTIONS = re.findall(r"^<!-- ([\w-]+):start -->$", DOCS.read_text(), flags=re.MULTILINE)


def test_every_docs_section_is_checked_against_its_stored_json():
    """A section added to docs/benchmarks.md without a renderer here would escape the check below."""
    assert SECTIONS and sorted(SECTIONS) == sorted(RENDERERS)


@pytest.mark.parametrize("name", SECTIONS)
def test_docs_section_is_what_the_stored_json_renders_to(name: str):
    """Byte for byte: a renderer whose output changes (a refactor that changes a table) fails here."""
    raw, render = RENDERERS[name]
    if not Path(RESULTS / raw).exists():
        pytest.skip(f"no stored benchmarks/results/{raw}")
    assert render().strip() == _docs_section(name)
