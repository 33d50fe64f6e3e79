"""Check a cluster config's policy options before a run, with the config's file and line.

Policies take their own parameters (``router: {name: flowguard, w_latency: 1.0}``), so
pydantic cannot check them. Building them once here turns a wrong option into the same
one-line ``file:line: field: problem`` error as every other config mistake, instead of a
failure without a location, or a crash in the middle of a run.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from streamserve.config import ClusterConfig, ConfigError, field_line
from streamserve.policies.registry import (ROUTERS, SCHEDULERS, SPEC_POLICIES, PolicyError, build_router,
                                           build_scheduler, build_spec_policy)

_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


def _type_problem(annotation: Any, value: Any) -> str:
    """Why ``value`` does not fit a simple annotation ('' if it does, or if it cannot tell)."""
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", "")
    allowed: tuple[type, ...] = ()
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            if value is None:
                return ""
            continue
        if part not in _TYPES:
            return ""  # not a simple type: the policy checks it itself
        allowed += _TYPES[part]
    if not allowed:
        return ""
    if isinstance(value, bool) and bool not in allowed:
        return f"expected {annotation}, got {value!r}"
    return "" if isinstance(value, allowed) else f"expected {annotation}, got {value!r}"


def _check_types(kind: str, table: Mapping[str, Callable[..., Any]], params: Mapping[str, Any]) -> str | None:
    factory = table.get(str(params.get("name")))
    if factory is None:
        return None
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    for key, value in params.items():
        p = sig.parameters.get(key)
        if key != "name" and p is not None:
            problem = _type_problem(p.annotation, value)
            if problem:
                return f"{kind}.{key}: {problem}"
    return None


def _field(kind: str, message: str) -> str:
    """The config field a ``PolicyError`` is about: ``router.w_kv: ...`` or
    ``scheduler 'stream': order: ...`` name one; otherwise the policy itself."""
    head = message.split(": ", 1)[0]
    if head.startswith(kind + ".") and " " not in head:
        return head
    rest = message.split(": ", 2)
    if len(rest) == 3 and " " not in rest[1]:
        return f"{kind}.{rest[1]}"
    return kind


def _culprit(kind: str, params: Mapping[str, Any], build: Callable[[dict[str, Any]], Any]) -> str | None:
    """The option that alone breaks the policy's build (``kind.key``), when one does.

    Compiled policies have no signature to read types from, and their own type errors
    name no parameter; building with one option at a time finds it."""
    for key, value in params.items():
        if key == "name":
            continue
        try:
            build({"name": params.get("name"), key: value})
        except PolicyError:
            return f"{kind}.{key}"
    return None


def check_policies(cfg: ClusterConfig, origin: str, text: str | None = None) -> None:
    """Build the config's router, speculation policy and scheduler once; raise
    ``ConfigError`` naming ``origin``, the line and the field of the first problem."""
    from streamserve.sim.cluster import lane_perfs  # the lanes' performance models

    def where(field: str) -> str:
        line = field_line(text, field)
        return f"{origin}:{line}" if line else origin

    for kind, table, params in (("router", ROUTERS, cfg.router.model_dump()),
                                ("spec_policy", SPEC_POLICIES, cfg.spec_policy.model_dump()),
                                ("scheduler", SCHEDULERS, cfg.scheduler.model_dump())):
        problem = _check_types(kind, table, params)
        if problem:
            raise ConfigError(f"{where(problem.split(':', 1)[0])}: {problem}")
    perfs = lane_perfs(cfg)
    k_max = cfg.speculation.k_max if cfg.speculation.method != "none" else 0
    builders: dict[str, Callable[[dict[str, Any]], Any]] = {
        "router": lambda params: build_router(params, perfs),
        "spec_policy": lambda params: build_spec_policy(params, perfs, k_max),
        "scheduler": lambda params: build_scheduler(params, build_router({"name": "round_robin"}, perfs), perfs),
    }
    kind = "router"
    try:
        router = build_router(cfg.router.model_dump(), perfs)
        kind = "spec_policy"
        build_spec_policy(cfg.spec_policy.model_dump(), perfs, k_max)
        kind = "scheduler"
        build_scheduler(cfg.scheduler.model_dump(), router, perfs)
    except PolicyError as e:
        message = str(e)
        field = _field(kind, message)
        if field == kind:  # e.g. a compiled policy's own type error, which names no option
            field = _culprit(kind, getattr(cfg, kind).model_dump(), builders[kind]) or kind
            if field != kind:
                raise ConfigError(f"{where(field)}: {field}: {message}") from None
        if field != kind and not message.startswith(field + ":"):
            message = f"{field}: {message.split(': ', 2)[2]}"
        elif field == kind:
            message = f"{kind}: {message}"
        raise ConfigError(f"{where(field)}: {message}") from None
