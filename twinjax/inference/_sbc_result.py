"""[`SBCResult`][]: ranks of simulation-based calibration, their histograms and chi-square test.

With n replications and L draws per replication each rank lies in ``{0, ..., L}``. Under correct
inference the ranks are uniform, so the counts in B bins of consecutive ranks follow a
multinomial with probabilities ``(ranks in bin) / (L + 1)``; Pearson's statistic
``sum (observed - expected)^2 / expected`` is then approximately chi-square with B - 1 degrees of
freedom (Talts et al. 2018, arXiv:1804.06788, section 4.1). The approximation needs every expected
count to be at least 5 (Cochran's rule), so B is the largest number of bins, at most `max_bins`
(20, as in Talts et al.) and at most L + 1, whose smallest bin expects at least 5 replications:
20 bins for 100 replications and L + 1 = 20 or 40 ranks, 20 bins for 500 replications.

Several quantities are tested at once. The verdict is "uniform" when every p-value exceeds
``alpha / (number of quantities)`` (Bonferroni: the chance that a correct method fails is at
most `alpha`); per-quantity p-values are reported as well.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import scipy.stats

from .._errors import InputError

__all__ = ["SBCResult", "rank_bins"]


def rank_bins(n: int, num_draws: int, max_bins: int = 20) -> np.ndarray:
    """Edges of the chi-square bins for `n` replications with ranks in ``{0, ..., num_draws}``:
    ``edges[b] <= rank < edges[b + 1]`` (see module docs)."""
    n_ranks = num_draws + 1
    for b in range(min(max_bins, n_ranks), 0, -1):
        edges = np.round(np.linspace(0, n_ranks, b + 1)).astype(int)
        if n * np.diff(edges).min() / n_ranks >= 5.0:
            return edges
    return np.array([0, n_ranks])


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """Ranks per quantity (``(n,)`` integers in ``0..num_draws``), the true values, the effective
    sample size of each replication's thinned draws, post-warm-up divergences, leapfrog steps
    ``(n, 2)`` (warm-up, sampling: the cost) and whether the simulation succeeded, per
    replication (index `replication`)."""

    quantities: tuple[str, ...]
    num_draws: int
    replication: np.ndarray
    ranks: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    ess: dict[str, np.ndarray]
    divergences: np.ndarray
    leapfrog_steps: np.ndarray
    simulation_ok: np.ndarray
    settings: dict
    alpha: float = 0.01
    max_bins: int = 20

    @property
    def n(self) -> int:
        """Replications that count: those whose simulated data are valid."""
        return int(np.sum(self.simulation_ok))

    def bins(self) -> np.ndarray:
        return rank_bins(self.n, self.num_draws, self.max_bins)

    def counts(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """Observed and expected replications per bin."""
        if quantity not in self.ranks:
            raise InputError(f"quantity = {quantity!r}; known: {list(self.quantities)}")
        edges = self.bins()
        r = self.ranks[quantity][self.simulation_ok]
        observed = np.histogram(r, bins=edges)[0]
        expected = self.n * np.diff(edges) / (self.num_draws + 1)
        return observed, expected

    def chi_square(self, quantity: str) -> tuple[float, float]:
        """Pearson's statistic of the rank histogram of `quantity` and its p-value."""
        observed, expected = self.counts(quantity)
        if len(observed) < 2:
            return 0.0, 1.0
        stat = float(np.sum((observed - expected) ** 2 / expected))
        return stat, float(scipy.stats.chi2.sf(stat, len(observed) - 1))

    @property
    def p_values(self) -> dict[str, float]:
        return {q: self.chi_square(q)[1] for q in self.quantities}

    @property
    def threshold(self) -> float:
        """Per-quantity level of the verdict (Bonferroni)."""
        return self.alpha / len(self.quantities)

    @property
    def verdict(self) -> str:
        ok = all(p > self.threshold for p in self.p_values.values())
        return "uniform" if ok else "not uniform"

    def table(self) -> str:
        edges = self.bins()
        rows = [
            f"{self.n} replications ({int(np.sum(~self.simulation_ok))} failed simulations), "
            f"L = {self.num_draws} draws, {len(edges) - 1} bins; verdict: {self.verdict} "
            f"(Bonferroni: every p > {self.alpha:g}/{len(self.quantities)})",
            f"  {'quantity':<24}{'chi2':>8}{'df':>4}{'p':>10}  {'ESS/L':>6}",
        ]
        for q in self.quantities:
            stat, p = self.chi_square(q)
            ess = float(np.median(self.ess[q][self.simulation_ok])) / self.num_draws
            flag = "" if p > self.threshold else "  NOT UNIFORM"
            rows.append(f"  {q:<24}{stat:8.2f}{len(edges) - 2:4d}{p:10.4f}  {ess:6.2f}{flag}")
        rows.append(
            f"  divergent transitions: {int(self.divergences.sum())} in "
            f"{int(np.sum(self.divergences > 0))} replications; leapfrog steps per iteration "
            f"{self.leapfrog_steps[:, 1].mean() / self._iterations:.1f} (sampling)"
        )
        return "\n".join(rows)

    @property
    def _iterations(self) -> int:
        """Post-warm-up iterations actually run: L thinned draws of `thin` iterations each."""
        return self.num_draws * int(self.settings.get("thin", 1))

    def histogram(self, quantity: str, width: int = 40) -> str:
        """ASCII rank histogram of `quantity`: one row per bin, '|' marks the expected count."""
        observed, expected = self.counts(quantity)
        edges = self.bins()
        top = max(observed.max(initial=0), expected.max())
        scale = width / top if top > 0 else 1.0
        rows = [f"{quantity}: ranks 0..{self.num_draws}, p = {self.chi_square(quantity)[1]:.4f}"]
        for lo, hi, o, e in zip(edges[:-1], edges[1:], observed, expected, strict=True):
            n_hash = round(float(o) * scale)
            bar = list("#" * n_hash + " " * (width + 1 - n_hash))
            bar[min(round(float(e) * scale), width)] = "|"
            rows.append(f"  {lo:4d}-{hi - 1:<4d} {o:4d} {''.join(bar).rstrip()}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        """JSON-ready content (see [`from_dict`][])."""
        return dict(
            quantities=list(self.quantities),
            num_draws=self.num_draws,
            replication=self.replication.tolist(),
            ranks={q: v.tolist() for q, v in self.ranks.items()},
            truth={q: v.tolist() for q, v in self.truth.items()},
            ess={q: v.tolist() for q, v in self.ess.items()},
            divergences=self.divergences.tolist(),
            leapfrog_steps=self.leapfrog_steps.tolist(),
            simulation_ok=self.simulation_ok.tolist(),
            settings=self.settings,
            alpha=self.alpha,
            max_bins=self.max_bins,
        )

    @classmethod
    def from_dict(cls, d: dict) -> SBCResult:
        arr = {q: np.asarray(v) for q, v in d["ranks"].items()}
        return cls(
            quantities=tuple(d["quantities"]),
            num_draws=int(d["num_draws"]),
            replication=np.asarray(d["replication"], dtype=int),
            ranks={q: v.astype(int) for q, v in arr.items()},
            truth={q: np.asarray(v, dtype=float) for q, v in d["truth"].items()},
            ess={q: np.asarray(v, dtype=float) for q, v in d["ess"].items()},
            divergences=np.asarray(d["divergences"], dtype=int),
            leapfrog_steps=np.asarray(d["leapfrog_steps"], dtype=int).reshape(-1, 2),
            simulation_ok=np.asarray(d["simulation_ok"], dtype=bool),
            settings=d["settings"],
            alpha=float(d["alpha"]),
            max_bins=int(d["max_bins"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def concatenate(cls, parts: Sequence[SBCResult]) -> SBCResult:
        """Join chunks of one study (same settings, disjoint replications), sorted by index."""
        if not parts:
            raise InputError("no SBC results to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.settings != first.settings or p.quantities != first.quantities:
                raise InputError(
                    "SBC chunks differ in their settings; only chunks of one study (same "
                    "template, design, noise, seed and sampler settings) can be joined"
                )
            if p.num_draws != first.num_draws:
                raise InputError("SBC chunks differ in the number of draws")
        index = np.concatenate([p.replication for p in parts])
        if len(np.unique(index)) != len(index):
            raise InputError("SBC chunks overlap: a replication appears twice")
        order = np.argsort(index)

        def cat(get):
            return np.concatenate([get(p) for p in parts])[order]

        return cls(
            quantities=first.quantities,
            num_draws=first.num_draws,
            replication=index[order],
            ranks={q: cat(lambda p, q=q: p.ranks[q]) for q in first.quantities},
            truth={q: cat(lambda p, q=q: p.truth[q]) for q in first.quantities},
            ess={q: cat(lambda p, q=q: p.ess[q]) for q in first.quantities},
            divergences=cat(lambda p: p.divergences),
            leapfrog_steps=cat(lambda p: p.leapfrog_steps),
            simulation_ok=cat(lambda p: p.simulation_ok),
            settings=first.settings,
            alpha=first.alpha,
            max_bins=first.max_bins,
        )
