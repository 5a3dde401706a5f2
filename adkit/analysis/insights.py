"""From attention records to numbers, the original toolkit's insight report, and a check of it.

* :func:`layer_stats`: per layer and sample, the original metrics (exact names, on the
  head-averaged pattern as the original computed them) plus normalised entropy, mean
  attention distance, sink mass and rewarded mass (:mod:`adkit.analysis.metrics`).
* :func:`recommend`: a compressor per layer by the original rules, with the numbers
  behind it. The entropy rules use the length-aware normalised entropy (entropy over
  ``ln n_context``, :func:`adkit.analysis.metrics.normalized_entropy`) instead of the original
  fixed 1.5 / 2.0 nats, which mean different things at different context lengths
  (uniform attention over 19 keys has 2.94 nats, over 79 keys 4.37).
* :func:`budget_coverage`: per layer and budget K, how much of the query's attention (and of its
  mass on the task's information) K transitions hold when kept by recency, by each query's own
  top K, or at random: what the recommended budget means at the budgets a study compresses to.
* :func:`report`: the original console report (``ANALYZING LAYER 0`` ...).
* :func:`ablation_check`: what the original never checks: does dropping the
  most-attended transitions move the model's action more than dropping random ones,
  and does attention rank-correlate with leave-one-out importance?
* :func:`analyze_run`: all of it for a run, written to ``RUN/attention/insights.md`` and
  ``insights.json``.

Compressors are named by their :mod:`adkit.compress` class and registry names
(strings), so this module does not import it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adkit.analysis.attention import AttentionRecord, load_record
from adkit.analysis.metrics import (
    attention_rollout,
    batched_attention_stats,
    episode_mass,
    event_mass,
    head_profile,
    information_events,
    mean_attention_distance,
    normalized_entropy,
    rewarded_mass,
    sink_mass,
)
from adkit.data.tokens import Tokens
from adkit.io import write_text
from adkit.model.checkpoint import load as load_model
from adkit.run import Run

RECENCY_RATIO = 2.0  # the original: recent/distant above this is "strong recency bias"
SPREAD_RATIO = 1.2  # the original: recent/distant below this is "spread across history"
UNIFORM_ENTROPY = 0.85  # normalised entropy above this: near-uniform attention (the original: > 2.0 nats)
PEAKED_ENTROPY = 0.5  # normalised entropy below this: peaked attention (the original: < 1.5 nats)
MASS_TARGET = 0.9  # share of the mean query row's context mass a suggested budget keeps
RHO_PREDICTIVE = 0.3  # Spearman(attention, leave-one-out importance) above this: attention ranks importance
LIFT_PREDICTIVE = 1.5  # KL(drop top-k) / KL(drop random k) above this: attention picks what matters
COMPRESSORS = {  # adkit.compress class name -> registry name
    "RecencyCompressor": "recency", "UniformCompressor": "uniform", "AttentionBasedCompressor": "attention",
    "AdaptiveCompressor": "adaptive", "ThresholdCompressor": "threshold",
    "ExponentialDecayCompressor": "exponential",
}
INSIGHTS = {  # the original toolkit's insight lines
    "recency": ("Strong recency bias detected!", "Consider compressing or removing distant history."),
    "spread": ("Attention is spread across history!", "Compression may need to preserve diverse context."),
    "uniform": ("High attention entropy (uniform distribution)!",
                "Model attends broadly to context. Be careful with compression."),
    "peaked": ("Low attention entropy (focused attention)!",
               "Model has clear attention preferences. Good for compression."),
    "mixed": ("Moderate attention entropy (mixed pattern)!",
              "Some transitions matter more than others; an adaptive strategy fits."),
}
ENTROPY_NOTE = (f"Entropy rules use the normalised entropy H / ln(n_context) in [0, 1] (uniform above "
                f"{UNIFORM_ENTROPY}, peaked below {PEAKED_ENTROPY}), not the original fixed 2.0 / 1.5 nats: "
                "raw entropy grows with the context length (uniform attention over 19 keys has 2.94 nats, "
                "over 79 keys 4.37), so fixed thresholds call the same pattern uniform at one length and "
                "peaked at another.")


# ---- statistics ------------------------------------------------------------------------------------


def layer_stats(record: AttentionRecord) -> dict[int, dict[str, np.ndarray]]:
    """Per loaded layer, metrics of every sample's head-averaged query row, each of shape (B,).

    The original's ``STAT_KEYS`` plus ``normalized_entropy``, ``mean_attention_distance``
    (steps back), ``sink_mass``, ``rewarded_mass`` (on transitions with reward > 0) and,
    for each kind of :func:`information_events` (``reward``; Key-to-Door's ``key`` and
    ``door``), ``{kind}_mass`` and ``{kind}_share`` (the share of context transitions of that kind).
    """
    out = {}
    rewards = record.tokens["rewards"][:, :-1]  # (B, T-1): one per context key
    events = information_events(record.meta["env"], rewards, record.tokens["step"][:, :-1])  # kind -> (B, T-1)
    for layer in record.layers:
        pattern = record.head_mean(layer)  # (B, T, T)
        rows = pattern[:, -1]  # (B, T) query rows
        stats = batched_attention_stats(pattern)
        stats.update(normalized_entropy=normalized_entropy(rows), mean_attention_distance=mean_attention_distance(rows),
                     sink_mass=sink_mass(rows), rewarded_mass=rewarded_mass(rows, rewards))
        for kind, mask in events.items():
            stats[f"{kind}_mass"], stats[f"{kind}_share"] = event_mass(rows, mask), mask.mean(-1)
        out[layer] = stats
    return out


def information_table(stats: dict[int, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Per layer and kind of task information: its share of the context, the query's attention
    mass on it (means over samples) and their ratio (lift: 1 is what a uniform row gives)."""
    rows = []
    for layer, s in stats.items():
        for kind in [k.removesuffix("_share") for k in s if k.endswith("_share")]:
            share, mass = float(s[f"{kind}_share"].mean()), float(s[f"{kind}_mass"].mean())
            rows.append({"layer": layer, "transitions": kind, "share of context": round(share, 4),
                         "attention mass": round(mass, 4), "lift": round(mass / share, 2) if share else float("nan")})
    return pd.DataFrame(rows)


