"""Training DSS's collision/offroad classifier (Eq. 2) on simulated trajectories.

Dataset (:func:`collect_dataset`): the ego policy drives each scenario in the planning
environment (others replay the log), sampling its actions so the trajectories spread;
every simulated step is copied ``jitter_copies`` times with the ego's pose perturbed
(Gaussian in x, y, yaw), which puts many samples near the collision and road-edge
boundaries. Labels are the simulator's exact metrics at that pose: ``overlap`` (box
intersection with any valid agent) and ``offroad`` (Waymax's road-edge test against the
whole map). Features are :func:`diffdrive.models.classifier.event_features` computed on the
map cut to the points nearest the ego, as the planner sees it.

Training (:func:`train_classifier`): binary cross-entropy on both events, Adam, minibatches
drawn with a seeded permutation; a held-out split reports accuracy, balanced accuracy and
positive rates. :func:`save_classifier` / :func:`load_classifier` export like
``save_policy`` (orbax parameters plus ``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from diffdrive.models import classifier as classifier_lib
from diffdrive.models.classifier import ClassifierConfig, EventClassifierBundle
from diffdrive.sim import dynamics as dynamics_lib
from diffdrive.sim import env as env_lib
from diffdrive.sim import metrics as metrics_lib
from diffdrive.sim.datatypes import Array, SimulatorState
from diffdrive.sim.observation import filter_topk_roadgraph_points
from diffdrive.train.checkpoint import write_json_atomic

CONFIG_NAME = "config.json"


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig:
    """Attributes:
    model: :class:`~diffdrive.models.classifier.ClassifierConfig`.
    steps: optimiser steps.
    batch_size: samples per step.
    learning_rate: Adam step size.
    jitter_copies: perturbed copies of each simulated step.
    jitter_xy: std (m) of the ego position perturbation.
    jitter_yaw: std (rad) of the ego heading perturbation.
    local_roadgraph_points: the features' map cut (as the planner's imagination).
    holdout_fraction: samples kept out of training for the reported metrics.
    seed: seeds the jitter, the split, the initial weights and the batches.
    """

    model: ClassifierConfig = ClassifierConfig()
    steps: int = 1500
    batch_size: int = 256
    learning_rate: float = 2e-3
    jitter_copies: int = 4
    jitter_xy: float = 1.5
    jitter_yaw: float = 0.15
    local_roadgraph_points: int = 2000
    holdout_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.jitter_copies < 1:
            raise ValueError("ClassifierTrainConfig: steps, batch_size, jitter_copies must be >= 1")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError("ClassifierTrainConfig: holdout_fraction must be in [0, 1)")


def _labels_and_features(roadgraph, scenes, sdc, config: ClassifierTrainConfig):
    """One scenario: ``scenes`` ``(Q, N)`` -> features ``(Q, ...)``, labels ``(Q, 2)``."""
    hits = metrics_lib.overlap(scenes).value  # (Q, N)
    collision = jnp.sum(hits * sdc, -1) > 0
    ego = jax.tree.map(lambda a: jnp.sum(a * sdc.astype(a.dtype), -1).astype(a.dtype), scenes)
    offroad = metrics_lib.offroad(ego, roadgraph).value > 0  # (Q,)
    xy = jnp.stack([ego.x, ego.y], -1).mean(0)
    rg = roadgraph
    if config.local_roadgraph_points < rg.num_points:
        rg = filter_topk_roadgraph_points(rg, xy, config.local_roadgraph_points)
    feats = classifier_lib.event_features(
        scenes, jnp.broadcast_to(sdc, scenes.x.shape), rg, config.model
    )
    labels = jnp.stack([collision, offroad], -1)
    return feats, labels, ego.valid


def collect_dataset(
    states: SimulatorState,
    actor: env_lib.Actor,
    init_actor_state,
    config: ClassifierTrainConfig,
    key: Array,
    num_steps: int | None = None,
    dynamics: dynamics_lib.DynamicsModel | None = None,
) -> dict[str, np.ndarray]:
    """Simulated samples with exact labels from a batch of un-reset scenarios ``(B, ...)``.

    Args:
      states: scenarios ``(B, ...)``.
      actor, init_actor_state: the ego policy (sampling) as a planning-environment actor and
        its initialiser ``init(reset_state)``.
      config: jitter and feature settings.
      key: PRNG key.
      num_steps: simulated steps (default to the end of the log).
      dynamics: the simulator's dynamics (default Waymax's bicycle).

    Returns:
      numpy arrays with a leading sample axis: the feature dict entries plus ``labels``
      ``(S, 2)`` bool (collision, offroad). Samples where the ego is invalid are dropped.
    """
    env = env_lib.PlanningAgentEnvironment(
        dynamics or dynamics_lib.InvertibleBicycleModel(),
        env_lib.EnvironmentConfig(road_edge_index=False),
    )

    @jax.jit
    def run(states, key):
        state = env.reset(states)
        steps = num_steps or state.num_timesteps - env.config.init_steps
        k_roll, k_jit = jax.random.split(key)
        out = env.rollout(
            state,
            actor,
            steps,
            key=k_roll,
            actor_state=init_actor_state(state),
            metric_names=(),
            with_rewards=False,
        )
        traj = jax.tree.map(lambda a: jnp.moveaxis(a, -1, -2), out.trajectory)  # (B, S+1, N)
        sdc = state.object_metadata.is_sdc  # (B, N)
        j = config.jitter_copies
        b, s1, _n = traj.x.shape
        tiled = jax.tree.map(lambda a: jnp.repeat(a, j, axis=1), traj)  # (B, Q, N)
        kx, ky, kyaw = jax.random.split(k_jit, 3)
        shape = (b, s1 * j, 1)
        first = (jnp.arange(s1 * j) % j == 0)[None, :, None]  # keep one copy unperturbed
        noise = lambda k, std: jnp.where(first, 0.0, std * jax.random.normal(k, shape))
        is_sdc = sdc[:, None, :]
        tiled = tiled.replace(
            x=tiled.x + noise(kx, config.jitter_xy) * is_sdc,
            y=tiled.y + noise(ky, config.jitter_xy) * is_sdc,
            yaw=tiled.yaw + noise(kyaw, config.jitter_yaw) * is_sdc,
        )

        def one(args):
            roadgraph, scenes, onehot = args
            return _labels_and_features(roadgraph, scenes, onehot, config)

        return jax.lax.map(one, (state.roadgraph_points, tiled, sdc))

    feats, labels, valid = jax.device_get(run(states, key))
    keep = np.asarray(valid).reshape(-1)
    out = {k: np.asarray(v).reshape((-1,) + v.shape[2:])[keep] for k, v in feats.items()}
    out["labels"] = np.asarray(labels).reshape(-1, 2)[keep]
    return out


def concat_datasets(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def bce_loss(logits: Array, labels: Array) -> Array:
    """Eq. 2 summed over the two events, averaged over samples."""
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), -1))


def classification_report(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per event: positive rate, accuracy, balanced accuracy (threshold 0.5)."""
    pred = np.asarray(logits) > 0
    labels = np.asarray(labels).astype(bool)
    report = {}
    for i, name in enumerate(classifier_lib.EVENTS):
        y, p = labels[:, i], pred[:, i]
        tpr = float(np.mean(p[y])) if y.any() else float("nan")
        tnr = float(np.mean(~p[~y])) if (~y).any() else float("nan")
        report[name] = {
            "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
            "accuracy": float(np.mean(p == y)) if len(y) else float("nan"),
            "balanced_accuracy": float(np.nanmean([tpr, tnr])),
            "true_positive_rate": tpr,
            "true_negative_rate": tnr,
        }
    return report


