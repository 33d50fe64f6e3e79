"""Build the policy objects of a live deployment from its config.

The registry (``streamserve.policies.registry``) is the only source of policies, as in
the simulator (a name of the form ``module:attr`` there imports a policy of one's own;
tests use that to drive k on a known schedule).
"""
from __future__ import annotations

from typing import Any, Mapping

from streamserve.perfmodel import LanePerf, Profile
from streamserve.policies.base import Scheduler, SpecPolicy
from streamserve.policies.registry import build_router, build_scheduler, build_spec_policy


def lane_perf(perf_conf: Mapping[str, Any], lanes: list[tuple[int, int, str]], draft: str | None) -> dict[int, LanePerf]:
    """``{lane_id: LanePerf}`` for ``lanes`` given as (lane_id, tp, role), from the config's
    ``perf`` section (profile file, model and GPU names as the profile spells them). The
    role picks the profile's set for that role, as the simulator does (a calibrated profile
    of a disaggregated deployment has one per role)."""
    profile = Profile.load(perf_conf.get("profile"))
    return {lane_id: profile.lane(perf_conf["model"], perf_conf["gpu"], tp, draft, role) for lane_id, tp, role in lanes}


def build_engine_spec_policy(conf: Mapping[str, Any], k_max: int) -> SpecPolicy:
    """The spec policy of one engine, from the JSON the engine finds in its environment."""
    lane_id = int(conf["lane_id"])
    perf = lane_perf(conf["perf"], [(lane_id, int(conf.get("tp", 1)), str(conf.get("role", "decode")))], conf.get("draft"))
    return build_spec_policy(conf["policy"], perf, k_max)


def build_front_scheduler(router_conf: Mapping[str, Any], scheduler_conf: Mapping[str, Any],
                          perf: Mapping[int, LanePerf], seed: int) -> Scheduler:
    """The front end's scheduler, holding its router."""
    return build_scheduler(scheduler_conf, build_router(router_conf, perf, seed=seed), perf)
