"""In-context evaluation: protocol, backends, CSV, bad input."""

import pandas as pd
import pytest
import torch

from adkit import envs
from adkit.model import ADTransformer, ModelConfig
from adkit.model.evaluate import CSV_FIELDS, rollout, summary


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ADTransformer(ModelConfig(n_transit=40, tf_n_embd=16, tf_n_layer=2, tf_n_head=2, tf_n_inner=32)).eval()


def test_rollout_shapes_and_csv(tmp_path, model):
    _, test = envs.task_split("darkroom")
    res = rollout(model, "darkroom", test[:3], seeds=[0, 1], episodes=2, progress=False)
    assert res.returns.shape == (3, 2, 2) and res.steps == 40
    assert ((res.returns >= 0) & (res.returns <= res.optimal[:, None, None])).all()
    path = res.write_csv(tmp_path / "eval" / "returns.csv")
    df = pd.read_csv(path)
    assert list(df.columns) == CSV_FIELDS and len(df) == 3 * 2 * 2
    assert set(df["task"]) == {"4,2", "5,6", "6,8"} and df["episode"].max() == 2
    s = summary(res, last=1)
    assert 0 <= s["last_share"] <= 1 and s["optimal_mean"] == pytest.approx(res.optimal.mean())


def test_cache_and_full_window_recompute_take_the_same_actions(model):
    # a stream of 40 steps fits in the 40-transition window: both backends see the same context
    kw = dict(tasks=[(0, 0), (8, 8)], seeds=[3, 4], episodes=2, progress=False)
    a = rollout(model, "darkroom", backend="cache", **kw)
    b = rollout(model, "darkroom", backend="recompute", **kw)
    assert (a.returns == b.returns).all()


def test_rollouts_are_seeded(model):
    kw = dict(tasks=[(1, 1)], episodes=3, progress=False)
    first = rollout(model, "darkroom", seeds=[0, 1, 2], **kw).returns
    assert (first == rollout(model, "darkroom", seeds=[0, 1, 2], **kw).returns).all()
    assert not (first == rollout(model, "darkroom", seeds=[5, 6, 7], **kw).returns).all()


def test_bad_input_fails_with_a_message(model):
    with pytest.raises(ValueError, match="trained on 'darkroom'.*'key-to-door'"):
        rollout(model, "key-to-door", [(0, 0, 1, 1)], episodes=1, progress=False)
    with pytest.raises(ValueError, match="longer than the 40 transitions"):
        rollout(model, "darkroom", [(0, 0)], episodes=1, context=80, backend="recompute", progress=False)


def test_curve_figure_shows_the_thinned_source_ad_was_trained_on(model):
    import numpy as np

    from adkit.plots import plot_curves

    res = rollout(model, "darkroom", [(0, 0)], seeds=[0], episodes=4, progress=False)
    source = np.arange(8 * 6, dtype=float).reshape(8, 6)  # (streams, episodes)
    lines = {line.get_label(): line for line in plot_curves(res, source=source, stride=2).axes[0].lines}
    thinned = lines["source, one episode in 2 (AD's data)"]
    np.testing.assert_array_equal(thinned.get_ydata(), source[:, ::2].mean(0))
    np.testing.assert_array_equal(lines["source (per stream)"].get_ydata(), source.mean(0))
    assert not any("one episode in" in label for label in
                   (line.get_label() for line in plot_curves(res, source=source).axes[0].lines))
    seeds_only = plot_curves(res, extra={"AD, 2 training seeds": source[:2]}, label=None).axes[0].lines
    assert [line.get_label() for line in seeds_only][:1] == ["AD, 2 training seeds"]


def test_summary_numbers_on_hand_made_returns():
    import numpy as np

    from adkit.model.evaluate import RolloutResult

    returns = np.array([[[0, 0, 5, 10], [0, 0, 0, 0]],
                        [[10, 10, 10, 10], [0, 10, 10, 10]]], dtype=float)  # (tasks, seeds, episodes)
    res = RolloutResult(returns, [(0, 0), (1, 1)], [0, 1], np.array([10.0, 10.0]), 0.0, 80, None)
    s = summary(res, last=2)
    assert s["first_share"] == pytest.approx(0.25) and s["last_share"] == pytest.approx(5.5 / 8)
    assert s["episodes_to_80pct"] is None  # the mean curve peaks at 75%
    # first rewarded episodes 3, never (5), 1, 2 -> median 2.5; one of four never rewarded
    assert s["first_reward_median"] == 2.5 and s["never_rewarded"] == 0.25


def test_episode_features_reach_the_cache_as_the_window(tmp_path):
    """A model reading the episode step and return so far gives the same logits through the rolling
    cache as over the whole history, across episode ends (rewards on Darkroom's goal every step)."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_transit=30, tf_n_embd=16, tf_n_layer=2, tf_n_head=2, tf_n_inner=32, episode_step=True,
                      episode_return=True)
    m = ADTransformer(cfg).eval()
    res = rollout(m, "darkroom", [(4, 5), (3, 4)], seeds=[0, 1], episodes=3, greedy=True, progress=False)
    traj = res.trajectories
    per_episode = traj.rewards.view(4, 3, 20).cumsum(-1).flatten(1)  # (4, 60): the return so far, episode by episode
    torch.testing.assert_close(traj.episode_return, per_episode)
    assert traj.episode_return.max() > 1  # some stream was rewarded more than once in an episode
    with torch.no_grad():
        whole = m(**traj.window(60, 60))
        cache = m.new_cache(4)
        steps = torch.stack([m.step(cache, *traj.token(t)) for t in range(60)], 1)
        torch.testing.assert_close(steps, whole, atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="episode_return"):
            m(**{**traj.window(60, 60), "episode_return": None})


def test_dicp_re_encode_is_another_function_once_streams_outgrow_the_window():
    """With 2+ layers a cached decision sees n_layer x (n_transit - 1) + 1 transitions back; DICP's
    re-encode of the last n_transit sees n_transit: equal while the stream fits, different after."""
    torch.manual_seed(0)
    m = ADTransformer(ModelConfig(n_transit=6, tf_n_embd=16, tf_n_layer=2, tf_n_head=2, tf_n_inner=32)).eval()
    res = rollout(m, "darkroom", [(0, 0), (8, 8)], seeds=[0], episodes=1, progress=False)
    traj = res.trajectories
    with torch.no_grad():
        whole = m(**traj.window(20, 20))  # the sliding-window model over the whole history
        cache = m.new_cache(2)
        steps = [m.step(cache, *traj.token(t)) for t in range(20)]
        dicp = [m(**traj.window(t + 1, 6))[:, -1] for t in range(20)]  # the last 6 transitions re-encoded
    torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dicp[5], steps[5], atol=1e-5, rtol=1e-4)  # 6 transitions: the window holds all
    assert (torch.stack(dicp[12:]) - torch.stack(steps[12:])).abs().max() > 1e-3  # 13+: layer 2 reaches further
