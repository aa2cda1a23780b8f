"""Policies: per-modality scene encoders, an agent transformer, a GRU and a GMM head.

Data flows one way: ``sim`` -> ``models`` -> ``train``. :mod:`.config` holds the presets,
:mod:`.encoders` and :mod:`.transformer` the scene encoders, :mod:`.policy` the recurrent
policy, its Gaussian mixture and the :func:`~diffdrive.models.policy.make_policy_actor`
adapter to the simulator's actor interface.
"""
