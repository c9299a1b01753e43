"""The plugin manager: built-ins and entry points, registered and checked the same way.

A plugin that fails to import (or calls ``sys.exit`` while importing), declares an unknown
hook, raises in a hook, returns something other than a list of the hook's spec type
(:class:`~tensorframe.specs.BackboneSpec`, :class:`~tensorframe.specs.HeadSpec`,
:class:`~tensorframe.fields.FieldSpec`, :class:`~tensorframe.specs.ReaderSpec`) or registers a
name that another plugin already took is recorded as a :class:`PluginProblem` naming the
plugin and its distribution, and what it got wrong is skipped; the other plugins (and the
plugin's valid items) stay usable. Asking for a broken or duplicated name raises
:class:`PluginError` with that explanation. ``KeyboardInterrupt`` is never caught.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pluggy
from pydantic import BaseModel

from tensorframe import builtin_plugin, hookspecs
from tensorframe.fields import FieldSpec
from tensorframe.specs import BackboneSpec, FieldTable, HeadSpec, ReaderSpec

ENTRY_POINT_GROUP = "tensorframe"
KINDS = ("backbone", "head", "field", "reader")
_HOOKS = {
    "backbone": "tensorframe_register_backbones",
    "head": "tensorframe_register_heads",
    "field": "tensorframe_register_fields",
    "reader": "tensorframe_register_readers",
}
SPEC_TYPES: dict[str, type] = {"backbone": BackboneSpec, "head": HeadSpec, "field": FieldSpec, "reader": ReaderSpec}
"""The spec class each kind's hook must return a list of."""
PluginFailure = (Exception, SystemExit)
"""What a plugin may raise without taking tensorframe down (``sys.exit`` included;
``KeyboardInterrupt`` is not caught)."""


class PluginError(LookupError):
    """A name that no working plugin provides, or that two plugins provide."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered item: ``name`` of ``kind`` from ``plugin`` in ``distribution``."""

    name: str
    kind: str
    plugin: str
    distribution: str
    description: str = ""