def episode_profile(record: AttentionRecord) -> np.ndarray:
    """Mean query-row mass per episode back from the query, per layer: (layers, E).

    Column 0 is the query's own (current) episode, column e the episode e before it;
    heads averaged, the query key excluded, samples averaged (a sample whose context
    does not reach e episodes back counts 0 there).
    """
    episode = record.tokens["episode"]  # (B, T)
    back = episode[:, -1:] - episode[:, :-1]  # (B, T-1) episodes back of each context key
    E = int(back.max()) + 1
    rows = np.stack([record.head_mean(layer)[:, -1] for layer in record.layers], 1)  # (B, layers, T)
    profile = np.zeros((len(record.layers), E))
    for b in range(record.n_samples):
        mass = episode_mass(rows[b], back[b])  # (layers, E_b), oldest (most episodes back) first
        profile[:, : mass.shape[1]] += mass[:, ::-1]
    return profile / record.n_samples


def budget_coverage(record: AttentionRecord, budgets: Sequence[int]) -> pd.DataFrame:
    """Per layer and budget K (of the ``n`` context transitions), the share of the query rows' context
    mass that K transitions hold, over all of it (``kind`` ``all``) and over its mass on each kind of
    task information (:func:`adkit.analysis.metrics.information_events`), kept as: ``recency``, the
    last K; ``top-k``, each query's K most attended (what re-encoding by attention keeps); ``random``,
    the expectation K / n. Sums over samples before the ratio. Columns: layer, budget, keep, kind, share."""
    n = record.seq_len - 1
    kinds = {"all": np.ones((record.n_samples, n), bool),
             **information_events(record.meta["env"], record.tokens["rewards"][:, :-1], record.tokens["step"][:, :-1])}
    rows = []
    for layer in record.layers:
        context = record.head_mean(layer)[:, -1, :-1]  # (B, n) query rows over the context
        order = np.argsort(-context, axis=1, kind="stable")  # (B, n) most attended first
        for k in sorted({min(int(b), n) for b in budgets}, reverse=True):
            top = np.zeros_like(context, dtype=bool)
            np.put_along_axis(top, order[:, :k], True, axis=1)  # (B, n) each query's top k
            recent = np.zeros_like(top)
            recent[:, n - k:] = True
            for kind, mask in kinds.items():
                on = context * mask  # (B, n) mass on this kind
                total = on.sum()
                for keep, kept in (("recency", recent), ("top-k", top)):
                    share = float((on * kept).sum() / total) if total > 0 else float("nan")
                    rows.append({"layer": layer, "budget": k, "keep": keep, "kind": kind, "share": share})
                rows.append({"layer": layer, "budget": k, "keep": "random", "kind": kind,
                             "share": k / n if total > 0 else float("nan")})
    return pd.DataFrame(rows)


