"""The sequential recursions as torch loops over time (any device, scaled space, input dtype).

See :mod:`inference.discrete` for the model, the conventions and the algorithms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import valid_mask as _valid_mask
from ._common import MAPPath, _shift

# --------------------------------------------------------------------------------------
# Torch sequential backend (any device, scaled space, input dtype)
# --------------------------------------------------------------------------------------


def _torch_forward(
    log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Differentiable scaled forward loop; returns ``(log_normalizer (N,), filtered (N, T, K))``."""
    num_seq, num_steps, num_states = log_emission.shape
    if num_steps == 0:
        return log_emission.new_zeros(num_seq), log_emission.new_zeros(num_seq, 0, num_states)
    emission_shift = _shift(log_emission, (-1,))
    emission_probs = (log_emission - emission_shift).exp()
    emission_shift = emission_shift.squeeze(-1)
    transition_shift = _shift(log_transition, (-2, -1))
    transition_probs = (log_transition - transition_shift).exp()
    initial_shift = _shift(log_initial, (-1,))
    valid = _valid_mask(lengths, num_steps)

    def normalise(unnormalised: Tensor) -> tuple[Tensor, Tensor]:
        total = unnormalised.sum(-1, keepdim=True)
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        return unnormalised / safe_total, total.squeeze(-1).log()

    alpha, log_scale = normalise((log_initial - initial_shift).exp() * emission_probs[:, 0])
    zero = log_scale.new_zeros(())
    log_normalizer = torch.where(valid[:, 0], log_scale + emission_shift[:, 0] + initial_shift[..., 0], zero)
    filtered = [alpha * valid[:, 0, None]]
    for t in range(1, num_steps):
        predicted = (alpha.unsqueeze(-2) @ transition_probs).squeeze(-2)
        new_alpha, log_scale = normalise(predicted * emission_probs[:, t])
        step_valid = valid[:, t]
        alpha = torch.where(step_valid[:, None], new_alpha, alpha)
        step_log = log_scale + emission_shift[:, t] + transition_shift.reshape(-1)
        log_normalizer = log_normalizer + torch.where(step_valid, step_log, zero)
        filtered.append(alpha * step_valid[:, None])
    return log_normalizer, torch.stack(filtered, 1)


def _torch_viterbi(log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor) -> MAPPath:
    num_seq, num_steps, num_states = log_emission.shape
    paths = torch.full((num_seq, num_steps), -1, dtype=torch.long, device=log_emission.device)
    if num_steps == 0:
        return MAPPath(paths, log_emission.new_zeros(num_seq))
    valid = _valid_mask(lengths, num_steps)
    delta = log_initial + log_emission[:, 0]
    backpointers = []
    for t in range(1, num_steps):
        best, best_index = (delta[:, :, None] + log_transition).max(dim=1)
        delta = torch.where(valid[:, t, None], best + log_emission[:, t], delta)
        backpointers.append(best_index)
    log_joint, state = delta.max(dim=-1)
    for t in range(num_steps - 1, -1, -1):
        if t < num_steps - 1:
            previous = backpointers[t].gather(1, state[:, None]).squeeze(1)
            state = torch.where(t < lengths - 1, previous, state)
        paths[:, t] = torch.where(valid[:, t], state, paths[:, t])
    return MAPPath(paths, torch.where(lengths > 0, log_joint, log_joint.new_zeros(())))


def _torch_backward_sample(transition_probs: Tensor, filtered: Tensor, lengths: Tensor, uniforms: Tensor) -> Tensor:
    """Backward sampling with a torch loop; ``uniforms`` (S, N, T) -> paths (S, N, T)."""
    num_samples = uniforms.shape[0]
    num_seq, num_steps, num_states = filtered.shape
    paths = torch.full((num_samples, num_seq, num_steps), -1, dtype=torch.long, device=filtered.device)
    # rows [to, :] = potentials from every state into `to`
    into = transition_probs.transpose(-1, -2).expand(num_seq, num_states, num_states)
    into = into.unsqueeze(0).expand(num_samples, -1, -1, -1)
    state = torch.zeros(num_samples, num_seq, dtype=torch.long, device=filtered.device)
    for t in range(num_steps - 1, -1, -1):
        weights = filtered[:, t].expand(num_samples, -1, -1)
        if t < num_steps - 1:
            index = state[..., None, None].expand(-1, -1, 1, num_states)
            conditioned = weights * into.gather(2, index).squeeze(2)
            weights = torch.where((t < lengths - 1)[None, :, None], conditioned, weights)
        cumulative = weights.cumsum(-1)
        target = uniforms[..., t, None] * cumulative[..., -1:]
        drawn = (cumulative <= target).sum(-1).clamp(max=num_states - 1)
        state = drawn
        paths[..., t] = torch.where(t < lengths, drawn, paths[..., t])
    return paths
