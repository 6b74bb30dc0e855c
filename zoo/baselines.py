"""Count-table baselines for symbol sequences: unigram and bigram.

A latent-state model that does not beat a smoothed bigram table has learned
nothing a bigram table cannot hold, so every comparison on symbol data reports
both. They are fitted by counting (add-``alpha`` smoothing) and scored exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inference.batch import SequenceBatch


def _codes(batch: SequenceBatch, num_symbols: int) -> tuple[Tensor, Tensor]:
    if batch.values.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"batch.values: expected integer symbol codes, got {batch.values.dtype}")
    mask = batch.mask
    codes = batch.values.long()
    if codes.numel() and (codes[mask].min() < 0 or codes[mask].max() >= num_symbols):
        raise ValueError(f"batch.values: expected codes in [0, {num_symbols})")
    return codes, mask


def unigram_log_probs(train: SequenceBatch, num_symbols: int, alpha: float = 0.5) -> Tensor:
    """``(V,)`` log symbol frequencies with add-``alpha`` smoothing."""
    codes, mask = _codes(train, num_symbols)
    counts = torch.bincount(codes[mask], minlength=num_symbols).double() + alpha
    return (counts / counts.sum()).log()


def bigram_log_probs(train: SequenceBatch, num_symbols: int, alpha: float = 0.5) -> tuple[Tensor, Tensor]:
    """Initial ``(V,)`` and transition ``(V, V)`` log probabilities, add-``alpha`` smoothed.

    The first symbol of each sequence is scored by the unigram table.
    """
    codes, mask = _codes(train, num_symbols)
    pair_mask = mask[:, 1:] & mask[:, :-1]
    pairs = codes[:, :-1][pair_mask] * num_symbols + codes[:, 1:][pair_mask]
    counts = torch.bincount(pairs, minlength=num_symbols**2).double().reshape(num_symbols, num_symbols) + alpha
    return unigram_log_probs(train, num_symbols, alpha), (counts / counts.sum(-1, keepdim=True)).log()


def unigram_score(log_probs: Tensor, batch: SequenceBatch) -> Tensor:
    """``(N,)`` log-likelihood of each sequence under a unigram table."""
    codes, mask = _codes(batch, len(log_probs))
    return (log_probs[codes] * mask).sum(-1)


def bigram_score(log_initial: Tensor, log_transition: Tensor, batch: SequenceBatch) -> Tensor:
    """``(N,)`` log-likelihood of each sequence under a bigram table."""
    codes, mask = _codes(batch, len(log_initial))
    first = log_initial[codes[:, 0]] * mask[:, 0]
    steps = log_transition[codes[:, :-1], codes[:, 1:]] * (mask[:, 1:] & mask[:, :-1])
    return first + steps.sum(-1)