def coverage_table(coverage: pd.DataFrame) -> pd.DataFrame:
    """:func:`budget_coverage` as one row per layer and budget: ``random`` (K / n), then a column per
    keep rule and kind."""
    index = ["layer", "budget"]
    rand = coverage[(coverage["keep"] == "random") & (coverage["kind"] == "all")].set_index(index)["share"]
    wide = coverage[coverage["keep"] != "random"].pivot_table(index=index, columns=["keep", "kind"], values="share",
                                                               sort=False)
    wide.columns = [f"{keep}: {kind}" for keep, kind in wide.columns]
    wide.insert(0, "random", rand)
    return wide.reset_index().sort_values(index, ascending=[True, False]).round(3)


def _keep_for_mass(row: np.ndarray, target: float) -> tuple[int, int]:
    """Smallest recent window and top-k holding ``target`` of a context row's mass (n,) -> (w, k)."""
    total = row.sum()
    recent = np.cumsum(row[::-1]) / total  # mass of the last w keys at w-1
    heavy = np.cumsum(np.sort(row)[::-1]) / total  # mass of the top k keys at k-1
    return int(np.argmax(recent >= target - 1e-9)) + 1, int(np.argmax(heavy >= target - 1e-9)) + 1


# ---- recommendations --------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """The compressor suggested for one layer and the evidence behind it."""

    layer: int
    compressor: str  # adkit.compress class name
    name: str  # adkit.compress registry name
    budget: int  # suggested transitions kept
    rule: str  # which rule fired, in words
    insights: list[str]  # keys of INSIGHTS that apply
    evidence: dict = field(default_factory=dict)  # the numbers behind it


