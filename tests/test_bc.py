"""Behaviour cloning: expert actions from the bicycle inverse, and a tiny training run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffdrive.data import batching, synthetic
from diffdrive.data.sources import synthetic_config
from diffdrive.sim import dynamics
from diffdrive.sim.datatypes import Action
from diffdrive.train import bc, loop, losses
from diffdrive.train.config import TrainConfig

SCENARIOS = synthetic_config("small", max_objects=8, num_roadgraph_points=500, num_vehicles=(2, 4))


def _scenarios():
    return [synthetic.generate_scenario(i, SCENARIOS) for i in range(4)]


def test_expert_actions_step_the_sdc_along_its_log():
    batch = jax.tree.map(jnp.asarray, batching.batch_scenarios(_scenarios()))
    dyn = dynamics.make_dynamics("smooth_bicycle")

    @jax.jit
    def errors(batch):
        expert = bc.expert_actions(batch, dyn, 10, 80)
        log, is_sdc = batch.log_trajectory, batch.object_metadata.is_sdc

        def one(t, action):
            current = jax.tree.map(lambda a: a[..., None], losses.sdc_step(log.at(t), is_sdc))
            valid = jnp.ones(action.shape[:-1] + (1, 1), bool)
            update = dyn.compute_update(Action(action[..., None, :], valid), current)
            following = losses.sdc_step(log.at(t + 1), is_sdc)
            return jnp.hypot(update.x[..., 0] - following.x, update.y[..., 0] - following.y)

        return expert, jax.vmap(one)(jnp.arange(10, 90), expert.data)

    expert, err = errors(batch)
    assert expert.data.shape == (80, 4, 2) and bool(jnp.all(expert.valid))
    # Waymax's bicycle inverse is not exact (positions integrate the velocity vector), but
    # one step of the expert action lands within centimetres of the log.
    assert float(jnp.max(err)) < 0.1 and float(jnp.mean(err)) < 0.02


def test_bc_training_lowers_the_nll():
    cfg = TrainConfig.tiny(algorithm="bc", epochs=20)
    result = loop.train(cfg, _scenarios(), progress=False)
    first, last = result.history[0], result.history[-1]
    assert set(first) >= {"loss", "nll", "ce", "entropy", "action_error", "grad_norm", "lr"}
    # The logged actions are noisy (finite differences of noisy velocities), so the
    # likelihood improves far more than the error of the mixture's most likely mean.
    assert last["nll"] < first["nll"] - 5.0
    assert last["action_error"] < first["action_error"] * 1.05
    assert all(np.isfinite(h["loss"]) for h in result.history)
    wta = TrainConfig.tiny(algorithm="bc", bc_loss="wta")
    loss_fn = jax.jit(loop.make_loss_fn(wta))
    batch = loop.BatchSource(_scenarios(), 4, 0).batch(0, 0)
    loss, aux = loss_fn(result.state.params, batch, jax.random.PRNGKey(0), jnp.inf)
    assert np.isfinite(float(loss)) and float(aux["ce"]) > 0.0