def train_classifier(
    dataset: dict[str, np.ndarray], config: ClassifierTrainConfig, progress: bool = False
) -> tuple[EventClassifierBundle, dict[str, Any]]:
    """BCE training on ``dataset`` (from :func:`collect_dataset`).

    Returns:
      ``(bundle, report)``: the trained classifier and ``{"train_loss", "holdout": ...,
      "num_train", "num_holdout"}``.
    """
    n = len(dataset["labels"])
    if n < 2:
        raise ValueError(f"train_classifier: need at least 2 samples, got {n}")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_hold = round(config.holdout_fraction * n)
    hold, train = order[:n_hold], order[n_hold:]
    data = {k: jnp.asarray(v) for k, v in dataset.items()}
    feature_keys = [k for k in dataset if k != "labels"]

    model = classifier_lib.EventClassifier(config.model)
    params = classifier_lib.init_params(config.model, jax.random.PRNGKey(config.seed))
    opt = optax.adam(config.learning_rate)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, idx):
        feats = {k: data[k][idx] for k in feature_keys}
        labels = data["labels"][idx].astype(jnp.float32)

        def loss_fn(p):
            return bce_loss(model.apply(p, feats), labels)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    iterator = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="classifier")
    losses = []
    batch = min(config.batch_size, len(train))
    for i in iterator:
        idx = rng.choice(train, size=batch, replace=False)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(idx))
        if i % 50 == 0 or i == config.steps - 1:
            losses.append(float(loss))
    bundle = EventClassifierBundle(params=params, config=config.model)
    report = {"train_loss": losses, "num_train": len(train), "num_holdout": int(n_hold)}
    if n_hold:
        logits = jax.jit(model.apply)(params, {k: data[k][hold] for k in feature_keys})
        report["holdout"] = classification_report(np.asarray(logits), dataset["labels"][hold])
        report["holdout_loss"] = float(bce_loss(logits, data["labels"][hold].astype(jnp.float32)))
    return bundle, report


def save_classifier(
    directory: str | os.PathLike, bundle: EventClassifierBundle, meta: dict | None = None
) -> Path:
    """Exports ``params/`` and ``config.json`` (the model config plus ``meta``)."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", bundle.params, force=True)
    write_json_atomic(
        directory / CONFIG_NAME,
        {
            "model": dataclasses.asdict(bundle.config),
            "loss_weights": list(bundle.loss_weights),
            "meta": meta or {},
        },
    )
    return directory


def load_classifier(directory: str | os.PathLike) -> EventClassifierBundle:
    """Loads an export of :func:`save_classifier`."""
    directory = Path(directory).absolute()
    path = directory / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no classifier export at {directory} (missing {CONFIG_NAME})")
    with open(path) as f:
        saved = json.load(f)
    config = ClassifierConfig(**saved["model"])
    abstract = jax.eval_shape(
        lambda k: classifier_lib.init_params(config, k), jax.random.PRNGKey(0)
    )
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", abstract)
    return EventClassifierBundle(
        params=params, config=config, loss_weights=tuple(saved.get("loss_weights", (1.0, 1.0)))
    )
