"""``plan``: which placement of a model on a GPU budget gives the most goodput per GPU.

A placement is colocated lanes (``n`` engines of TP ``t``, prefill and decode sharing
each) or disaggregated ones (``p`` prefill lanes of TP ``tp_p`` and ``d`` decode lanes
of TP ``tp_d``, the decode lane for a request picked freely or, with as many prefill as
decode lanes, kept to its stream-pair partner). Every placement whose lanes fit the
model's weights and one request's KV cache, within the GPU budget, is tried; the
budget's unused GPUs are simply not counted, so a smaller placement competes on
goodput per GPU.

Goodput is DistServe's: the highest request rate at which at least ``attainment`` of
the requests meet both TTFT and TPOT SLOs. Attainment falls as the rate rises, so the
rate is found by doubling until the target is missed and then bisecting, to a relative
tolerance. One placement's search is one task (``max_rate``), run by the same runners
as ``tune``'s trials.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from streamserve.config import ClusterConfig, LaneConfig, PolicyConfig
from streamserve.perfmodel import LanePerf, Profile, ProfileError
from streamserve.tuning.errors import TuningError
from streamserve.tuning.evaluate import RunTask, WorkloadArgs, evaluate_run


def lane_perfs(model: str, gpu: str, profile: str | None, max_tp: int, role: str = "decode") -> dict[int, LanePerf]:
    """The performance model of a ``role`` lane of ``model`` on ``gpu`` at every
    power-of-two tensor-parallel size up to ``max_tp``: the one place ``plan`` reads the
    performance model. A fitted profile's entry wins where it has one (the shipped
    profile when ``profile`` is None); every other size comes from the roofline over the
    model and GPU specs, so any listed model and GPU can be planned without a profile.
    Whether a size fits the model's memory is ``fitting_tps``'s question, not this one's."""
    prof = Profile.load(profile)
    tps = [1 << i for i in range(max_tp.bit_length()) if 1 << i <= max_tp]
    try:
        return {tp: prof.lane(model, gpu, tp, role=role) for tp in tps}
    except ProfileError as e:
        raise TuningError(f"--model/--gpu: {e}") from None


@dataclass(frozen=True)
class Placement:
    colocated: bool
    prefill: int  # lanes: prefill lanes, or all lanes when colocated
    prefill_tp: int
    decode: int = 0
    decode_tp: int = 0
    paired: bool = False

    @property
    def gpus(self) -> int:
        return self.prefill * self.prefill_tp + self.decode * self.decode_tp

    @property
    def name(self) -> str:
        if self.colocated:
            return f"{self.prefill} colocated x TP{self.prefill_tp}"
        return (f"{self.prefill}P x TP{self.prefill_tp} + {self.decode}D x TP{self.decode_tp}"
                + (", pairs" if self.paired else ""))

    def cluster(self, base: ClusterConfig) -> ClusterConfig:
        """``base`` (policies, engine, link, speculation) on this placement's lanes."""
        if self.colocated:
            lanes = [LaneConfig(role="colocated", tp=self.prefill_tp, replicas=self.prefill)]
        elif self.paired:
            lanes = [LaneConfig.model_validate({"role": role, "tp": tp, "pair": i}) for i in range(self.prefill)
                     for role, tp in (("prefill", self.prefill_tp), ("decode", self.decode_tp))]
        else:
            lanes = [LaneConfig(role="prefill", tp=self.prefill_tp, replicas=self.prefill),
                     LaneConfig(role="decode", tp=self.decode_tp, replicas=self.decode)]
        update: dict[str, Any] = {"lanes": lanes, "name": self.name, "faults": []}
        if base.scheduler.name == "stream":
            update["scheduler"] = PolicyConfig.model_validate(
                {**base.scheduler.model_dump(), "pairing": "pairs" if self.paired else "independent"})
        return base.model_copy(update=update)


