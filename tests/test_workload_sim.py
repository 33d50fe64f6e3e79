"""Every sample trace and named workload runs through the simulator, every request settled."""
from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from streamserve.config import builtin_cluster
from streamserve.request import State
from streamserve.sim import run
from streamserve.workload.cli_options import workload_options
from streamserve.workload.resolve import resolve_workload

TRACES = Path(__file__).resolve().parents[1] / "traces"
SAMPLES = sorted(p.name for p in TRACES.iterdir() if p.suffix != ".md" and p.name != "generic.jsonl")


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_traces_simulate(name: str) -> None:
    w = resolve_workload(str(TRACES / name), num_requests=120, warn=lambda m: None)
    result = run(builtin_cluster("streamserve"), w, seed=0)
    assert len(result.requests) == len(w)
    assert all(r.state in (State.FINISHED, State.REJECTED, State.FAILED) for r in result.requests)
    assert all(_finished_or_beyond_window(r) for r in result.requests)


def _finished_or_beyond_window(r) -> bool:
    """OPT-13B's window is 2048 tokens: longer requests are rejected, saying so."""
    return r.state is State.FINISHED or (r.state is State.REJECTED and "context window" in r.reason)


@pytest.mark.parametrize("name", ["alpaca", "gsm8k", "humaneval", "sum", "mix"])
@pytest.mark.parametrize("load", [{"rate": 2.0}, {"concurrency": 8}])
def test_named_workloads_simulate(name: str, load: dict) -> None:
    w = resolve_workload(name, num_requests=80, **load)
    result = run(builtin_cluster("streamserve"), w, seed=0)
    assert all(_finished_or_beyond_window(r) for r in result.requests)
    if name not in ("sum", "mix"):  # only SUM's papers run past 2048 tokens
        assert sum(r.state is State.FINISHED for r in result.requests) == 80
    assert {r.dataset for r in result.requests} <= set(w.datasets)


def test_workload_options_pass_through() -> None:
    seen: dict = {}

    @click.command()
    @workload_options
    def cmd(**kw) -> None:
        seen.update(kw)

    res = CliRunner().invoke(cmd, ["--workload", "gsm8k", "--format", "csv", "--arrival", "gamma", "--cv", "2.5",
                                   "--strict"])
    assert res.exit_code == 0, res.output
    assert seen == {"workload_spec": "gsm8k", "fmt": "csv", "arrival": "gamma", "cv": 2.5, "strict": True}
    res = CliRunner().invoke(cmd, ["--arrival", "bursty"])
    assert res.exit_code == 2 and "'bursty' is not one of" in res.output
