"""Observation conformance (Waymax SDC frame) and the policy features' invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdrive.sim import datatypes as dt
from diffdrive.sim import env, observation
from diffdrive.sim.dynamics import InvertibleBicycleModel
from tests.conftest import golden_array
from tests.test_env import _golden_env_state, _tiny_state


def _golden_observation_state(golden):
    state = _golden_env_state(golden["env"])
    environment = env.MultiAgentEnvironment(
        InvertibleBicycleModel(), env.EnvironmentConfig(init_steps=4)
    )
    return environment.reset(state)  # log replayed to timestep 3, as the golden case


def test_sdc_observation_matches_waymax(golden):
    expected = golden["observation"]
    state = _golden_observation_state(golden)
    assert int(state.timestep) == expected["timestep"]
    # The golden roadgraph is not recorded; rebuild its top-16 in global coordinates.
    local = expected["topk_roadgraph_local"]
    gx = golden_array(local["x"])[0] + 3.0
    rg = dt.RoadgraphPoints(
        x=gx,
        y=golden_array(local["y"])[0],
        z=np.zeros_like(gx),
        dir_x=golden_array(local["dir_x"])[0],
        dir_y=golden_array(local["dir_y"])[0],
        dir_z=np.zeros_like(gx),
        types=golden_array(local["types"], np.int32)[0],
        ids=golden_array(local["ids"], np.int32)[0],
        valid=golden_array(local["valid"], bool)[0],
    )
    far = jax.tree.map(lambda a: jnp.concatenate([a, a]), rg)
    far = far.replace(x=far.x.at[16:].add(500.0))
    state = state.replace(roadgraph_points=far)
    obs = observation.sdc_observation_from_state(state, obs_num_steps=2, roadgraph_top_k=16)
    np.testing.assert_allclose(obs.pose2d.matrix, golden_array(expected["pose_matrix"]), atol=1e-6)
    np.testing.assert_allclose(
        obs.pose2d.delta_yaw, golden_array(expected["pose_delta_yaw"]), atol=1e-6
    )
    traj = obs.trajectory
    for f in ("x", "y", "yaw", "vel_x", "vel_y"):
        np.testing.assert_allclose(
            getattr(traj, f), golden_array(expected["trajectory_local"][f]), rtol=1e-5, atol=1e-5
        )
    np.testing.assert_array_equal(
        traj.valid, golden_array(expected["trajectory_local"]["valid"], bool)
    )
    np.testing.assert_array_equal(obs.is_ego, golden_array(expected["is_ego"], bool))
    got = obs.roadgraph_static_points
    np.testing.assert_allclose(np.sort(got.x[0]), np.sort(golden_array(local["x"])[0]), atol=1e-5)
    assert float(jnp.max(got.x)) < 100.0  # the far copies were not picked


@pytest.mark.parametrize("route", ["none", "heading", "waypoint"])
@pytest.mark.parametrize("batch", [(), (2, 1)])
def test_policy_features_shapes_and_frame(route, batch):
    state = _tiny_state(batch)
    environment = env.MultiAgentEnvironment(
        InvertibleBicycleModel(), env.EnvironmentConfig(init_steps=3)
    )
    state = environment.reset(state)
    t = state.timestep
    feats = observation.policy_features(
        state.sim_trajectory.at(t),
        state.object_metadata,
        state.roadgraph_points,
        state.log_traffic_light,
        state.log_trajectory,
        t,
        observation.FeatureConfig(roadgraph_top_k=32, route=route),
    )
    assert feats["agents"].shape == (*batch, 3, len(observation.AGENT_FEATURES))
    assert feats["roadgraph"].shape == (*batch, 32, observation.ROADGRAPH_FEATURES)
    assert feats["traffic_lights"].shape == (*batch, 16, observation.TRAFFIC_LIGHT_FEATURES)
    # SDC at (2, 0) heading +x at 10 m/s; object 1 at (11, 4) -> local (9, 4) / 100.
    np.testing.assert_allclose(
        feats["agents"][..., 1, :2], np.broadcast_to([0.09, 0.04], (*batch, 2)), atol=1e-6
    )
    np.testing.assert_allclose(feats["agents"][..., 0, :], 0.0)  # the SDC itself is masked out
    np.testing.assert_allclose(
        feats["ego"], np.broadcast_to([0.2, 0.2, 0.0], (*batch, 3)), atol=1e-5
    )
    expected_route = {"none": [0.0, 0.0], "heading": [1.0, 0.0], "waypoint": [0.06, 0.0]}[route]
    np.testing.assert_allclose(
        feats["route"], np.broadcast_to(expected_route, (*batch, 2)), atol=1e-5
    )
