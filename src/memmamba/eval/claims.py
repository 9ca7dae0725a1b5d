"""Verdicts on the paper's claims, computed from result files by rules stated beside them.

Each claim of the paper that our evaluations can test gets one :class:`Verdict`: ``holds``,
``does not hold``, or ``not testable here`` (a result is missing, or the models cannot do the
task at all at this scale, so a comparison would only compare noise). Results are grouped by
model family (``memmamba``, ``mamba``, ``decimamba``, ``transformer``: ``describe_model``'s
``family``); when a
family has several results for one task, the last one read wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HOLDS = "holds"
FAILS = "does not hold"
UNTESTABLE = "not testable here"

FLAT_GROWTH = 1.10
"""Perplexity is "flat" when its value at the longest length is within 10% of its best."""
BLOWUP_GROWTH = 1.5
"""Perplexity "degrades" when its value at the longest length is 1.5x its best or more."""
PASSKEY_SOLVED = 0.8
"""A passkey length counts as solved at this accuracy or above."""
CHANCE_FACTOR = 2.0
"""Document retrieval is tested only where some model reaches this multiple of chance."""
LABELS = {
    "memmamba": "MemMamba",
    "mamba": "Mamba",
    "decimamba": "DeciMamba",
    "transformer": "Transformer",
}
"""How verdicts name each model family."""
LATENCY_RATIO = 0.52
"""The paper's text: MemMamba's latency is 0.52x the Transformer's (its figure gives 0.49)."""


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, the rule applied to our results, and the outcome."""

    claim: str
    source: str
    rule: str
    verdict: str
    evidence: str


def family_of(result: dict[str, Any]) -> str:
    """The model family of a result file (older files without one: from the class name)."""
    model = result.get("model", {})
    if model.get("family"):
        return str(model["family"])
    cls = str(model.get("class", "")).lower()
    if "memmamba" in cls:
        return "memmamba"
    if "decimamba" in cls:
        return "decimamba"
    return "mamba" if "mamba" in cls else "transformer"


def _by_family(results: list[dict[str, Any]], task: str) -> dict[str, dict[str, Any]]:
    return {family_of(r): r for r in results if r.get("task") == task}


def _series(result: dict[str, Any], key: str, value: str) -> dict[int, float]:
    """``{x: y}`` from the result's ``per_length``/``per_noise`` rows (missing values dropped)."""
    rows = result.get("per_length") or result.get("per_noise") or []
    return {int(r[key]): float(r[value]) for r in rows if r.get(value) is not None}


def _pair(
    results: list[dict[str, Any]], task: str, rival: str, key: str, value: str
) -> tuple[dict[int, float], dict[int, float]] | None:
    """MemMamba's and the rival family's ``{x: y}`` series for ``task`` (None: one is missing)."""
    found = _by_family(results, task)
    if "memmamba" not in found or rival not in found:
        return None
    return _series(found["memmamba"], key, value), _series(found[rival], key, value)


def _growth(series: dict[int, float]) -> tuple[int, float]:
    """The longest length and its value over the best value of the series."""
    longest = max(series)
    return longest, series[longest] / min(series.values())


def _fmt_series(series: dict[int, float], digits: int = 2) -> str:
    return ", ".join(f"{k}: {v:.{digits}f}" for k, v in sorted(series.items()))


def _missing(claim: str, source: str, rule: str, needed: str) -> Verdict:
    return Verdict(claim, source, rule, UNTESTABLE, f"no {needed} results")


# -- the claims ---------------------------------------------------------------------------------
def _ppl_growth(
    family: str, claim: str, limit: float, flat: bool
) -> Callable[[list[dict[str, Any]]], Verdict]:
    """PPL at the longest length over the best PPL: ``<= limit`` (``flat``) or ``>= limit``."""
    label = LABELS[family]
    source = "Table 1"
    rule = f"{label}'s PPL at the longest length {'<=' if flat else '>='} {limit:.2f}x its best"

    def judge(results: list[dict[str, Any]]) -> Verdict:
        result = _by_family(results, "ppl").get(family)
        if result is None:
            return _missing(claim, source, rule, f"{label} perplexity")
        series = _series(result, "length", "ppl")
        longest, growth = _growth(series)
        verdict = HOLDS if (growth <= limit if flat else growth >= limit) else FAILS
        evidence = f"{growth:.2f}x at {longest}; {_fmt_series(series)}"
        return Verdict(claim, source, rule, verdict, evidence)

    return judge


def _ppl_beats(rival: str, claim: str, source: str) -> Callable[[list[dict[str, Any]]], Verdict]:
    def judge(results: list[dict[str, Any]]) -> Verdict:
        rule = f"MemMamba's PPL < {LABELS[rival]}'s at every length both were evaluated at"
        pair = _pair(results, "ppl", rival, "length", "ppl")
        if pair is None:
            return _missing(claim, source, rule, f"MemMamba and {LABELS[rival]} perplexity")
        mem, other = pair
        common = sorted(set(mem) & set(other))
        if not common:
            return Verdict(claim, source, rule, UNTESTABLE, "no length evaluated for both")
        ratios = {n: mem[n] / other[n] for n in common}
        verdict = HOLDS if all(r < 1 for r in ratios.values()) else FAILS
        evidence = f"MemMamba / {LABELS[rival]} PPL: " + _fmt_series(ratios, 3)
        return Verdict(claim, source, rule, verdict, evidence)

    return judge


def _longest_solved(series: dict[int, float]) -> int:
    solved = [n for n, acc in series.items() if acc >= PASSKEY_SOLVED]
    return max(solved, default=0)