def placements(budget: int, tps: list[int]) -> list[Placement]:
    """Every placement of lanes with TP sizes from ``tps`` on at most ``budget`` GPUs."""
    out = [Placement(True, n, tp) for tp in tps for n in range(1, budget // tp + 1)]
    for tp_p in tps:
        for tp_d in tps:
            for p in range(1, budget // tp_p + 1):
                for d in range(1, (budget - p * tp_p) // tp_d + 1):
                    out.append(Placement(False, p, tp_p, d, tp_d))
                    if p == d >= 2:
                        out.append(Placement(False, p, tp_p, d, tp_d, paired=True))
    return out


def fitting_tps(perfs: dict[int, LanePerf], memory_utilization: float, max_tokens: int) -> list[int]:
    """TP sizes whose GPUs hold the weights and the KV cache of one whole request."""
    out = []
    for tp, perf in perfs.items():
        try:
            if perf.kv_capacity_tokens(memory_utilization) >= max_tokens:
                out.append(tp)
        except ProfileError:
            pass
    return out


@dataclass(frozen=True)
class PlanTask:
    placement: Placement
    cluster: dict[str, Any]
    workload: WorkloadArgs
    seeds: tuple[int, ...]
    slo: tuple[float | None, float | None]
    attainment: float
    tolerance: float = 0.02
    start_rate: float = 1.0  # requests/s per GPU, the first rate tried


@dataclass(frozen=True)
class PlanResult:
    placement: Placement
    max_rate: float  # 0.0: the target is missed at every rate tried
    attainment_at_max: float
    runs: int
    error: str | None = None

    @property
    def per_gpu(self) -> float:
        return self.max_rate / self.placement.gpus


MIN_RATE = 1e-3  # requests/s: below this a placement "meets the SLO at no rate"
MAX_RATE = 1e6  # requests/s: a runaway doubling stops here


def max_rate(task: PlanTask) -> PlanResult:
    """The highest rate meeting the attainment target (doubling, then bisection)."""
    runs = 0

    def attainment(rate: float) -> float:
        nonlocal runs
        vals = []
        for seed in task.seeds:
            r = evaluate_run(RunTask(task.cluster, task.workload, seed, task.slo, ("attainment",), rate=rate))
            runs += 1
            if r.error:
                raise TuningError(r.error)
            vals.append(r.values["attainment"])
        return sum(vals) / len(vals)

    try:
        rate = task.start_rate * task.placement.gpus
        a = attainment(rate)
        lo, a_lo, hi = (rate, a, rate * 2) if a >= task.attainment else (0.0, 0.0, rate)
        while lo > 0 and hi < MAX_RATE and (a := attainment(hi)) >= task.attainment:  # grow until missed
            lo, a_lo, hi = hi, a, hi * 2
        while lo == 0 and hi > MIN_RATE:  # or shrink until it is met
            hi /= 2
            if (a := attainment(hi)) >= task.attainment:
                lo, a_lo, hi = hi, a, hi * 2
        while lo > 0 and hi - lo > task.tolerance * hi:
            mid = (lo + hi) / 2
            if (a := attainment(mid)) >= task.attainment:
                lo, a_lo = mid, a
            else:
                hi = mid
    except TuningError as e:
        return PlanResult(task.placement, 0.0, 0.0, runs, str(e))
    return PlanResult(task.placement, lo, a_lo, runs)


def rank(results: list[PlanResult]) -> list[PlanResult]:
    """Best first: goodput per GPU, then fewer GPUs, then the name (a stable order)."""
    return sorted(results, key=lambda r: (-r.per_gpu, r.placement.gpus, r.placement.name))


def run_plan(base: ClusterConfig, budget: int, workload: WorkloadArgs, seeds: tuple[int, ...], slo: Any,
             attainment: float, tolerance: float = 0.02, workers: int = 1, ray_address: str | None = None,
             progress: bool = False) -> list[PlanResult]:
    """Every placement in the budget, each with its highest rate, best first."""
    from streamserve.tuning.runners import make_runner

    wl = workload.build(seeds[0])
    longest = int((wl.prompt_len + wl.output_len).max())
    mem = base.engine.gpu_memory_utilization
    tps = fitting_tps(lane_perfs(base.model, base.gpu, base.profile, budget), mem, longest)
    if not tps:
        bigger = fitting_tps(lane_perfs(base.model, base.gpu, base.profile, 1 << 10), mem, longest)
        need = f"needs TP {min(bigger)}" if bigger else "fits no TP size the performance model knows"
        raise TuningError(f"--gpus {budget}: {base.model} does not fit on {budget} x {base.gpu} with the KV cache "
                          f"of a {longest}-token request at gpu_memory_utilization {mem} ({need})")
    tasks = [PlanTask(p, p.cluster(base).model_dump(), workload, seeds, (slo.ttft, slo.tpot), attainment, tolerance)
             for p in placements(budget, tps)]
    runner = make_runner(workers, ray_address)
    try:
        results: Iterable[PlanResult] = runner.imap(max_rate, tasks)
        if progress:
            from rich.console import Console
            from rich.progress import track

            results = track(results, total=len(tasks), description="plan", console=Console(stderr=True))
        return rank(list(results))
    finally:
        runner.close()