def recommend(record: AttentionRecord, stats: dict[int, dict[str, np.ndarray]] | None = None,
              target: float = MASS_TARGET) -> list[Recommendation]:
    """One compressor per loaded layer, by the original rules on sample means, in this order:

    recent/distant > 2.0 -> ``RecencyCompressor`` (budget: the smallest recent window
    holding ``target`` of the mean query row's context mass); normalised entropy > 0.85
    -> ``UniformCompressor`` (budget: half the context); normalised entropy < 0.5 ->
    ``AttentionBasedCompressor`` (budget: the smallest top-k holding ``target``);
    otherwise ``AdaptiveCompressor`` (half the context).
    """
    stats = stats or layer_stats(record)
    n = record.seq_len - 1
    recs = []
    for layer in record.layers:
        s = stats[layer]
        ratio, ne = float(s["recent_to_distant_ratio"].mean()), float(s["normalized_entropy"].mean())
        row = record.head_mean(layer)[:, -1, :-1].mean(0)  # (n,) mean context row
        recent_k, heavy_k = _keep_for_mass(row, target)
        profiles = head_profile(record.layer(layer), record.tokens["rewards"][:, :-1], target=target)
        insights = ["recency"] if ratio > RECENCY_RATIO else ["spread"] if ratio < SPREAD_RATIO else []
        insights.append("uniform" if ne > UNIFORM_ENTROPY else "peaked" if ne < PEAKED_ENTROPY else "mixed")
        if ratio > RECENCY_RATIO:
            cls, budget, rule = "RecencyCompressor", recent_k, f"recent/distant {ratio:.2f} > {RECENCY_RATIO}"
        elif ne > UNIFORM_ENTROPY:
            cls, budget, rule = "UniformCompressor", max(1, n // 2), f"normalised entropy {ne:.2f} > {UNIFORM_ENTROPY}"
        elif ne < PEAKED_ENTROPY:
            cls, budget, rule = "AttentionBasedCompressor", heavy_k, f"normalised entropy {ne:.2f} < {PEAKED_ENTROPY}"
        else:
            cls, budget, rule = ("AdaptiveCompressor", max(1, n // 2),
                                 f"mixed: recent/distant {ratio:.2f} <= {RECENCY_RATIO}, normalised entropy "
                                 f"{ne:.2f} in [{PEAKED_ENTROPY}, {UNIFORM_ENTROPY}]")
        evidence = {
            "n_context": n, "samples": record.n_samples,
            "recent_to_distant_ratio": ratio, "recent_to_distant_ratio_std": float(s["recent_to_distant_ratio"].std()),
            "normalized_entropy": ne, "attention_entropy": float(s["attention_entropy"].mean()),
            "max_entropy_nats": float(np.log(n)),
            "std_context_attention": float(s["std_context_attention"].mean()),
            "mean_attention_distance": float(s["mean_attention_distance"].mean()),
            "sink_mass": float(s["sink_mass"].mean()), "rewarded_mass": float(s["rewarded_mass"].mean()),
            f"recent_window_for_{target:.0%}": recent_k, f"top_k_for_{target:.0%}": heavy_k,
            "head_rules": [f"{p.rule}:{p.size}" for p in profiles],
        }
        recs.append(Recommendation(layer, cls, COMPRESSORS[cls], budget, rule, insights, evidence))
    return recs


def recommendation_table(recs: Sequence[Recommendation]) -> pd.DataFrame:
    """One row per layer: compressor, registry name, budget, the rule and its key numbers."""
    return pd.DataFrame([{
        "layer": r.layer, "compressor": r.compressor, "name": r.name, "budget": r.budget, "rule": r.rule,
        "recent/distant": round(r.evidence["recent_to_distant_ratio"], 2),
        "normalised entropy": round(r.evidence["normalized_entropy"], 3),
        "entropy (nats)": round(r.evidence["attention_entropy"], 3),
        "sink mass": round(r.evidence["sink_mass"], 3), "rewarded mass": round(r.evidence["rewarded_mass"], 3),
        "head rules": " ".join(r.evidence["head_rules"]),
    } for r in recs])


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (floats to 4 significant digits), without extra dependencies."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
                     + ["| " + " | ".join(row) + " |" for row in cells])


# ---- the console report ----------------------------------------------------------------------------


def _phase(i: int, n: int) -> str:
    """The original's phase of the i-th of n timesteps of a trajectory."""
    if i < n // 3:
        return "Early Exploration"
    return "Mid Exploration/Exploitation" if i < 2 * n // 3 else "Late Exploitation"


def report(record: AttentionRecord, stats: dict | None = None, recs: Sequence[Recommendation] | None = None,
           show: int = 5, trajectory: int = 0) -> str:
    """The original toolkit's console report, per layer, with a recommended compressor.

    Shows ``show`` samples per layer (for rollout records: trajectory ``trajectory`` at
    its decision steps, as "Timestep t (phase)"), then the overall statistics over all
    samples, the insights and the recommendation with its numbers.
    """
    stats = stats or layer_stats(record)
    recs = {r.layer: r for r in (recs or recommend(record, stats))}
    T = record.seq_len
    if record.source == "rollout":
        shown = record.trajectory(trajectory)[:show]
        labels = [f"Timestep {record.samples['decision'][b]} ({_phase(i, len(shown))})" for i, b in enumerate(shown)]
    else:
        shown = np.arange(min(show, record.n_samples))
        labels = [f"Sample {b + 1}" for b in shown]
    lines = [ENTROPY_NOTE, ""]
    for layer in record.layers:
        s, r = stats[layer], recs[layer]
        lines += [f"ANALYZING LAYER {layer}", "=" * 16]
        for b, label in zip(shown, labels):
            lines += ["", f"{label}:", f"  Sequence length: {T}", f"  Context tokens: {T - 1}",
                      f"  Mean context attention: {s['mean_context_attention'][b]:.4f}",
                      f"  Attention std dev: {s['std_context_attention'][b]:.4f}",
                      f"  Max attention position: {s['max_context_position'][b]}",
                      f"  Recent/Distant ratio: {s['recent_to_distant_ratio'][b]:.2f}",
                      f"  Attention entropy: {s['attention_entropy'][b]:.4f}",
                      f"  Normalised entropy: {s['normalized_entropy'][b]:.3f}"]
        lines += ["", "=" * 60, "OVERALL ATTENTION STATISTICS", "=" * 60, f"Analyzed {record.n_samples} samples", ""]
        for label, key, fmt in (("Mean context attention", "mean_context_attention", ".4f"),
                                ("Attention concentration (std)", "std_context_attention", ".4f"),
                                ("Attention entropy", "attention_entropy", ".4f"),
                                ("Normalised entropy", "normalized_entropy", ".3f"),
                                ("Recent/Distant ratio", "recent_to_distant_ratio", ".2f")):
            lines.append(f"{label}: {s[key].mean():{fmt}} ± {s[key].std():{fmt}}")
        for key in r.insights:
            head, advice = INSIGHTS[key]
            lines += ["", f"💡 INSIGHT: {head}", f"   {advice}"]
        lines += ["", f"Recommended compressor: {r.compressor} (\"{r.name}\", keep {r.budget} of {T - 1}): {r.rule}.",
                  f"   sink mass {r.evidence['sink_mass']:.3f}, rewarded mass {r.evidence['rewarded_mass']:.3f}, "
                  f"mean distance {r.evidence['mean_attention_distance']:.1f} steps; "
                  f"head rules {' '.join(r.evidence['head_rules'])}", ""]
    return "\n".join(lines)


# ---- the ablation check ------------------------------------------------------------------------------


def drop_tokens(inputs: Tokens, drop: torch.Tensor, positions: str = "original") -> Tokens:
    """Remove the context tokens at ``drop`` (B, k) (never the query, the last token) from inputs (B, T, ·)."""
    B, T = inputs.batch, inputs.length
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[torch.arange(B)[:, None], drop] = False
    order = torch.argsort((~keep).int() * T + torch.arange(T), dim=1, stable=True)  # kept first, in order
    return inputs.gather(order[:, : T - drop.shape[1]], renumber=positions == "renumber")


@torch.no_grad()
def query_log_probs(model, inputs: Tokens, batch_size: int = 512) -> torch.Tensor:
    """Log-probabilities of the query's action (B, A), in chunks, on the model's fast path."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [model(**inputs.rows(slice(lo, lo + batch_size)).to(device))[:, -1].float().cpu()
           for lo in range(0, inputs.batch, batch_size)]
    return torch.cat(out).log_softmax(-1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of rows ``(..., n)`` (average ranks for ties); NaN for a constant row."""
    def ranks(v):  # (..., n) average ranks, 1-based
        less = (v[..., None, :] < v[..., :, None]).sum(-1)
        equal = (v[..., None, :] == v[..., :, None]).sum(-1)
        return less + (equal + 1) / 2

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    denom = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(-1) / np.where(denom > 0, denom, 1), np.nan)