def _passkey(results: list[dict[str, Any]]) -> Verdict:
    claim = "MemMamba retrieves a passkey at lengths where Mamba fails (to 400K)"
    source = "Table 2"
    rule = (
        f"longest length with accuracy >= {PASSKEY_SOLVED:.1f}: MemMamba's > Mamba's; not "
        "testable when neither model solves any length"
    )
    pair = _pair(results, "passkey", "mamba", "length", "accuracy")
    if pair is None:
        return _missing(claim, source, rule, "MemMamba and Mamba passkey")
    mem, mamba = pair
    reach_mem, reach_mamba = _longest_solved(mem), _longest_solved(mamba)
    evidence = f"MemMamba {_fmt_series(mem)}; Mamba {_fmt_series(mamba)}"
    if not reach_mem and not reach_mamba:
        return Verdict(
            claim, source, rule, UNTESTABLE, "neither model solves any length: " + evidence
        )
    verdict = HOLDS if reach_mem > reach_mamba else FAILS
    return Verdict(claim, source, rule, verdict, evidence)


def _docret(results: list[dict[str, Any]]) -> Verdict:
    claim = "MemMamba retrieves documents better than Mamba as noise documents are added"
    source = "Table 3"
    rule = (
        "MemMamba's accuracy >= Mamba's at the most noise documents and on average; not testable "
        f"unless some model reaches {CHANCE_FACTOR:.0f}x chance (1 / (noise + 1)) somewhere"
    )
    pair = _pair(results, "docret", "mamba", "noise_docs", "accuracy")
    if pair is None:
        return _missing(claim, source, rule, "MemMamba and Mamba document-retrieval")
    mem, mamba = pair
    common = sorted(set(mem) & set(mamba))
    evidence = f"MemMamba {_fmt_series(mem)}; Mamba {_fmt_series(mamba)}"
    above_chance = any(max(mem[n], mamba[n]) >= CHANCE_FACTOR / (n + 1) for n in common)
    if not common or not above_chance:
        return Verdict(claim, source, rule, UNTESTABLE, "both at chance: " + evidence)
    most = common[-1]
    mean_mem = sum(mem[n] for n in common) / len(common)
    mean_mamba = sum(mamba[n] for n in common) / len(common)
    verdict = HOLDS if mem[most] >= mamba[most] and mean_mem >= mean_mamba else FAILS
    return Verdict(claim, source, rule, verdict, evidence)


def _fidelity(results: list[dict[str, Any]]) -> Verdict:
    claim = "MemMamba keeps more token and cross-layer information than Mamba (ETMF, ECLMF)"
    source = "Fig. 4"
    rule = "MemMamba's ETMF and ECLMF (smallest gap) > Mamba's at every length"
    found = _by_family(results, "fidelity")
    if "memmamba" not in found or "mamba" not in found:
        return _missing(claim, source, rule, "MemMamba and Mamba fidelity")
    gap = min(found["memmamba"]["protocol"]["gaps"])
    key = f"eclmf_g{gap}"
    parts, wins = [], []
    for metric in ("etmf", key):
        mem = _series(found["memmamba"], "length", metric)
        mamba = _series(found["mamba"], "length", metric)
        common = sorted(set(mem) & set(mamba))
        wins += [mem[n] > mamba[n] for n in common]
        parts.append(
            f"{metric.upper()}: "
            + ", ".join(f"{n}: {mem[n]:.3f} vs {mamba[n]:.3f}" for n in common)
        )
    if not wins:
        return Verdict(claim, source, rule, UNTESTABLE, "no length evaluated for both")
    return Verdict(claim, source, rule, HOLDS if all(wins) else FAILS, "; ".join(parts))


def _latency(results: list[dict[str, Any]]) -> Verdict:
    claim = "MemMamba's end-to-end latency is about half a Transformer's"
    source = "section 5.2, Fig. 3"
    rule = f"MemMamba / Transformer latency <= {LATENCY_RATIO} at the longest common length"
    pair = _pair(results, "latency", "transformer", "length", "ms")
    if pair is None:
        return _missing(claim, source, rule, "MemMamba and Transformer latency")
    mem, other = pair
    common = sorted(set(mem) & set(other))
    if not common:
        return Verdict(claim, source, rule, UNTESTABLE, "no length measured for both")
    ratios = {n: mem[n] / other[n] for n in common}
    verdict = HOLDS if ratios[common[-1]] <= LATENCY_RATIO else FAILS
    return Verdict(claim, source, rule, verdict, "MemMamba / Transformer: " + _fmt_series(ratios))


CLAIMS: tuple[Callable[[list[dict[str, Any]]], Verdict], ...] = (
    _ppl_growth(
        "memmamba",
        "MemMamba's perplexity stays flat as the context grows (to 60K)",
        FLAT_GROWTH,
        True,
    ),
    _ppl_growth(
        "mamba",
        "Mamba's perplexity degrades far beyond its training length (INF from 30K)",
        BLOWUP_GROWTH,
        False,
    ),
    _ppl_beats("mamba", "MemMamba has lower perplexity than Mamba at every length", "Table 1"),
    _ppl_beats(
        "decimamba", "MemMamba has lower perplexity than DeciMamba at every length", "Table 1"
    ),
    _ppl_beats(
        "transformer",
        "MemMamba has lower perplexity than a Transformer",
        "section 1, Table 1",
    ),
    _passkey,
    _docret,
    _fidelity,
    _latency,
)


def judge_claims(results: list[dict[str, Any]]) -> list[Verdict]:
    """One verdict per claim of :data:`CLAIMS`, from the given result dicts."""
    return [claim(results) for claim in CLAIMS]


__all__ = ["CLAIMS", "FAILS", "HOLDS", "UNTESTABLE", "Verdict", "family_of", "judge_claims"]
