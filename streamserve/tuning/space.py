"""What ``tune`` may change: the policies' declared search spaces, parsed, selected, applied.

A policy declares its tunable parameters next to their defaults, as a class attribute
``SEARCH_SPACE`` mapping a parameter name to a spec string:

* ``"float LOW HIGH"`` or ``"float LOW HIGH log"``: a real number in [LOW, HIGH];
* ``"int LOW HIGH"`` or ``"int LOW HIGH log"``: an integer in [LOW, HIGH];
* ``"choice A B ..."``: one of the values (YAML scalars: ``true``, ``64``, ``fcfs``).

Strings rather than objects, so the policy modules import nothing from here (policies
import only core modules) and a policy of your own (``module:Factory``) declares its
space the same way. The tuner names a parameter ``section.key``, the path of the field
in the cluster file (``router.w_latency``); ``--param`` picks a subset of the declared
space or gives a parameter a range of its own.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml

from streamserve.config import ClusterConfig, PolicyConfig
from streamserve.policies.registry import ROUTERS, SCHEDULERS, SPEC_POLICIES
from streamserve.tuning.errors import TuningError

SECTIONS: dict[str, Mapping[str, Callable[..., Any]]] = {
    "scheduler": SCHEDULERS, "router": ROUTERS, "spec_policy": SPEC_POLICIES}
CONTEXT = frozenset({"perf", "router", "k_max", "seed"})  # filled in by the runtime, never tuned
KINDS = ("float", "int", "choice")


@dataclass(frozen=True)
class Param:
    """One tunable parameter: where it lives in the cluster file and what it may be."""

    name: str  # section.key, e.g. router.w_latency
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        return f"{self.kind} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


def parse_spec(name: str, spec: str, where: str | None = None) -> Param:
    """A ``SEARCH_SPACE`` value (or the part of ``--param NAME=SPEC`` after ``=``);
    ``where`` names it in an error message (default: ``name``)."""
    words = spec.split()
    bad = f"{where or name}: bad search-space spec {spec!r}"
    if not words or words[0] not in KINDS:
        raise TuningError(f"{bad}: start with one of {', '.join(KINDS)}")
    kind, rest = words[0], words[1:]
    if kind == "choice":
        if not rest:
            raise TuningError(f"{bad}: name at least one value")
        return Param(name, kind, choices=tuple(yaml.safe_load(w) for w in rest))
    log = rest[2:] == ["log"]
    if len(rest) != 2 and not log:
        raise TuningError(f"{bad}: expected '{kind} LOW HIGH' or '{kind} LOW HIGH log'")
    try:
        low, high = (int(w) if kind == "int" else float(w) for w in rest[:2])
    except ValueError:
        raise TuningError(f"{bad}: LOW and HIGH must be {'integers' if kind == 'int' else 'numbers'}") from None
    if not low <= high:
        raise TuningError(f"{bad}: LOW must be <= HIGH")
    if log and low <= 0:
        raise TuningError(f"{bad}: a log scale needs LOW > 0")
    return Param(name, kind, low, high, log)


def _factory(cluster: ClusterConfig, section: str) -> tuple[str, Callable[..., Any]]:
    """The policy named in ``section`` of the cluster and its factory (class)."""
    policy = getattr(cluster, section).name
    if ":" in policy:
        module, _, attr = policy.partition(":")
        try:
            return policy, getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise TuningError(f"{section}.name: cannot import {policy!r} ({e})") from None
    table = SECTIONS[section]
    if policy not in table:
        raise TuningError(f"{section}.name: unknown {section} {policy!r} (choose from {', '.join(sorted(table))})")
    return policy, table[policy]


def _parameters(factory: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(factory).parameters) - CONTEXT


def declared(cluster: ClusterConfig) -> dict[str, Param]:
    """Every parameter the cluster's policies declare tunable, by ``section.key``."""
    out: dict[str, Param] = {}
    for section in SECTIONS:
        _, factory = _factory(cluster, section)
        accepted = _parameters(factory)  # a subclass may not take all its base's parameters
        for key, spec in getattr(factory, "SEARCH_SPACE", {}).items():
            if key in accepted:
                out[f"{section}.{key}"] = parse_spec(f"{section}.{key}", spec)
    return out


def select(cluster: ClusterConfig, requested: Sequence[str] = ()) -> list[Param]:
    """The search space of a run: the whole declared space, or the ``--param`` entries
    (``NAME`` from the declared space, ``NAME=SPEC`` with a range of its own)."""
    available = declared(cluster)
    chosen: dict[str, Param] = {}
    for item in requested:
        name, eq, spec = (s.strip() for s in item.partition("="))
        section, dot, key = name.partition(".")
        if section not in SECTIONS or not dot or not key:
            raise TuningError(f"--param {name}: name a parameter as SECTION.KEY, SECTION one of "
                              f"{', '.join(SECTIONS)} (e.g. router.w_latency)")
        policy, factory = _factory(cluster, section)
        if key not in _parameters(factory):
            tunable = ", ".join(n for n in available if n.startswith(section + ".")) or "none declared"
            raise TuningError(f"--param {name}: not a parameter of {section} {policy!r} (tunable: {tunable})")
        if eq:
            chosen[name] = parse_spec(name, spec, f"--param {name}")
        elif name in available:
            chosen[name] = available[name]
        else:
            raise TuningError(f"--param {name}: {section} {policy!r} declares no range for it; "
                              f"give one, e.g. --param '{name}=float 0 1'")
    params = list(chosen.values()) if requested else list(available.values())
    if not params:
        names = ", ".join(f"{s} {getattr(cluster, s).name}" for s in SECTIONS)
        raise TuningError(f"nothing to tune: the cluster's policies ({names}) declare no search space; "
                          "use tunable ones (stream, flowguard, specustream) or give --param NAME=SPEC")
    return params


def suggest(trial: Any, params: Sequence[Param]) -> dict[str, Any]:
    """Ask an Optuna trial for a value of every parameter."""
    values: dict[str, Any] = {}
    for p in params:
        if p.kind == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return values


def _by_section(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, v in values.items():
        section, key = name.split(".", 1)
        out.setdefault(section, {})[key] = v
    return out


def apply(cluster: ClusterConfig, values: Mapping[str, Any]) -> ClusterConfig:
    """The cluster with the policy parameters in ``values`` replaced."""
    update = {section: PolicyConfig.model_validate({**getattr(cluster, section).model_dump(), **changes})
              for section, changes in _by_section(values).items()}
    return cluster.model_copy(update=update)


def apply_mapping(data: Mapping[str, Any], cluster: ClusterConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """The same change on the raw mapping of ``cluster``'s file, keeping the rest as written
    (a section the file left to its default gets the policy's name written out)."""
    out = dict(data)
    for section, changes in _by_section(values).items():
        out[section] = {"name": getattr(cluster, section).name, **dict(out.get(section) or {}), **changes}
    return out
