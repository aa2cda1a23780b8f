"""Environment conformance (golden env sections, real scenarios), rollout equivalence, tracing."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.sim import datatypes as dt
from diffdrive.sim import dynamics, env
from tests import golden_utils
from tests.conftest import SHARED, golden_array

REWARDS = (("log_divergence", -0.1), ("overlap", -1.0), ("offroad", -1.0))
METRICS = ("log_divergence", "overlap", "offroad", "kinematic_infeasibility")


def _golden_env_state(section) -> dt.SimulatorState:
    log = golden_utils.trajectory(section["log"])
    n, t = log.x.shape
    meta = dt.ObjectMetadata(
        ids=jnp.arange(n, dtype=jnp.int32),
        object_types=jnp.ones(n, jnp.int32),
        is_sdc=jnp.arange(n) == 0,
        is_modeled=jnp.zeros(n, bool),
        is_valid=jnp.ones(n, bool),
        objects_of_interest=jnp.zeros(n, bool),
        is_controlled=jnp.zeros(n, bool),
    )
    # The golden file keeps only the size of its roadgraph; this stand-in has the same
    # offroad outcome (object 3 at y = 8 is off the road, the others on it).
    rg = golden_utils.straight_road(half_width=6.0, x_min=-30.0, x_max=30.0)
    return dt.SimulatorState(
        sim_trajectory=dt.initial_sim_trajectory(log),
        log_trajectory=log,
        log_traffic_light=dt.TrafficLights.zeros((16, t)).fill_invalid(),
        object_metadata=meta,
        timestep=jnp.zeros((), jnp.int32),
        roadgraph_points=rg,
    )


@pytest.mark.parametrize("planning", [False, True])
@pytest.mark.parametrize("inject", [True, False])
def test_environment_steps_match_waymax(golden, planning, inject):
    section = golden["env"]
    name = (
        "PlanningAgentEnvironment" if planning else "MultiAgentEnvironment"
    ) + f"_inject_{inject}"
    expected = section[name]
    config = env.EnvironmentConfig(
        init_steps=3,
        allow_new_objects_after_warmup=inject,
        rewards=REWARDS,
        metrics=("log_divergence", "overlap", "offroad", "kinematic_infeasibility"),
    )
    cls = env.PlanningAgentEnvironment if planning else env.MultiAgentEnvironment
    environment = cls(dynamics.InvertibleBicycleModel(), config)
    state = environment.reset(_golden_env_state(section))
    reset = expected["after_reset"]
    assert int(state.timestep) == reset["timestep"]
    assert int(state.remaining_timesteps) == reset["remaining_timesteps"]
    np.testing.assert_array_equal(
        state.sim_trajectory.valid, golden_array(reset["sim_valid"], bool)
    )
    np.testing.assert_allclose(state.sim_trajectory.x, golden_array(reset["sim_x"]))
    n = state.num_objects
    for step in expected["steps"]:
        data = golden_array(step["action"])
        if planning:
            action = dt.Action(data=data, valid=np.ones(1, bool))
        else:
            action = dt.Action(data=np.broadcast_to(data, (n, 2)), valid=np.ones((n, 1), bool))
        np.testing.assert_allclose(
            environment.reward(state, action), golden_array(step["reward_before_step"]), atol=1e-6
        )
        state = environment.step(state, action)
        assert int(state.timestep) == step["timestep"]
        assert bool(state.is_done) == step["is_done"]
        current = state.sim_trajectory.at(state.timestep)
        for f in ("x", "y", "yaw", "vel_x", "vel_y", "z", "length", "width"):
            np.testing.assert_allclose(
                getattr(current, f), golden_array(step["sim_t"][f]), rtol=1e-5, atol=1e-5, err_msg=f
            )
        np.testing.assert_array_equal(current.valid, golden_array(step["sim_t"]["valid"], bool))
        got = environment.metrics(state)
        for m in METRICS:
            np.testing.assert_allclose(
                got[m].value, golden_array(step["metrics"][m]["value"]), atol=1e-5, err_msg=m
            )
            np.testing.assert_array_equal(
                got[m].valid, golden_array(step["metrics"][m]["valid"], bool), err_msg=m
            )
        np.testing.assert_allclose(
            environment.reward(state, action), golden_array(step["reward_after_step"]), atol=1e-6
        )


def test_planning_env_gradient_matches_waymax(golden):
    section = golden["gradients"]["planning_env_3steps_loss_x_plus_2y"]
    config = env.EnvironmentConfig(init_steps=3, road_edge_index=False)
    environment = env.PlanningAgentEnvironment(dynamics.InvertibleBicycleModel(), config)
    start = environment.reset(_golden_env_state(golden["env"]))

    def loss(actions):
        state, total = start, 0.0
        for a in actions:
            state = environment.step(state, dt.Action(data=a, valid=jnp.ones(1, bool)))
            sdc = state.sim_trajectory.at(state.timestep)
            total = total + sdc.x[0] + 2 * sdc.y[0]
        return total

    value, grad = jax.value_and_grad(loss)(jnp.asarray(golden_array(section["actions"])))
    np.testing.assert_allclose(value, section["loss"], rtol=1e-5)
    np.testing.assert_allclose(grad, golden_array(section["grad"]), rtol=1e-4, atol=1e-5)


def _real_state(index: int) -> dt.SimulatorState:
    name = ("conformance/waymax_decoded_tf_example.npz", "data/womd/waymax_state/scenario_50.npz")[
        index
    ]
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not found: the real scenarios live in ../shared")
    return dt.state_from_flat_arrays(np.load(path), source=str(path))


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_expert_replay_on_real_scenarios_matches_waymax(golden, index):
    expected = golden["real_scenarios"][index]
    model = dynamics.InvertibleBicycleModel()
    metrics = ("log_divergence", "overlap", "offroad", "kinematic_infeasibility")
    planning = env.PlanningAgentEnvironment(model, env.EnvironmentConfig(metrics=metrics))
    state = planning.reset(_real_state(index))
    assert int(state.sdc_index) == expected["sdc_index"]
    out = jax.jit(lambda s: planning.rollout(s, env.expert_actor(model, sdc_only=True), 80))(state)
    steps = expected["PlanningAgentEnvironment_expert_bicycle"]["steps"]
    # Waymax's record at step t is the state after the t-th action (index 1.. of our output).
    for name in metrics:
        got = np.asarray(out.metrics[name].value)[1:]
        np.testing.assert_allclose(
            got, [s[name] for s in steps], rtol=1e-4, atol=2e-4, err_msg=name
        )
    np.testing.assert_allclose(
        np.asarray(out.actions.data).T, [s["sdc_action"] for s in steps], rtol=1e-4, atol=1e-4
    )
    sdc = int(state.sdc_index)
    xy = np.stack([out.trajectory.x[sdc, 1:], out.trajectory.y[sdc, 1:]], -1)
    np.testing.assert_allclose(xy, [s["sdc_xy"] for s in steps], rtol=1e-5, atol=1e-3)

    multi = env.MultiAgentEnvironment(
        model, env.EnvironmentConfig(controlled_object="valid", metrics=metrics)
    )
    state = multi.reset(_real_state(index))
    out = jax.jit(lambda s: multi.rollout(s, env.expert_actor(model), 80))(state)
    # The fast option leaves every valid object's offroad value exact.
    fast_env = env.MultiAgentEnvironment(
        model,
        env.EnvironmentConfig(
            controlled_object="valid", metrics=("offroad",), offroad_exact_for_invalid=False
        ),
    )
    fast = jax.jit(lambda s: fast_env.rollout(s, env.expert_actor(model), 80))(state)
    valid_objects = np.asarray(out.trajectory.valid)
    np.testing.assert_array_equal(
        np.asarray(fast.metrics["offroad"].value)[valid_objects],
        np.asarray(out.metrics["offroad"].value)[valid_objects],
    )
    steps = expected["MultiAgentEnvironment_VALID_expert_bicycle"]["steps"]
    for name in metrics:
        value = np.asarray(out.metrics[name].value)[:, 1:]
        valid = np.asarray(out.metrics[name].valid)[:, 1:]
        sum_valid = np.where(valid, value, 0.0).sum(axis=0)
        np.testing.assert_allclose(
            sum_valid, [s[f"{name}_sum_valid"] for s in steps], rtol=2e-4, atol=5e-2, err_msg=name
        )
        np.testing.assert_allclose(
            value[sdc], [s[f"{name}_sdc"] for s in steps], rtol=1e-4, atol=2e-4, err_msg=name
        )


def test_rollout_equals_step_by_step_and_traces_once():
    state = _tiny_state()
    model = dynamics.InvertibleBicycleModel()
    environment = env.MultiAgentEnvironment(
        model, env.EnvironmentConfig(init_steps=3, controlled_object="valid")
    )
    start = environment.reset(state)
    actor = env.constant_velocity_actor(model)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(s):
        return environment.rollout(s, actor, 5)

    chex.clear_trace_counter()
    out = run(start)
    run(jax.tree.map(lambda a: a, start))  # same shapes: no retrace
    stepped = start
    for _ in range(5):
        action, _ = actor(environment.view(stepped), None, None)
        stepped = environment.step(stepped, action)
    rebuilt = environment.state_after_rollout(start, out)
    for f in ("x", "y", "yaw", "vel_x", "vel_y", "valid"):
        np.testing.assert_allclose(
            getattr(rebuilt.sim_trajectory, f), getattr(stepped.sim_trajectory, f), atol=1e-5
        )
    assert int(rebuilt.timestep) == int(stepped.timestep) == 7


def _tiny_state(batch=()) -> dt.SimulatorState:
    n, t = 3, 9
    steps = jnp.arange(t, dtype=jnp.float32)
    x = jnp.stack([steps * 1.0, 10 + steps * 0.5, -5 + 0 * steps])
    full = lambda a: jnp.broadcast_to(a, (*batch, n, t)).astype(a.dtype)
    log = dt.Trajectory(
        x=full(x),
        y=full(jnp.stack([0 * steps, 0 * steps + 4, 0 * steps - 4])),
        z=full(jnp.zeros((n, t))),
        yaw=full(jnp.zeros((n, t))),
        vel_x=full(jnp.stack([10 + 0 * steps, 5 + 0 * steps, 0 * steps])),
        vel_y=full(jnp.zeros((n, t))),
        length=full(jnp.full((n, t), 4.5)),
        width=full(jnp.full((n, t), 2.0)),
        height=full(jnp.ones((n, t))),
        timestamp_micros=full(jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) * 100_000, (n, t))),
        valid=full(jnp.ones((n, t), bool)),
    )
    meta = dt.ObjectMetadata.zeros((*batch, n)).replace(
        is_sdc=jnp.broadcast_to(jnp.arange(n) == 0, (*batch, n)),
        is_valid=jnp.ones((*batch, n), bool),
    )
    xs = jnp.linspace(-20, 40, 61)
    rg = dt.RoadgraphPoints(
        x=jnp.concatenate([xs, xs[::-1]]),
        y=jnp.concatenate([jnp.full(61, -8.0), jnp.full(61, 8.0)]),
        z=jnp.zeros(122),
        dir_x=jnp.concatenate([jnp.ones(61), -jnp.ones(61)]),
        dir_y=jnp.zeros(122),
        dir_z=jnp.zeros(122),
        types=jnp.full(122, 15, jnp.int32),
        ids=jnp.concatenate([jnp.zeros(61, jnp.int32), jnp.ones(61, jnp.int32)]),
        valid=jnp.ones(122, bool),
    )
    rg = jax.tree.map(lambda a: jnp.broadcast_to(a, (*batch, 122)), rg)
    return dt.SimulatorState(
        sim_trajectory=dt.initial_sim_trajectory(log),
        log_trajectory=log,
        log_traffic_light=jax.tree.map(
            lambda a: jnp.broadcast_to(a, (*batch, 16, t)),
            dt.TrafficLights.zeros((16, t)).fill_invalid(),
        ),
        object_metadata=meta,
        timestep=jnp.zeros(batch, jnp.int32),
        roadgraph_points=rg,
    )


@pytest.mark.parametrize("batch", [(), (2, 1)])
@pytest.mark.parametrize("planning", [False, True])
def test_environments_run_at_any_batch_shape(batch, planning):
    model = dynamics.InvertibleBicycleModel()
    config = env.EnvironmentConfig(init_steps=3, metrics=("log_divergence", "overlap", "offroad"))
    environment = (env.PlanningAgentEnvironment if planning else env.MultiAgentEnvironment)(
        model, config
    )
    state = environment.reset(dt.validate(_tiny_state(batch)))
    out = jax.jit(lambda s: environment.rollout(s, env.expert_actor(model, sdc_only=planning), 5))(
        state
    )
    per_object = () if planning else (3,)
    assert out.metrics["log_divergence"].value.shape == (*batch, *per_object, 6)
    assert out.trajectory.x.shape == (*batch, 3, 6)
    np.testing.assert_allclose(out.metrics["log_divergence"].value, 0.0, atol=1e-4)
    assert float(jnp.max(out.metrics["offroad"].value)) == 0.0


def test_rollout_gradient_is_finite_with_the_smooth_bicycle_from_rest():
    state = _tiny_state()
    log = state.log_trajectory.replace(vel_x=jnp.zeros_like(state.log_trajectory.vel_x))
    state = state.replace(log_trajectory=log)
    model = dynamics.SmoothBicycleModel()
    environment = env.PlanningAgentEnvironment(model, env.EnvironmentConfig(init_steps=3))
    start = environment.reset(state)

    def loss(actions):
        out = environment.rollout(
            start,
            env.fixed_actions_actor(actions),
            5,
            actor_state=0,
            metric_names=("log_divergence",),
            with_rewards=False,
        )
        return jnp.sum(out.trajectory.x[0] ** 2 + out.trajectory.y[0] ** 2)

    grad = jax.grad(loss)(jnp.zeros((5, 2)))
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0


def test_bad_states_raise_named_errors():
    state = _tiny_state()
    bad = state.replace(
        log_trajectory=state.log_trajectory.replace(x=state.log_trajectory.x[:, :5])
    )
    with pytest.raises(
        ValueError, match=r"log_trajectory\.x: expected shape \(3, 9\), got \(3, 5\)"
    ):
        dt.validate(bad)
    nan = state.replace(
        log_trajectory=state.log_trajectory.replace(y=state.log_trajectory.y.at[1, 2].set(jnp.nan))
    )
    with pytest.raises(ValueError, match=r"log_trajectory\.y: NaN at index \(1, 2\)"):
        dt.validate(nan)
    batched = _tiny_state((2,))
    mixed = batched.replace(roadgraph_points=state.roadgraph_points)
    with pytest.raises(ValueError, match=r"roadgraph_points\.x: expected shape \(2, 122\)"):
        dt.validate(mixed)
    with pytest.raises(ValueError, match="PlanningAgentEnvironment requires"):
        env.PlanningAgentEnvironment(
            dynamics.InvertibleBicycleModel(), env.EnvironmentConfig(controlled_object="valid")
        )
