"""The shipped live configs run StreamServe's three policies, and each baseline is one
line away (the commented alternative next to it). No vLLM needed: policies are built
as `serve` builds them, without starting engines."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from streamserve.gpu.config import LiveConfig, parse_live
from streamserve.gpu.engine_args import ENV_SPEC_POLICY, engine_specs
from streamserve.gpu.policyload import build_engine_spec_policy
from streamserve.gpu.serve import build_frontend
from streamserve.perfmodel import ProfileError
from streamserve.policies.flowguard import FlowGuard
from streamserve.policies.scheduler import FCFSScheduler, StreamScheduler
from streamserve.policies.specustream import SpecuStream

CONFIGS = Path(__file__).resolve().parents[1] / "streamserve" / "configs"
SHIPPED = sorted(CONFIGS.glob("live-*.yaml"))
BASELINE = re.compile(r"^(\s*[\w_]+:\s*)(\{.*?\})(\s*#\s*baseline:\s*)(\{.*\})\s*$")


def _spec_policies(cfg: LiveConfig) -> list:
    out = []
    for spec in engine_specs(cfg, base_env={}):
        raw = spec.env.get(ENV_SPEC_POLICY)
        if raw:
            k_max = json.loads(spec.argv[spec.argv.index("--speculative-config") + 1])["num_speculative_tokens"]
            out.append(build_engine_spec_policy(json.loads(raw), k_max=k_max))
    return out


def test_there_are_shipped_live_configs():
    assert {p.name for p in SHIPPED} >= {"live-cpu.yaml", "live-gpu.yaml", "live-gpu-dp.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_runs_the_three_policies(path):
    cfg = parse_live(yaml.safe_load(path.read_text()), str(path))
    assert (cfg.scheduler.name, cfg.router.name, cfg.spec_policy.name) == ("stream", "flowguard", "specustream")
    ex = build_frontend(cfg)
    assert type(ex.scheduler) is StreamScheduler and isinstance(ex.scheduler.router, FlowGuard)
    policies = _spec_policies(cfg)
    assert policies and all(isinstance(p, SpecuStream) for p in policies)  # speculation is on, SpecuStream drives it


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_baselines_are_one_line_away(path):
    """Swapping each policy line for the alternative in its comment gives the baseline."""
    lines = path.read_text().splitlines()
    swapped = 0
    for i, line in enumerate(lines):
        m = BASELINE.match(line)
        if m:
            lines[i] = m.group(1) + m.group(4)
            swapped += 1
    assert swapped >= 3
    cfg = parse_live(yaml.safe_load("\n".join(lines)), str(path))
    assert (cfg.scheduler.name, cfg.router.name, cfg.spec_policy.name) == ("fcfs", "round_robin", "fixed")
    ex = build_frontend(cfg)
    assert isinstance(ex.scheduler, FCFSScheduler)
    assert all(type(p).__name__ == "FixedK" or p.name == "fixed" for p in _spec_policies(cfg))


def test_defaults_are_the_papers_policies():
    cfg = parse_live({"model": "tiny", "engines": [{"role": "prefill", "port": 9001}, {"role": "decode", "port": 9002}]},
                     "defaults")
    assert (cfg.scheduler.name, cfg.router.name, cfg.spec_policy.name) == ("stream", "flowguard", "specustream")


def test_the_drafters_cost_entry_is_named_in_the_config_not_in_code():
    base = {"model": "tiny", "engines": [{"role": "colocated", "port": 9001}]}
    ngram = parse_live({**base, "speculation": {"method": "ngram"}}, "t")
    draft = parse_live({**base, "speculation": {"method": "draft", "draft_model": "/m"}}, "t")
    named = parse_live({**base, "speculation": {"method": "draft", "draft_model": "/m"},
                        "perf": {"draft": "small-model"}}, "t")
    assert (ngram.draft_profile_name, draft.draft_profile_name, named.draft_profile_name) == ("ngram", None,
                                                                                               "small-model")
    wrong = parse_live({**base, "speculation": {"method": "draft", "draft_model": "/m"}, "perf": {"draft": "nope"}}, "t")
    with pytest.raises(ProfileError, match="unknown model 'nope'"):
        build_frontend(wrong)
