r"""Aligning exchangeable state labels across posterior draws (label switching).

Under a prior that treats the :math:`K` states of an HMM (or the topics of a
topic model) symmetrically, the posterior is invariant under any relabelling,
so a sampler may visit the :math:`K!` copies of a mode, and different chains
usually sit in different copies. Averages and ``r_hat`` of state-indexed
parameters are then meaningless until every draw is relabelled to one
reference ordering.

**Method** (a Stephens-style relabelling, iterated to a fixed point):

1. The model describes each state by features ``F`` (``(K, F)``, from
   :meth:`~inference.contract.SequenceModel.state_label_features`: emission
   means for a Gaussian HMM, emission probabilities for a categorical one).
2. The reference is the first draw of the first chain (or a given reference).
3. For every draw, the permutation :math:`\sigma` minimising
   :math:`\sum_k \lVert F^{ref}_k - F^{draw}_{\sigma(k)} \rVert^2` is found by
   the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`).
4. The reference becomes the mean of the aligned features, and steps 3-4 repeat
   until no permutation changes (at most ``max_iterations`` times).
5. Finally the states are put in a canonical order: sorted by the reference
   features, first feature first (for a 1-D Gaussian HMM, by increasing mean).

Every state-indexed axis of every site (from
:meth:`~inference.contract.SequenceModel.state_label_axes`) is permuted with the
same :math:`\sigma`, so a draw stays a valid parameter: ``aligned[k] =
draw[sigma[k]]`` and ``aligned_transition[i, j] = transition[sigma[i], sigma[j]]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .contract import SequenceModel


def permute_states(
    values: Mapping[str, Tensor], permutation: Tensor, label_axes: Mapping[str, tuple[int, ...]]
) -> dict[str, Tensor]:
    """Relabels one parameter value: ``new[..., k, ...] = old[..., permutation[k], ...]``
    along every state axis of every site in ``label_axes``.

    Args:
        values: site name -> value of the site's event shape.
        permutation: ``(K,)`` long tensor, a permutation of ``0..K-1``.
        label_axes: site name -> event axes indexed by the state label.

    Returns:
        The relabelled values (sites without state axes unchanged).
    """
    permuted = {}
    for name, value in values.items():
        for axis in label_axes.get(name, ()):
            value = value.index_select(axis, permutation.to(value.device))
        permuted[name] = value
    return permuted


def _permute_draws(draws: Mapping[str, Tensor], permutations: Tensor, label_axes) -> dict[str, Tensor]:
    """Applies ``permutations (S, K)`` to draws stacked as ``(S, *site_shape)``."""
    aligned = {}
    rows = torch.arange(permutations.shape[0])
    for name, value in draws.items():
        for axis in label_axes.get(name, ()):
            # Move the state axis next to the draw axis, gather per draw, move it back.
            moved = value.movedim(axis + 1, 1)
            index = permutations.to(value.device)
            moved = moved[rows.unsqueeze(-1), index]  # (S, K, ...)
            value = moved.movedim(1, axis + 1)
        aligned[name] = value
    return aligned


def align_state_labels(
    model: SequenceModel,
    draws: Mapping[str, Tensor],
    reference: Mapping[str, Tensor] | None = None,
    max_iterations: int = 20,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Relabels the states of posterior draws to one ordering (see module docstring).

    Args:
        model: supplies ``state_label_axes()`` and ``state_label_features(values)``.
        draws: site name -> ``(C, D, *site_shape)`` draws (chains, draws per chain).
        reference: optional site values of the reference labelling (default:
            the first draw of the first chain).
        max_iterations: reference updates at most.

    Returns:
        ``(aligned draws, permutations)``: the draws relabelled (states in the
        canonical order of step 5), and the ``(C, D, K)`` permutation applied
        to each (``aligned[k] = draw[perm[k]]``);
        ``(draws, None)`` unchanged when the model has no state labels.
    """
    label_axes = model.state_label_axes()
    if not label_axes or not draws:
        return dict(draws), None
    first = next(iter(draws.values()))
    chains, per_chain = first.shape[:2]
    flat = {name: value.reshape(chains * per_chain, *value.shape[2:]) for name, value in draws.items()}
    num_draws = chains * per_chain

    def features_of(values: Mapping[str, Tensor]) -> Tensor:
        feature = torch.as_tensor(model.state_label_features(values)).detach().double().cpu()
        return feature.reshape(feature.shape[0], -1)  # (K, F)

    features = torch.stack([features_of({name: value[s] for name, value in flat.items()}) for s in range(num_draws)])
    num_states = features.shape[1]
    if reference is None:
        target = features[0].numpy()
    else:
        target = features_of(reference).numpy()
    array = features.numpy()
    permutations = np.tile(np.arange(num_states), (num_draws, 1))
    for _ in range(max_iterations):
        # cost[s, i, j] = || target_i - features_{s, j} ||^2
        cost = ((target[None, :, None, :] - array[:, None, :, :]) ** 2).sum(-1)
        new = np.stack([linear_sum_assignment(cost[s])[1] for s in range(num_draws)])
        changed = not np.array_equal(new, permutations)
        permutations = new
        aligned_features = np.take_along_axis(array, permutations[:, :, None], axis=1)
        target = aligned_features.mean(0)
        if not changed:
            break
    # Canonical order: the reference states sorted by their features (first feature first),
    # so that e.g. the Gaussian state with the lowest mean is state 0 in every run.
    order = np.lexsort(target.T[::-1])
    permutations = permutations[:, order]
    permutation_tensor = torch.as_tensor(permutations, dtype=torch.long)
    aligned = _permute_draws(flat, permutation_tensor, label_axes)
    aligned = {name: value.reshape(chains, per_chain, *value.shape[1:]) for name, value in aligned.items()}
    return aligned, permutation_tensor.reshape(chains, per_chain, num_states)