@dataclass(frozen=True)
class PluginProblem:
    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (distribution {self.distribution!r}): {_one_line(self.message)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(error: BaseException) -> str:
    """``TypeName: message``; ``SystemExit`` says that the plugin called ``sys.exit``."""
    if isinstance(error, SystemExit):
        return f"SystemExit: it called sys.exit({error.code!r})"
    return _one_line(f"{type(error).__name__}: {error}")


@dataclass
class Registry:
    """Everything the installed plugins registered, by kind and name."""

    items: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KINDS})
    info: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})
    duplicates: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None

    def get(self, kind: str, name: str) -> Any:
        """The spec registered as ``name``; raises :class:`PluginError` with the choices."""
        if (kind, name) in self.duplicates:
            owners = ", ".join(f"plugin {i.plugin!r} ({i.distribution})" for i in self.duplicates[kind, name])
            raise PluginError(f"{kind} {name!r} is registered by more than one plugin: {owners}; uninstall one")
        try:
            return self.items[kind][name]
        except KeyError:
            choices = ", ".join(sorted(self.items[kind])) or "none"
            hint = "; ".join(str(p) for p in self.problems)
            broken = f"; plugins that failed to load: {hint}" if hint else ""
            raise PluginError(f"unknown {kind} {name!r}; valid choices: {choices}{broken}") from None

    @property
    def fields(self) -> FieldTable:
        """The registered fields by name, read-only (a field two plugins register is left
        out, as in :attr:`items`): what head builders and readers are given."""
        return MappingProxyType(self.items["field"])

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    def rows(self) -> list[PluginInfo]:
        """Every registered item, duplicates included, sorted by kind and name."""
        rows = [i for kind in KINDS for i in self.info[kind].values()]
        for owners in self.duplicates.values():
            rows.extend(o for o in owners if o not in rows)
        return sorted(rows, key=lambda r: (KINDS.index(r.kind), r.name, r.plugin))

    def add(self, kind: str, name: str, spec: Any, info: PluginInfo) -> None:
        if (kind, name) in self.duplicates:
            self.duplicates[kind, name].append(info)
        elif name in self.items[kind]:
            first = self.info[kind].pop(name)
            del self.items[kind][name]
            self.duplicates[kind, name] = [first, info]
            self.problems.append(
                PluginProblem(info.plugin, info.distribution,
                              f"{kind} {name!r} is already registered by plugin {first.plugin!r} ({first.distribution})")
            )
        else:
            self.items[kind][name] = spec
            self.info[kind][name] = info


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def build_registry(extra_plugins: Iterable[tuple[str, object]] = (), load_entry_points: bool = True) -> Registry:
    """A fresh registry: built-ins, then installed entry points, then ``extra_plugins``
    given as ``(name, module_or_object)`` (handy in tests and notebooks)."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager=manager)
    distributions: dict[str, str] = {}

    def register(name: str, plugin: object, distribution: str) -> None:
        try:
            manager.register(plugin, name=name)
            manager.check_pending()
        except PluginFailure as error:  # a broken plugin must not hide the others
            if manager.is_registered(plugin):
                manager.unregister(plugin)
            registry.problems.append(PluginProblem(name, distribution, f"invalid plugin: {_one_line(str(error))}"))
            return
        distributions[name] = distribution

    register("tensorframe", builtin_plugin, "tensorframe")
    if load_entry_points:
        for entry_point in _entry_points():
            distribution = entry_point.dist.name if entry_point.dist is not None else "unknown"
            try:
                plugin = entry_point.load()
            except PluginFailure as error:
                registry.problems.append(
                    PluginProblem(entry_point.name, distribution, f"failed to import {entry_point.value!r}: {_describe(error)}")
                )
                continue
            register(entry_point.name, plugin, distribution)
    for name, plugin in extra_plugins:
        register(name, plugin, getattr(plugin, "__distribution__", "local"))

    for kind, hook_name in _HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            distribution = distributions.get(impl.plugin_name, "unknown")
            try:
                returned = impl.function()
            except PluginFailure as error:
                registry.problems.append(PluginProblem(impl.plugin_name, distribution, f"{hook_name} raised {_describe(error)}"))
                continue
            specs, complaints = checked_specs(kind, returned)
            for complaint in complaints:
                registry.problems.append(PluginProblem(impl.plugin_name, distribution, f"{hook_name} {complaint}"))
            for spec in specs:
                info = PluginInfo(spec.name, kind, impl.plugin_name, distribution, spec.description)
                registry.add(kind, spec.name, spec, info)
    return registry


def checked_specs(kind: str, returned: object) -> tuple[list[Any], list[str]]:
    """The valid specs of what a ``kind`` hook returned, and one complaint per thing wrong.

    A hook must return a list (or tuple; ``None`` counts as empty) of :data:`SPEC_TYPES`
    ``[kind]`` instances with a usable name and callables where the spec needs them. Anything
    else is refused item by item, never guessed at.
    """
    spec_type = SPEC_TYPES[kind]
    if returned is None:
        return [], []
    if not isinstance(returned, (list, tuple)):
        return [], [f"returned {_kind_of(returned)}; expected a list of {spec_type.__name__}"]
    specs, complaints = [], []
    for index, spec in enumerate(returned):
        problem = _spec_problem(spec, spec_type)
        if problem is None:
            specs.append(spec)
        else:
            complaints.append(f"item {index}: {problem}; skipped")
    return specs, complaints


def _spec_problem(spec: object, spec_type: type) -> str | None:
    """What is wrong with one returned item, or None."""
    if not isinstance(spec, spec_type):
        return f"expected a {spec_type.__name__}, got {_kind_of(spec)}"
    if not isinstance(spec.name, str) or not spec.name or spec.name != spec.name.strip() or " " in spec.name:
        return f"name must be a non-empty string without spaces, got {spec.name!r}"
    if not isinstance(spec.description, str):
        return f"{spec.name!r}: description must be a string, got {_kind_of(spec.description)}"
    if isinstance(spec, (BackboneSpec, HeadSpec)):
        if not (isinstance(spec.config, type) and issubclass(spec.config, BaseModel)):
            return f"{spec.name!r}: config must be a PluginConfig subclass, got {_kind_of(spec.config)}"
        if not callable(spec.build):
            return f"{spec.name!r}: build must be callable, got {_kind_of(spec.build)}"
    if isinstance(spec, ReaderSpec):
        if not callable(spec.read):
            return f"{spec.name!r}: read must be callable, got {_kind_of(spec.read)}"
        if not (isinstance(spec.extensions, tuple) and all(isinstance(e, str) for e in spec.extensions)):
            return f"{spec.name!r}: extensions must be a tuple of strings, got {spec.extensions!r}"
    if isinstance(spec, FieldSpec) and not isinstance(spec.units, str):
        return f"{spec.name!r}: units must be a string, got {_kind_of(spec.units)}"
    return None


def _kind_of(value: object) -> str:
    """A short description of a wrong value for a one-line message: ``str 'oops'``, ``int 3``."""
    try:
        text = repr(value)
    except PluginFailure:
        text = "(unprintable)"
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    return build_registry()


def reset_registry() -> None:
    """Forget the cached registry (after installing or removing plugins at run time)."""
    get_registry.cache_clear()


def list_plugins() -> list[PluginInfo]:
    """Every backbone, head, field and reader with the plugin and distribution providing it."""
    return get_registry().rows()
