"""Histories: sources learn, files round-trip, bad files fail clearly, windows are right."""

import dataclasses

import h5py
import numpy as np
import pytest

from adkit import envs
from adkit.config import from_dict, load_config
from adkit.data.collect import check_provenance, collect, load_for
from adkit.data.histories import HistoriesError, WindowSampler, load, save, stride_episodes
from adkit.run import histories_path


@pytest.fixture(scope="module")
def hist():
    return collect(from_dict({"collect": {"source": "noise", "streams": 3, "steps": 100}}), progress=False)


def test_shapes_and_true_next_states(hist):
    n_tasks, n_streams, n_steps = hist.shape
    assert (n_tasks, n_streams, n_steps) == (81, 3, 100)
    assert hist.dones[..., 19::20].all() and hist.dones.sum() == 81 * 3 * 5
    # within an episode the next state is the following state; at an end it is the true last one
    inside = ~hist.dones[..., :-1]
    assert (hist.next_states[..., :-1, :][inside] == hist.states[..., 1:, :][inside]).all()
    assert (hist.states[..., 20::20, :] == 4).all()  # every episode starts at the centre
    ends = hist.next_states[..., 19::20, :]
    assert not (ends == 4).all()  # not the reset state


DYNA = {"lr": 1.0, "gamma": 0.9, "optimistic_init": 10.0, "eps_start": 0.0, "eps_end": 0.0, "planning_sweeps": 20}


@pytest.mark.parametrize("source,extra", [("noise", {}), ("qlearning", {}), ("qlearning", {"qlearning": DYNA}),
                                          ("psrl", {})])
def test_sources_learn(source, extra):
    h = collect(from_dict({"collect": {"source": source, "streams": 4, "steps": 1000, **extra}}), progress=False)
    ret = h.episode_returns().mean((0, 1))  # (50,)
    assert ret[0] < 3 and ret[-5:].mean() > 3 * ret[:3].mean()


def test_psrl_finds_goals_fast():
    h = collect(from_dict({"collect": {"source": "psrl", "streams": 8, "steps": 400, "psrl": {"eps": 0.0}}}),
                progress=False)
    ret = h.episode_returns()  # (81, 8, 20)
    share = ret / np.array([min(20, 21 - abs(r - 4) - abs(c - 4)) for r, c in h.tasks])[:, None, None]
    assert share[..., 0].mean() < 0.5 and share[..., -5:].mean() > 0.9


@pytest.mark.parametrize("env,memory,episodes,first", [("key-to-door", 4, 12, 0.4), ("darkroom-permuted", 4, 12, 0.4),
                                                       ("darkroom-hard", 10, 40, 0.3)])
def test_posterior_sampling_learns_each_family(env, memory, episodes, first):
    """Per stream, from episode to episode: little in the first episode, near optimal at the end."""
    horizon = envs.spec(env).horizon
    cfg = from_dict({"env": {"name": env, "train_tasks": 24, "test_tasks": 8},
                     "collect": {"source": "psrl", "streams": 4, "steps": horizon * episodes,
                                 "psrl": {"memory": memory}}})
    h = collect(cfg, progress=False)
    assert len(h.tasks) == 32  # the cut split only
    ret = h.episode_returns().mean((0, 1))  # (episodes,)
    optimal = np.mean([envs.optimal_return(env, tuple(t)) for t in h.tasks])
    random = envs.random_return_mean(env, [tuple(t) for t in h.tasks])
    assert ret[0] <= first * optimal, ret
    assert ret[-3:].mean() >= 0.8 * optimal and ret[-3:].mean() > 3 * random, ret


def test_round_trip(tmp_path, hist):
    path = save(hist, tmp_path / "h.h5")
    back = load(path)
    assert isinstance(back.states, np.memmap)
    for name in ("states", "actions", "rewards", "next_states", "dones", "tasks"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(hist, name)))
    assert back.env == "darkroom" and back.source == "noise" and "source: noise" in back.config
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed away


