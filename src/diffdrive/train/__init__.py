"""Training: analytic policy gradients (APG), behaviour cloning, checkpoints, the loop.

* :mod:`.config` — :class:`~diffdrive.train.config.TrainConfig` and its presets.
* :mod:`.apg` — the APG rollout loss (WTA, detaching, incremental resets).
* :mod:`.bc` — the behaviour-cloning loss on log replay.
* :mod:`.losses`, :mod:`.schedule` — loss pieces, learning-rate and reset schedules.
* :mod:`.loop` — ``train_step`` and the resumable :func:`~diffdrive.train.loop.train`.
* :mod:`.checkpoint` — orbax checkpoints and the exported policy (:func:`load_policy`).
* :mod:`.cli` — ``diffdrive train apg|bc``.
"""