@dataclass
class AblationResult:
    """Does attention pick what the model's decision depends on?

    ``kl`` / ``agreement``: per scorer ("attention", "random"), per drop count, the mean
    KL(full || dropped) of the query's action distribution and the share of samples whose
    argmax action is unchanged. ``spearman``: per scorer ("attention": the layer's head-mean
    query row; "rollout": attention rollout's query row) the per-sample rank correlation
    with leave-one-out importance (KL when that one transition is removed).
    """

    drop_counts: list[int]
    kl: dict[str, list[float]]
    agreement: dict[str, list[float]]
    spearman: dict[str, list[float]]
    layer: int
    samples: int
    loo_samples: int
    n_random: int
    verdict: str = ""
    importance: list[list[float]] = field(default_factory=list)  # (loo_samples, n) leave-one-out KL
    scores: dict[str, list[list[float]]] = field(default_factory=dict)  # scorer -> (loo_samples, n)

    def lift(self) -> np.ndarray:
        """KL(drop most-attended) / KL(drop random) per drop count."""
        return np.asarray(self.kl["attention"]) / np.maximum(np.asarray(self.kl["random"]), 1e-12)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"dropped": self.drop_counts, "KL top-attended": self.kl["attention"],
                             "KL random": self.kl["random"], "lift": self.lift(),
                             "agreement top-attended": self.agreement["attention"],
                             "agreement random": self.agreement["random"]})


