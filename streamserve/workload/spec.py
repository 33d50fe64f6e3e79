"""The ``workload:`` mapping of a cluster config (or of a workload spec file), validated.

Command-line options override these fields; everything here has the same meaning as the
option of the same name.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMATS = ("azure", "burstgpt", "mooncake", "sharegpt", "csv", "jsonl", "random")
ARRIVALS = ("replay", "poisson", "gamma", "onoff")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnMap(_Strict):
    """Which column (CSV header name) or key (JSONL) holds each field."""

    arrival: str | None = None  # numbers in ``time_unit``, or ISO datetimes; None: no times
    prompt_len: str = "prompt_len"
    output_len: str = "output_len"
    hash_ids: str | None = None  # JSONL only: a list of integers per row
    prompt: str | None = None  # text, kept for live runs
    dataset: str | None = None  # a tag per row; acceptance rates come from ``alpha``


class OnOffConfig(_Strict):
    """A two-state Markov-modulated Poisson process, given outright.

    The process stays ON for an exponential time of mean ``on_s`` sending at ``on_rate``
    requests/s, then OFF for mean ``off_s`` at ``off_rate``. ``--rate`` rescales time.
    """

    on_rate: float = Field(gt=0)
    off_rate: float = Field(0.0, ge=0)
    on_s: float = Field(gt=0)
    off_s: float = Field(gt=0)


class WorkloadConfig(_Strict):
    source: str | None = None  # dataset name, mix:..., random[:...], or a trace path
    format: Literal["auto", "azure", "burstgpt", "mooncake", "sharegpt", "csv", "jsonl", "random"] = "auto"
    columns: ColumnMap | None = None  # csv/jsonl
    time_unit: Literal["s", "ms", "us", "ns"] = "s"  # csv/jsonl numeric arrival column
    model: str | None = None  # burstgpt: keep only this Model (e.g. ChatGPT, GPT-4)
    log_type: str | None = None  # burstgpt: keep only this Log Type (e.g. "Conversation log")
    tokenizer: str | None = None  # sharegpt: Hugging Face tokenizer name (needs transformers)
    chars_per_token: float = Field(4.0, gt=0)  # sharegpt without a tokenizer
    # vllm bench random: lengths uniform in [L*(1-r), L*(1+r)]
    input_len: int = Field(1024, ge=1)
    output_len: int = Field(128, ge=1)
    range_ratio: float = Field(0.0, ge=0, lt=1)
    prefix_len: int = Field(0, ge=0)  # tokens shared by every prompt, added to input_len
    alpha: dict[str, Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=dict)  # per dataset tag
    # arrivals and size
    num_requests: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)
    arrival: Literal["replay", "poisson", "gamma", "onoff"] | None = None
    cv: float | None = Field(None, gt=0)
    duty: float = Field(0.5, gt=0, lt=1)  # onoff by cv: fraction of time ON
    onoff: OnOffConfig | None = None
    concurrency: int | None = Field(None, ge=1)
    think_time: float = Field(0.0, ge=0)
