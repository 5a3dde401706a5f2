"""Environment dynamics, rewards, split and baselines against hand-worked cases."""

import numpy as np
import pytest

from adkit import envs

TEST_GOALS = [(4, 2), (5, 6), (6, 8), (7, 2), (3, 6), (0, 5), (5, 8), (5, 4)]


def run(name, task, actions):
    env = envs.make(name, [task])
    env.reset(seed=0)
    out = [env.step(np.array([a])) for a in actions]
    return [o[0][0].tolist() for o in out], [float(o[1][0]) for o in out], out


def test_published_split():
    train, test = envs.task_split("darkroom", split_seed=0, train_ratio=0.9)
    assert test == TEST_GOALS
    assert len(train) == 73 and not set(train) & set(test)
    assert np.mean([envs.optimal_return("darkroom", g) for g in test]) == pytest.approx(17.25)


@pytest.mark.parametrize("name,n_tasks", [("darkroom", 81), ("darkroom-hard", 289), ("darkroom-permuted", 120),
                                          ("key-to-door", 6561)])
def test_split_sizes(name, n_tasks):
    train, test = envs.task_split(name)
    assert len(train) + len(test) == n_tasks and len(train) == round(n_tasks * 0.9)


def test_darkroom_moves_clip_and_reward_every_step_on_goal():
    # from the centre (4, 4): +row, +row, -col, stay, stay ... goal (6, 3)
    pos, rew, _ = run("darkroom", (6, 3), [0, 0, 3, 4, 4, 1])
    assert pos == [[5, 4], [6, 4], [6, 3], [6, 3], [6, 3], [5, 3]]
    assert rew == [0, 0, 1, 1, 1, 0]
    pos, _, _ = run("darkroom", (0, 0), [2] * 6)  # clipped at the wall
    assert pos[-1] == [4, 8]


def test_hard_rewards_once_and_keydoor_needs_key_first():
    _, rew, _ = run("darkroom-hard", (9, 8), [0, 4, 1, 0])
    assert rew == [1, 0, 0, 0]
    # door (4, 5) before key (4, 6): the door pays nothing until the key is held
    _, rew, _ = run("key-to-door", (4, 6, 4, 5), [2, 2, 3, 4, 2])
    assert rew == [0, 1, 1, 0, 0]


def test_permuted_maps_actions():
    perm = 5
    mapping = envs.grid.PERMUTATIONS[perm]
    a = int(np.flatnonzero(mapping == 0)[0])  # the agent action that moves +row
    pos, _, _ = run("darkroom-permuted", (perm,), [a])
    assert pos == [[1, 0]]


def test_horizon_truncates_resets_and_reports_true_last_state():
    env = envs.make("darkroom", [(8, 8)], streams=2)
    obs, _ = env.reset(seed=1)
    for t in range(20):
        obs, r, term, trunc, info = env.step(np.array([0, 2]))
        if t < 19:
            assert not trunc.any() and "final_obs" not in info
    assert trunc.all() and not term.any()
    assert info["final_obs"].tolist() == [[8, 4], [4, 8]]  # the true last positions
    assert obs.tolist() == [[4, 4], [4, 4]]  # reset in the same step


def test_batched_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    tasks = [(1, 2), (8, 8), (4, 4)]
    acts = rng.integers(0, 5, (45, len(tasks) * 2))
    env = envs.make("darkroom", tasks, streams=2)
    env.reset(seed=0)
    batched = [env.step(a)[:2] for a in acts]
    for i in range(len(tasks) * 2):
        single = envs.make("darkroom", [tasks[i // 2]])
        single.reset(seed=0)
        for t, a in enumerate(acts[:, i]):
            o, r = single.step(np.array([a]))[:2]
            assert o[0].tolist() == batched[t][0][i].tolist() and r[0] == batched[t][1][i]


def test_optimal_returns_and_random_baselines_match_the_published_figures():
    goals = envs.task_list("darkroom")
    assert np.mean([envs.optimal_return("darkroom", g) for g in goals]) == pytest.approx(16.5432, abs=1e-4)
    assert envs.optimal_return("darkroom", (4, 4)) == 20 and envs.optimal_return("darkroom", (0, 0)) == 13
    assert envs.optimal_return("darkroom-permuted", 7) == 35
    assert envs.optimal_return("key-to-door", (0, 0, 8, 8)) == 2
    assert envs.optimal_return("darkroom-hard", (0, 0)) == 1
    assert np.mean([envs.random_return("darkroom", g) for g in goals]) == pytest.approx(20 / 81)
    assert np.mean([envs.random_return("darkroom", g) for g in TEST_GOALS]) == pytest.approx(0.325, abs=1e-3)


def test_optimal_policy_reaches_optimal_return():
    tasks = envs.task_list("key-to-door")[::500]
    env = envs.make("key-to-door", tasks)
    env.reset(seed=0)
    total = np.zeros(len(tasks))
    for _ in range(50):
        total += env.step(env.core.optimal_actions())[1]
    assert total.tolist() == [envs.optimal_return("key-to-door", t) for t in tasks]


def test_bad_input_messages():
    with pytest.raises(ValueError, match="unknown environment"):
        envs.make("lava", [(0, 0)])
    with pytest.raises(ValueError, match="2 ints each"):
        envs.make("darkroom", [(1, 2, 3)])
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        envs.make("darkroom", [(9, 0)])
    env = envs.make("darkroom", [(1, 1)])
    with pytest.raises(ValueError, match="actions must lie"):
        env.step(np.array([5]))
