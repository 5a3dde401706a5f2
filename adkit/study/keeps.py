"""What each strategy keeps of one real context of a run: the view that notebook 04's panel draws."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from adkit import envs
from adkit.analysis.attention import AttentionFileError, load_record
from adkit.compress.context import build, compress_tokens, query_attention
from adkit.data.tokens import Tokens
from adkit.run import MissingStage, Run
from adkit.study.cells import profile_kwargs
from adkit.study.training_free import reference, study_compressors


@dataclass
class KeepView:
    """One context ``tokens`` (1, L, ·) of the run, its attention ``pattern`` (L, L) and, per
    strategy and budget, the kept transitions (indices into the L - 1 earlier ones; memoised)."""

    model: object
    env_name: str
    tokens: Tokens
    pattern: np.ndarray
    names: list[str]
    extra: dict[str, dict] = field(default_factory=dict)
    _kept: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.tokens["actions"].shape[1] - 1

    def kept(self, name: str, budget: int) -> np.ndarray:
        if (name, budget) not in self._kept:
            c = build(name, budget, self.model, self.env_name, **self.extra.get(name, {}))
            attention = torch.as_tensor(self.pattern)[None] if c.needs_attention else None  # (1, L, L)
            ctx = compress_tokens(c, self.tokens, "original", attention, generator=torch.Generator().manual_seed(0))
            steps = self.tokens.positions[0, :-1].numpy()
            self._kept[name, budget] = np.searchsorted(steps, ctx.positions[0, :-1].numpy())
        return self._kept[name, budget]


def example_context(run: Run, model, seed: int = 0, sample: int = 0) -> Tokens:
    """A real context of the run ``(1, n_transit, ·)``: sample ``sample`` of the attention file's
    rollout (else windows) contexts when notebook 02 made one, else the context of the last
    decision of a short full-context rollout on the first held-out task."""
    for source in ("rollout", "windows"):
        try:
            record = load_record(run.attention, source, layers=[0], heads=[0])
        except (MissingStage, AttentionFileError):
            continue
        return record.inputs([min(sample, record.n_samples - 1)])
    env_name = run.cfg.env.name
    n, horizon = model.cfg.n_transit, envs.spec(env_name).horizon
    ref = reference(model, env_name, run.test_tasks[:1], seed, episodes=n // horizon + 2, decisions=2)
    return ref.probe


def keep_view(model, env_name: str, tokens: Tokens, names: Sequence[str] | None = None) -> KeepView:
    """A :class:`KeepView` of ``tokens`` for ``names`` (default every strategy, ``profile``
    profiled on this context)."""
    pattern = query_attention(model, tokens)[0].numpy()  # (L, L)
    return KeepView(model, env_name, tokens, pattern, list(names or study_compressors()),
                    {"profile": profile_kwargs(model, tokens)})
