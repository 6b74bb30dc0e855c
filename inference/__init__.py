"""Shared inference for seqzoo: kernels, the model contract, the fit loop, scoring.

Shape convention (used everywhere): batch dimensions on the left, then time,
then event. Observations ``(N, T, *event)``, per-step state log-likelihoods
``(N, T, K)``, transition matrices ``(K, K)`` or ``(N, K, K)`` indexed
``[from, to]``.

Importing this package switches Pyro's ``module_local_params`` setting on, so
the parameters of a :class:`~pyro.nn.PyroModule` live in the module (and its
``state_dict``) rather than in Pyro's global param store: models fitted in one
process never share a parameter by name.
"""

import pyro

pyro.settings.set(module_local_params=True)

from .batch import SequenceBatch, iterate_minibatches, sequence_plate  # noqa: E402
from .contract import SequenceModel, near_duplicate_states  # noqa: E402

__all__ = ["SequenceBatch", "SequenceModel", "iterate_minibatches", "near_duplicate_states", "sequence_plate"]
