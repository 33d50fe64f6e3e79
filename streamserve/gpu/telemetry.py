"""What the front end measures and reads: its own Prometheus metrics, and the engines'
``/metrics`` and ``/health``.

Engine metrics are read with ``prometheus_client``'s own text parser, the one format
reader for both the lanes and ``bench``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from streamserve.gpu.lanes import LiveLane

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KEPT_LABELS = ("source", "position")  # label sets a lane reads apart, e.g. prompt tokens by source
INFO_LABELS = {"vllm:cache_config_info": ("num_gpu_blocks", "block_size")}  # numbers held in labels


def only(text: str, families: Iterable[str]) -> str:
    """The lines of an exposition that belong to ``families`` (sample lines whose name
    starts with one, and their ``# HELP``/``# TYPE`` lines). An engine's ``/metrics`` is
    mostly histograms a lane never reads; parsing all of it in the front end's event
    loop at every scrape would hold up requests."""
    prefixes = tuple(families)
    kept = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith(prefixes):
            kept.append(line)
    return "\n".join(kept) + "\n"


def samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition as (name, labels, value)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, s.labels, float(s.value)


def parse_metrics(text: str) -> dict[str, float]:
    """Each sample name summed over its label sets, plus ``name{source="x"}`` keys for
    the labels in ``KEPT_LABELS`` and ``name:label`` keys for numbers an info metric
    carries in its labels (the KV cache's size in ``vllm:cache_config_info``).

    An engine reports one label set per family (one engine, one model), so summing
    over labels loses nothing a lane reads."""
    out: dict[str, float] = {}
    for name, labels, value in samples(text):
        out[name] = out.get(name, 0.0) + value
        for key in KEPT_LABELS:
            if key in labels:
                full = f'{name}{{{key}="{labels[key]}"}}'
                out[full] = out.get(full, 0.0) + value
        for key in INFO_LABELS.get(name, ()):
            try:
                out[f"{name}:{key}"] = float(labels[key])
            except (KeyError, ValueError):  # "None" before the engine has sized its cache
                pass
    return out


def by_label(text: str, names: Iterable[str], label: str) -> dict[str, dict[int, float]]:
    """``{name: {int(label value): value}}`` for the samples named in ``names`` (the
    front end's per-lane series, keyed by lane)."""
    wanted = set(names)
    out: dict[str, dict[int, float]] = {n: {} for n in wanted}
    for name, labels, value in samples(text):
        if name in wanted and label in labels:
            try:
                out[name][int(labels[label])] = value
            except ValueError:
                continue
    return out


class FrontMetrics:
    """The front end's own metrics (``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.routed = Counter("streamserve_lane_requests", "Requests placed on a lane", ["lane", "role", "phase"], registry=r)
        self.outcomes = Counter("streamserve_requests", "Requests by outcome", ["outcome"], registry=r)
        self.ttft = Histogram("streamserve_ttft_seconds", "Time to first token, as the client saw it",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("streamserve_tpot_seconds", "Time per output token after the first",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("streamserve_e2e_seconds", "Request latency", buckets=LATENCY_BUCKETS, registry=r)
        self.spec_k = Gauge("streamserve_spec_k", "Mean draft length of the lane's last drafts (its k)", ["lane"], registry=r)
        self.healthy = Gauge("streamserve_lane_healthy", "1 if the lane's engine answers", ["lane", "role"], registry=r)
        self.waiting = Gauge("streamserve_lane_waiting", "Engine's waiting requests", ["lane"], registry=r)
        self.running = Gauge("streamserve_lane_running", "Engine's running requests", ["lane"], registry=r)
        self.in_flight = Gauge("streamserve_lane_in_flight", "Requests the front end has on the lane", ["lane"], registry=r)
        self.kv_usage = Gauge("streamserve_lane_kv_usage", "Engine's KV cache usage (0-1)", ["lane"], registry=r)
        self.drafts = Gauge("streamserve_lane_spec_drafts", "Engine's spec-decode drafts so far", ["lane"], registry=r)
        self.draft_tokens = Gauge("streamserve_lane_spec_draft_tokens", "Engine's drafted tokens so far", ["lane"], registry=r)
        self.accepted = Gauge("streamserve_lane_spec_accepted_tokens", "Engine's accepted draft tokens so far", ["lane"], registry=r)
        self.pending = Gauge("streamserve_scheduler_pending", "Requests the scheduler holds on no lane", registry=r)
        self.open = Gauge("streamserve_requests_open", "Client requests admitted and not yet ended", registry=r)

    def lane(self, lane: "LiveLane") -> None:
        key = str(lane.lane_id)
        self.spec_k.labels(key).set(lane.spec_k)
        self.healthy.labels(key, lane.role.value).set(1 if lane.healthy else 0)
        self.waiting.labels(key).set(lane.waiting)
        self.running.labels(key).set(lane.running)
        self.in_flight.labels(key).set(len(lane.in_flight))
        self.kv_usage.labels(key).set(lane.kv_usage)
        self.drafts.labels(key).set(lane.spec.drafts)
        self.draft_tokens.labels(key).set(lane.spec.draft_tokens)
        self.accepted.labels(key).set(lane.spec.accepted)