def default_drop_counts(n: int) -> list[int]:
    """1, 2, 4, a quarter and half of the ``n`` context transitions (those below n)."""
    return sorted({k for k in (1, 2, 4, n // 4, n // 2) if 1 <= k < n})


def ablation_check(model, record: AttentionRecord, drop_counts: Sequence[int] | None = None, samples: int = 128,
                   loo_samples: int = 32, n_random: int = 5, layer: int | None = None,
                   positions: str | None = None, seed: int = 0, batch_size: int = 512) -> AblationResult:
    """Drop the most-attended transitions vs as many random ones; correlate attention with importance.

    Args:
        model: the model the record was extracted from (any module with its forward).
        record: contexts and patterns; scores are ``layer``'s (default: the last loaded)
            head-mean query row over the context keys.
        drop_counts: transitions removed (default :func:`default_drop_counts`).
        samples: first samples used for the drop comparison; ``loo_samples`` for the
            leave-one-out importance (``loo_samples * (T-1)`` forward passes, batched).
        n_random: random drops per sample and count (averaged).
        positions: "original" (kept tokens keep their stream positions) or "renumber";
            default the model's ``positions``.
    """
    layer = record.layers[-1] if layer is None else layer
    positions = positions or getattr(model, "positions", "original")
    B, n = min(samples, record.n_samples), record.seq_len - 1
    drop_counts = default_drop_counts(n) if drop_counts is None else sorted(int(k) for k in drop_counts)
    if not drop_counts or drop_counts[0] < 1 or drop_counts[-1] >= n:
        raise ValueError(f"drop counts must lie in 1..{n - 1} (the query is never dropped), got {drop_counts}")
    gen = torch.Generator().manual_seed(seed)
    inputs = record.inputs(np.arange(B))
    scores = torch.from_numpy(record.head_mean(layer)[:B, -1, :-1].copy())  # (B, n)
    full = query_log_probs(model, inputs, batch_size)  # (B, A)

    kls, agree = {"attention": [], "random": []}, {"attention": [], "random": []}
    for k in drop_counts:
        top = scores.topk(k, dim=1).indices  # (B, k)
        rand = torch.rand(B * n_random, n, generator=gen).argsort(1)[:, :k]  # (B*R, k) distinct random keys
        for name, drop, reps in (("attention", top, 1), ("random", rand, n_random)):
            tiled = Tokens.cat([inputs] * reps)  # (B*reps, T, ·)
            logq = query_log_probs(model, drop_tokens(tiled, drop, positions), batch_size)  # (B*reps, A)
            logp = full.repeat(reps, 1)
            kls[name].append(float(kl(logp, logq).mean()))
            agree[name].append(float((logp.argmax(-1) == logq.argmax(-1)).float().mean()))

    m = min(loo_samples, record.n_samples)
    loo_inputs = record.inputs(np.arange(m)).repeat_rows(n)  # (m*n, T, ·)
    one = torch.arange(n).repeat(m)[:, None]  # (m*n, 1): sample i drops key j at row i*n + j
    logq = query_log_probs(model, drop_tokens(loo_inputs, one, positions), batch_size)
    logp = query_log_probs(model, record.inputs(np.arange(m)), batch_size).repeat_interleave(n, 0)
    importance = kl(logp, logq).reshape(m, n).numpy()  # (m, n)
    score_rows = {"attention": record.head_mean(layer)[:m, -1, :-1]}
    if list(record.layers) == list(range(record.meta.get("n_layer", len(record.layers)))):
        score_rows["rollout"] = attention_rollout(record.patterns[:, :m])[:, -1, :-1]  # (m, n)
    rho = {name: spearman(rows, importance).tolist() for name, rows in score_rows.items()}

    result = AblationResult(drop_counts, kls, agree, rho, layer, B, m, n_random,
                            importance=importance.tolist(), scores={k: v.tolist() for k, v in score_rows.items()})
    result.verdict = verdict(result)
    return result


def verdict(result: AblationResult) -> str:
    """A plain-language answer: does attention predict which transitions matter?"""
    lift = result.lift()
    i = int(np.argmax(lift)) if len(lift) else 0
    k, lift_mid = result.drop_counts[i], float(np.median(lift))
    rho = float(np.nanmean(result.spearman["attention"])) if result.spearman["attention"] else float("nan")
    rho_roll = np.nanmean(result.spearman["rollout"]) if result.spearman.get("rollout") else None
    drops = lift_mid > LIFT_PREDICTIVE
    ranks = rho > RHO_PREDICTIVE
    rho_text = f"Spearman {rho:.2f} for layer {result.layer}" + (
        f", {rho_roll:.2f} for the rollout" if rho_roll is not None else "")
    evidence = (f"dropping the most-attended transitions moves the action distribution {lift_mid:.1f}x as much as "
                f"dropping random ones (median over drop counts; at k={k}: KL {result.kl['attention'][i]:.3g} vs "
                f"{result.kl['random'][i]:.3g}), and attention vs leave-one-out importance gives {rho_text}")
    if drops and ranks:
        return f"Attention predicts importance here: {evidence}."
    if not drops and not ranks:
        text = (f"Attention does NOT predict importance here: {evidence} (thresholds: {LIFT_PREDICTIVE}x, "
                f"{RHO_PREDICTIVE}). Do not trust attention-ranked compression (AttentionBasedCompressor, "
                f"ThresholdCompressor) on this evidence; compare compressors on returns.")
    else:
        holds = "the drop test" if drops else "the rank correlation"
        text = (f"Attention only partly predicts importance (only {holds} passes): {evidence} (thresholds: "
                f"{LIFT_PREDICTIVE}x, {RHO_PREDICTIVE}). Check attention-ranked compressors against a random one "
                "on returns.")
    if max(result.kl["attention"] + result.kl["random"]) < 1e-3:
        text += " The model's action barely depends on which transitions are dropped at all."
    return text


# ---- the stage -------------------------------------------------------------------------------------


@dataclass
class Insights:
    """Everything :func:`analyze` finds about one record."""

    record: AttentionRecord
    stats: dict[int, dict[str, np.ndarray]]
    recommendations: list[Recommendation]
    ablation: AblationResult | None
    report: str
    coverage: pd.DataFrame | None = None  # :func:`budget_coverage` at the study's budgets, if asked

    def table(self) -> pd.DataFrame:
        return recommendation_table(self.recommendations)

    def to_dict(self) -> dict:
        layers = []
        for r in self.recommendations:
            s = self.stats[r.layer]
            overall = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in s.items()}
            layers.append({**asdict(r), "insight_text": [" ".join(INSIGHTS[k]) for k in r.insights],
                           "overall": overall})
        meta = {k: v for k, v in self.record.meta.items() if k != "model"}
        thresholds = {"recent_to_distant_ratio": RECENCY_RATIO, "spread_ratio": SPREAD_RATIO,
                      "uniform_normalized_entropy": UNIFORM_ENTROPY, "peaked_normalized_entropy": PEAKED_ENTROPY,
                      "mass_target": MASS_TARGET, "rho_predictive": RHO_PREDICTIVE, "lift_predictive": LIFT_PREDICTIVE,
                      "note": ENTROPY_NOTE}
        ablation = None
        if self.ablation is not None:
            ablation = {k: v for k, v in asdict(self.ablation).items() if k not in ("importance", "scores")}
        coverage = None if self.coverage is None else self.coverage.to_dict("records")
        return {"meta": meta, "samples": self.record.n_samples, "thresholds": thresholds, "layers": layers,
                "budget_coverage": coverage,
                "ablation": ablation}

    def markdown(self) -> str:
        rec = self.record
        lines = [f"# Attention insights ({rec.source}, {rec.n_samples} contexts of {rec.seq_len} tokens)", "",
                 ENTROPY_NOTE, "", "## Recommended compressor per layer", "",
                 markdown_table(self.table()), ""]
        for r in self.recommendations:
            lines += [f"### Layer {r.layer}: {r.compressor} (`{r.name}`, keep {r.budget})", "", f"Rule: {r.rule}.", ""]
            lines += [f"- 💡 {INSIGHTS[k][0]} {INSIGHTS[k][1]}" for k in r.insights] + [""]
        lines += ["## Attention on the task's information", "",
                  "The query's attention mass on the transitions that carry the task's information, against their "
                  "share of the context (lift 1: no more than a uniform row).", "",
                  markdown_table(information_table(self.stats)), ""]
        if self.coverage is not None:
            lines += ["## What a budget keeps of the attention", "",
                      "Per layer and budget K, the share of the query's attention (`all`) and of its mass on each "
                      "kind of task information that K kept transitions hold: the last K (`recency`), each query's "
                      "K most attended (`top-k`, what re-encoding by attention keeps), or K at random (K / n). A "
                      "rule's recommended budget (above) holds its mass target; below it, this table says what "
                      "is lost.", "", markdown_table(coverage_table(self.coverage)), ""]
        if self.ablation is not None:
            a = self.ablation
            lines += ["## Does attention predict importance?", "", a.verdict, "",
                      f"Drop test on {a.samples} contexts ({a.n_random} random drops each), scores from layer "
                      f"{a.layer}; leave-one-out on {a.loo_samples} contexts.", "",
                      markdown_table(a.table()), ""]
            for name, values in a.spearman.items():
                lines.append(f"- Spearman(attention {name}, leave-one-out KL): mean {np.nanmean(values):.3f}, "
                             f"median {np.nanmedian(values):.3f}")
        lines += ["", "## Console report", "", "```", self.report, "```", ""]
        return "\n".join(lines)


def analyze(record: AttentionRecord, model=None, ablation: bool = True, show: int = 5,
            budgets: Sequence[int] = (), **ablation_kw) -> Insights:
    """Statistics, recommendations, the report, (with a model) the ablation check and (with ``budgets``,
    transitions kept) the :func:`budget_coverage` of one record."""
    stats = layer_stats(record)
    recs = recommend(record, stats)
    result = ablation_check(model, record, **ablation_kw) if ablation and model is not None else None
    coverage = budget_coverage(record, budgets) if budgets else None
    return Insights(record, stats, recs, result, report(record, stats, recs, show), coverage)


def _json_safe(x):
    """NaN (a constant row's Spearman) -> None, so the file is strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def write_insights(insights: Insights, out_dir: str | Path) -> tuple[Path, Path]:
    """``insights.md`` and ``insights.json`` in ``out_dir`` (atomic writes)."""
    out_dir = Path(out_dir)
    md, js = out_dir / "insights.md", out_dir / "insights.json"
    write_text(md, insights.markdown())
    write_text(js, json.dumps(_json_safe(insights.to_dict()), indent=2, allow_nan=False) + "\n")
    return md, js


def analyze_run(run: Run, source: str = "windows", ablation: bool = True) -> Insights:
    """The insights stage: read the run's attention file and checkpoint, write ``insights.md`` / ``.json``;
    the ablation check is sized by ``attention.drop_counts``, ``loo_samples`` and ``seed``; the budget
    coverage is at the study's budgets (``study.budgets``)."""
    a, cfg = run.cfg.attention, run.cfg
    record = load_record(run.require(run.attention, "attention"), source)
    model = load_model(run.require(run.weights, "train")) if ablation else None
    insights = analyze(record, model, ablation, budgets=cfg.study.transitions(cfg.study.budgets, cfg.model.n_transit),
                       drop_counts=a.drop_counts or None, loo_samples=a.loo_samples, seed=a.seed)
    write_insights(insights, run.insights.parent)
    return insights
