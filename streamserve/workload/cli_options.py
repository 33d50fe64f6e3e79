"""The workload options of ``streamserve simulate`` (and any command that takes a workload).

Kept next to :func:`resolve_workload` so the flags and their meaning change together;
the CLI adds them with one decorator and passes the values straight through.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import click

from streamserve.workload.spec import ARRIVALS, FORMATS

F = TypeVar("F", bound=Callable)

WORKLOAD_HELP = ("What to run: a trace file (Azure, BurstGPT, Mooncake, ShareGPT, CSV/JSONL; format "
                 "detected), a workload spec file (.yaml/.toml), a dataset (alpaca, gsm8k, humaneval, sum), "
                 "a mix (mix, or mix:alpaca=0.5,sum=0.5) or random[:input_len=N,output_len=N,range_ratio=R]. "
                 "Default: synthetic Azure-like lengths.")


def workload_options(f: F) -> F:
    """Add --workload, --format, --arrival, --cv and --strict to a click command.

    The command also needs --num-requests, --rate, --concurrency and --seed with
    ``default=None`` for the first three, so a trace replays as recorded unless asked.
    """
    for option in reversed((
        click.option("--workload", "workload_spec", metavar="PATH|NAME", help=WORKLOAD_HELP),
        click.option("--format", "fmt", type=click.Choice(("auto",) + FORMATS), default=None,
                     help="Trace format, when detection from the first line is not wanted."),
        click.option("--arrival", type=click.Choice(ARRIVALS), default=None,
                     help="Arrival process: replay (trace times; --rate rescales them), poisson, "
                          "gamma (--cv), onoff (ON/OFF bursts, --cv > 1). Default: replay for timed "
                          "traces, else poisson."),
        click.option("--cv", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Burstiness: coefficient of variation of inter-arrival times (gamma, onoff)."),
        click.option("--strict", is_flag=True,
                     help="Fail on unsorted trace timestamps instead of sorting them with a warning."),
    )):
        f = option(f)
    return f