def test_bad_files_say_what_to_do(tmp_path, hist):
    with pytest.raises(HistoriesError, match="no such histories file.*adkit collect"):
        load(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(HistoriesError, match="junk.h5: not a readable HDF5"):
        load(tmp_path / "junk.h5")
    path = save(hist, tmp_path / "h.h5")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(HistoriesError, match="cut.h5"):
        load(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(HistoriesError, match="not an adkit histories file"):
        load(tmp_path / "foreign.h5")
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(HistoriesError, match="version 99"):
        load(path)


def test_window_sampler_draws_consecutive_transitions_from_chosen_tasks(hist):
    rows = np.array([2, 7])
    s = WindowSampler(hist, rows, streams=[0, 1], seq_len=30, seed=0)
    b = s.sample(64)
    assert b["states"].shape == (64, 30, 2) and b["actions"].shape == (64, 30)
    pos = b["positions"]
    assert ((pos[:, 1:] - pos[:, :-1]) == 1).all() and pos.min() >= 0 and pos.max() < 100
    assert len(set(pos[:, 0].tolist())) > 10  # any offset, not only episode starts
    # every window is a slice of one of the chosen streams
    for i in range(8):
        t0 = int(pos[i, 0])
        matches = [(r, st) for r in rows for st in (0, 1)
                   if (hist.actions[r, st, t0:t0 + 30] == b["actions"][i].numpy()).all()
                   and (hist.states[r, st, t0:t0 + 30] == b["states"][i].numpy()).all()]
        assert matches
        # the episode's return so far counts from the episode's start, even one before the window
        r, st = matches[0]
        start = t0 - t0 % 20
        expected = np.cumsum(hist.rewards[r, st, start:t0 + 30])[t0 - start:]
        expected -= np.concatenate([[0], np.cumsum(hist.rewards[r, st, start:t0 + 30])])[
            np.maximum(0, (np.arange(t0, t0 + 30) // 20) * 20 - start)]
        np.testing.assert_allclose(b["episode_return"][i].numpy(), expected)
    with pytest.raises(ValueError, match="longer than"):
        WindowSampler(hist, rows, [0], seq_len=101)


def test_episode_stride_keeps_every_kth_episode_as_its_own_stream(hist):
    arrays = {name: np.asarray(getattr(hist, name))[:2] for name in ("states", "actions", "rewards", "dones")}
    out = stride_episodes(arrays, 2)  # 5 episodes of 20 -> 2 phases of 2 episodes (the 5th is dropped)
    assert out["actions"].shape == (2, 6, 40) and out["states"].shape == (2, 6, 40, 2)
    episodes = arrays["actions"].reshape(2, 3, 5, 20)
    for stream in range(3):
        for phase in range(2):
            np.testing.assert_array_equal(out["actions"][:, 2 * stream + phase].reshape(2, 2, 20),
                                          episodes[:, stream, [phase, phase + 2]])
    assert (out["dones"].sum(-1) == 2).all()
    assert stride_episodes(arrays, 1) is arrays
    s = WindowSampler(hist, [0], [0, 1], seq_len=40, episode_stride=2)
    assert s.sample(8)["actions"].shape == (8, 40)
    with pytest.raises(ValueError, match="longer than the 40 steps of each stream at episode stride 2"):
        WindowSampler(hist, [0], [0], seq_len=41, episode_stride=2)
    with pytest.raises(ValueError, match="larger than the 5 episodes"):
        stride_episodes(arrays, 6)
    ragged = dict(arrays, dones=np.roll(arrays["dones"], 1, axis=-1) | arrays["dones"])
    with pytest.raises(ValueError, match="one fixed length"):
        stride_episodes(ragged, 2)


def test_profiles_extend_and_reject_unknown_keys(tmp_path):
    cfg = load_config("paper-psrl")
    assert cfg.profile == "paper-psrl" and cfg.collect.source == "psrl" and cfg.collect.streams == 100
    assert cfg.model.n_transit == 80 and load_config("paper").collect.source == "ppo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 3}\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['stepz'\] in train"):
        load_config(bad)


def test_histories_are_named_by_what_made_them_and_a_foreign_file_is_refused(tmp_path, tiny_hist):
    cfg = load_config("tiny")
    fewer = load_config("tiny", {"collect": {"streams": 3}})
    same = load_config("quick", {"collect": dataclasses.asdict(cfg.collect), "env": {"name": cfg.env.name}})
    assert histories_path(cfg, tmp_path) != histories_path(fewer, tmp_path)  # other data, another file
    assert histories_path(cfg, tmp_path) == histories_path(same, tmp_path)  # same data, one file for both
    path = save(tiny_hist, histories_path(cfg, tmp_path))
    assert load_for(cfg, path).shape == tiny_hist.shape
    with pytest.raises(HistoriesError, match=r"holds other histories.*collect.streams: 4 in the file, 3 asked.*"
                                             r"adkit collect -c tiny"):
        load_for(fewer, path)
    with pytest.raises(HistoriesError, match="env.name: 'darkroom' in the file, 'key-to-door' asked"):
        check_provenance(tiny_hist, load_config("tiny", {"env": {"name": "key-to-door"}}), path)


def test_a_project_profile_may_extend_the_built_in_one_of_its_name(tmp_path, monkeypatch):
    (tmp_path / "config" / "profiles").mkdir(parents=True)
    (tmp_path / "config" / "profiles" / "tiny.yaml").write_text("extends: tiny\ntrain: {steps: 7}\n")
    monkeypatch.setenv("ADKIT_HOME", str(tmp_path))
    cfg = load_config("tiny")
    assert cfg.train.steps == 7 and cfg.model.n_transit == 20  # the project's change on the built-in profile
