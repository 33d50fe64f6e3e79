"""Arrival processes: sorted arrival times in seconds for n requests.

Burstiness is stated as the coefficient of variation (CV) of inter-arrival times:
1 for Poisson, above 1 for bursty traffic. Both bursty generators take the CV directly,
so a sweep over burstiness holds the mean rate fixed and changes only the CV.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate: must be > 0 requests/s, got {rate}")


def poisson(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exponential inter-arrival times at ``rate`` requests per second."""
    _check_rate(rate)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def gamma(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma inter-arrival times with mean ``1/rate`` and coefficient of variation ``cv``.

    A gamma with shape k has CV 1/sqrt(k), so k = 1/cv^2; cv = 1 is Poisson, cv > 1 bursty,
    cv < 1 more regular than Poisson.
    """
    _check_rate(rate)
    if not cv > 0:
        raise ValueError(f"cv: must be > 0, got {cv}")
    shape = 1.0 / (cv * cv)
    return np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=n))


@dataclass(frozen=True)
class MMPP2:
    """A two-state Markov-modulated Poisson process (ON/OFF bursts).

    ON lasts an exponential time of mean ``on_s`` at ``on_rate`` requests/s; OFF lasts
    mean ``off_s`` at ``off_rate``. With ``off_rate = 0`` it is an interrupted Poisson
    process: silent gaps, then bursts.
    """

    on_rate: float
    off_rate: float
    on_s: float
    off_s: float

    def __post_init__(self) -> None:
        if not (self.on_rate > 0 and self.off_rate >= 0 and self.on_s > 0 and self.off_s > 0):
            raise ValueError("onoff: need on_rate > 0, off_rate >= 0, on_s > 0, off_s > 0")

    @property
    def mean_rate(self) -> float:
        return (self.on_rate * self.on_s + self.off_rate * self.off_s) / (self.on_s + self.off_s)

    def scaled(self, factor: float) -> "MMPP2":
        """The same process ``factor`` times faster (rates up, durations down): same CV."""
        return MMPP2(self.on_rate * factor, self.off_rate * factor, self.on_s / factor, self.off_s / factor)

    def cv(self) -> float:
        """CV of the stationary inter-arrival time, exactly (a 2-phase MAP's moments).

        As a Markovian arrival process, D1 = diag(rates) and D0 = Q - D1 with Q the state
        switching generator. An inter-arrival time starting just after an arrival is
        phase-type with initial vector pi D1 / (pi D1 1) and generator D0, so its k-th
        moment is k! a (-D0)^-k 1.
        """
        a01, a10 = 1.0 / self.on_s, 1.0 / self.off_s  # ON->OFF, OFF->ON switching rates
        q = np.array([[-a01, a01], [a10, -a10]])
        d1 = np.diag([self.on_rate, self.off_rate])
        pi = np.array([a10, a01]) / (a01 + a10)
        a = pi @ d1
        a = a / a.sum()
        m = np.linalg.inv(-(q - d1))
        one = np.ones(2)
        m1 = a @ m @ one
        m2 = 2 * a @ m @ m @ one
        return float(np.sqrt(m2 - m1 * m1) / m1)

    @classmethod
    def from_cv(cls, rate: float, cv: float, duty: float = 0.5) -> "MMPP2":
        """The ON/OFF process (silent OFF) with mean ``rate``, inter-arrival CV ``cv`` and
        fraction ``duty`` of time ON.

        For an interrupted Poisson process sending at λ while ON, with ON->OFF rate ω1
        and fraction p of time ON, the squared CV of inter-arrivals is
        1 + 2 λ (1 - p)^2 / ω1 (Kuczura 1973; Fischer & Meier-Hellstern 1993). Solving for ω1
        with λ = rate / p gives the mean ON time 1/ω1.
        """
        _check_rate(rate)
        if not cv > 1:
            raise ValueError(f"cv: an on/off process is burstier than Poisson; need cv > 1, got {cv} "
                             "(use --arrival gamma for cv <= 1)")
        if not 0 < duty < 1:
            raise ValueError(f"duty: fraction of time ON must be in (0, 1), got {duty}")
        lam = rate / duty
        on_s = (cv * cv - 1.0) / (2.0 * lam * (1.0 - duty) ** 2)
        off_s = on_s * (1.0 - duty) / duty
        return cls(on_rate=lam, off_rate=0.0, on_s=on_s, off_s=off_s)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` sorted arrival times, drawn period by period (vectorised).

        Within a period of length d at rate r the count is Poisson(r d) and the times are
        uniform in the period, which is the Poisson process restricted to it.
        """
        out: list[np.ndarray] = []
        got = 0
        t0 = 0.0
        start_on = rng.random() < self.on_s / (self.on_s + self.off_s)  # stationary start
        batch = max(64, int(2 * n / max(self.mean_rate * (self.on_s + self.off_s), 1e-9)) + 64)
        while got < n:
            on = rng.exponential(self.on_s, batch)
            off = rng.exponential(self.off_s, batch)
            first, second = (on, off) if start_on else (off, on)
            r_first, r_second = (self.on_rate, self.off_rate) if start_on else (self.off_rate, self.on_rate)
            dur = np.empty(2 * batch)
            dur[0::2], dur[1::2] = first, second
            rates = np.empty(2 * batch)
            rates[0::2], rates[1::2] = r_first, r_second
            starts = t0 + np.concatenate(([0.0], np.cumsum(dur)[:-1]))
            counts = rng.poisson(rates * dur)
            total = int(counts.sum())
            times = np.repeat(starts, counts) + rng.random(total) * np.repeat(dur, counts)
            out.append(np.sort(times))
            got += total
            t0 = float(starts[-1] + dur[-1])
        return np.concatenate(out)[:n]


def onoff(n: int, process: MMPP2, rng: np.random.Generator) -> np.ndarray:
    return process.sample(n, rng)


def cv_of(arrivals: np.ndarray) -> float:
    """Measured coefficient of variation of the inter-arrival times."""
    gaps = np.diff(arrivals)
    return float(np.std(gaps) / np.mean(gaps))
