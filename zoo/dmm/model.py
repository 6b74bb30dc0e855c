"""The deep Markov model (:class:`DeepMarkovModel`), its transitions, the guide's posterior
record (:class:`DMMPosterior`) and length-bucketed mini-batches (:func:`length_buckets`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import Tensor, nn

from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.training import KLAnnealing, LossOutput

from .kernels import (
    _gaussian_kl,
    _LengthOrder,
    _LowPrecisionLinear,
    _normal_log_prob,
    _run_rnn,
    _StructuredGuideLoop,
)

__all__ = ["DeepMarkovModel", "DMMPosterior", "GatedTransition", "LinearTransition", "length_buckets"]

OBSERVATIONS: tuple[str, ...] = ("bernoulli", "categorical", "gaussian")
GUIDES: tuple[str, ...] = ("st-r", "st-lr", "mf")
TRANSITIONS: tuple[str, ...] = ("gated", "linear")
EMISSIONS: tuple[str, ...] = ("mlp", "linear")
RNN_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
#: Rows (sequence copies) of one pass of the IWAE bound; more particles take several passes (memory).
IWAE_SEQUENCES_PER_PASS = 2048


class DMMPosterior(NamedTuple):
    """Posterior state trajectories of the guide.

    Attributes:
        loc: ``(N, T, Z)`` the mean of each :math:`q(z_t \\mid z_{t-1}, x)` along the guide's
            mean path (:math:`z_{t-1}` set to the previous step's mean; before any flow).
        scale: ``(N, T, Z)`` its standard deviations.
        samples: ``(S, N, T, Z)`` paths drawn from the guide (flows included), or None.
        mask: ``(N, T)`` True on real steps.
    """

    loc: Tensor
    scale: Tensor
    samples: Tensor | None
    mask: Tensor


class _GuidePath(NamedTuple):
    z: Tensor  # (N, T, Z) sampled path (after flows)
    base: Tensor  # (N, T, Z) the Gaussian draw before flows
    loc: Tensor  # (N, T, Z)
    scale: Tensor  # (N, T, Z)
    log_det: Tensor | None  # (N, T) sum of flow log-Jacobians, None without flows


class GatedTransition(nn.Module):
    """:math:`p(z_t \\mid z_{t-1})`: a learned gate mixes a linear and a nonlinear proposal for the mean.

    ``loc = (1 - g) * A z + g * h(z)``, ``g = sigmoid(MLP(z))``, ``scale = softplus(W relu(h(z))) + floor``
    (Krishnan et al. 2017, Sec. 5; Pyro's ``GatedTransition``). ``A`` starts at the identity.
    """

    def __init__(self, z_dim: int, transition_dim: int, min_scale: float) -> None:
        super().__init__()
        self.gate_hidden = nn.Linear(z_dim, transition_dim)
        self.gate_out = nn.Linear(transition_dim, z_dim)
        self.proposal_hidden = nn.Linear(z_dim, transition_dim)
        self.proposal_out = nn.Linear(transition_dim, z_dim)
        self.linear_mean = nn.Linear(z_dim, z_dim)
        self.scale_out = nn.Linear(z_dim, z_dim)
        self.min_scale = min_scale
        with torch.no_grad():
            self.linear_mean.weight.copy_(torch.eye(z_dim))
            self.linear_mean.bias.zero_()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(..., Z) -> loc (..., Z), scale (..., Z)``."""
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_hidden(z))))
        proposal = self.proposal_out(F.relu(self.proposal_hidden(z)))
        loc = torch.lerp(self.linear_mean(z), proposal, gate)
        scale = F.softplus(self.scale_out(F.relu(proposal))) + self.min_scale
        return loc, scale


class LinearTransition(nn.Module):
    """:math:`z_t = A z_{t-1} + b + \\epsilon`, :math:`\\epsilon \\sim N(0, \\operatorname{diag}(s^2))`, s = softplus + floor."""

    def __init__(self, z_dim: int, min_scale: float) -> None:
        super().__init__()
        self.matrix = nn.Linear(z_dim, z_dim)
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))
        self.min_scale = min_scale
        with torch.no_grad():
            self.matrix.weight.copy_(0.9 * torch.eye(z_dim))
            self.matrix.bias.zero_()

    def scale(self) -> Tensor:
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.matrix(z)
        return loc, self.scale().expand_as(loc)


class DeepMarkovModel(SequenceModel):
    """A deep Markov model with a structured RNN guide.

    Args:
        observation: ``"bernoulli"`` (multi-hot frames ``(N, T, D)``), ``"categorical"``
            (codes ``(N, T)`` in ``[0, num_symbols)``) or ``"gaussian"`` (``(N, T, D)`` floats,
            NaN = missing, one learned standard deviation per dimension).
        dim: ``D`` (Bernoulli and Gaussian). num_symbols: ``K`` (categorical).
        z_dim: ``Z``, latent width. transition_dim: hidden width of the gated transition.
        emitter_dim: hidden width of the MLP emitter. rnn_dim: guide RNN width.
        guide: ``"st-r"``, ``"st-lr"`` or ``"mf"`` (see the module docstring).
        num_iafs: inverse autoregressive flows after each ``q(z_t | .)``; iaf_dim their hidden width.
        transition: ``"gated"`` or ``"linear"`` (linear-Gaussian).
        emission: ``"mlp"`` (two ReLU layers) or ``"linear"``; linear transition + linear Gaussian
            emission is a Kalman filter with diagonal noise.
        min_scale: floor added to every standard deviation (prior, guide, Gaussian emission), so a
            high learning rate cannot collapse a scale to 0 (Pyro's example NaNs there).
        guide_dropout: dropout rate on the guide RNN's summary in :meth:`loss` in ``train()`` mode
            (0: none); a regulariser of the amortised guide, never applied when scoring or sampling.
        rnn_precision: ``"float32"`` (default: the inputs' dtype) or ``"bfloat16"``: the matrix
            products of the guide RNN and of its projection to ``[loc, scale]`` (forward, backward,
            weight gradients) on bfloat16-rounded factors, with float32 sums, state and parameters;
            faster on CPUs with bfloat16 instructions, not exact (gradients within ~1%).

    Example:
        >>> model = DeepMarkovModel("bernoulli", dim=4, z_dim=2, transition_dim=8, emitter_dim=8, rnn_dim=8)
        >>> batch = SequenceBatch.from_sequences([torch.ones(5, 4), torch.zeros(3, 4)])
        >>> model.log_prob_batch(batch, num_particles=3).shape
        torch.Size([2])
        >>> model.sample(2, 7).values.shape
        torch.Size([2, 7, 4])
    """

    family = "dmm"
    exact_likelihood = False
    likelihood_kind = "ELBO"

    def __init__(
        self,
        observation: str = "bernoulli",
        *,
        dim: int | None = None,
        num_symbols: int | None = None,
        z_dim: int = 100,
        transition_dim: int = 200,
        emitter_dim: int = 100,
        rnn_dim: int = 600,
        guide: str = "st-r",
        num_iafs: int = 0,
        iaf_dim: int = 100,
        transition: str = "gated",
        emission: str = "mlp",
        min_scale: float = 1e-2,
        rnn_precision: str = "float32",
        guide_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("observation", observation, OBSERVATIONS),
            ("guide", guide, GUIDES),
            ("transition", transition, TRANSITIONS),
            ("emission", emission, EMISSIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        for name, value in (
            ("z_dim", z_dim),
            ("transition_dim", transition_dim),
            ("emitter_dim", emitter_dim),
            ("rnn_dim", rnn_dim),
            ("iaf_dim", iaf_dim),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(num_iafs, int) or num_iafs < 0:
            raise ValueError(f"num_iafs: expected a nonnegative int, got {num_iafs!r}")
        if rnn_precision not in RNN_PRECISIONS:
            raise ValueError(f"rnn_precision: expected one of {RNN_PRECISIONS}, got {rnn_precision!r}")
        if not (isinstance(guide_dropout, (int, float)) and 0 <= guide_dropout < 1):
            raise ValueError(f"guide_dropout: expected a number in [0, 1), got {guide_dropout!r}")
        if not (isinstance(min_scale, (int, float)) and min_scale > 0):
            raise ValueError(f"min_scale: expected a positive float, got {min_scale!r}")
        if observation == "categorical":
            if not isinstance(num_symbols, int) or num_symbols < 1 or dim is not None:
                raise ValueError(
                    f"categorical observations need num_symbols (a positive int) and no dim; "
                    f"got num_symbols={num_symbols!r}, dim={dim!r}"
                )
        elif not isinstance(dim, int) or dim < 1 or num_symbols is not None:
            raise ValueError(
                f"{observation} observations need dim (a positive int) and no num_symbols; "
                f"got dim={dim!r}, num_symbols={num_symbols!r}"
            )
        self.observation, self.dim, self.num_symbols = observation, dim, num_symbols
        self.z_dim, self.transition_dim, self.emitter_dim, self.rnn_dim = z_dim, transition_dim, emitter_dim, rnn_dim
        self.guide_kind, self.num_iafs, self.iaf_dim = guide, num_iafs, iaf_dim
        self.transition_kind, self.emission_kind, self.min_scale = transition, emission, float(min_scale)
        self.rnn_precision = rnn_precision
        self.guide_dropout = float(guide_dropout)
        self._dropout_active = False
        #: Training settings behind :meth:`fit_defaults` (see :meth:`configure_fit`).
        self.fit_settings: dict[str, Any] = {
            "annealing_epochs": 10,
            "min_annealing": 0.2,
            "num_particles": 1,
            "weight_decay": 0.0,
            "average_decay": 0.0,
        }

        width = num_symbols if observation == "categorical" else dim
        # -- generative model
        self.transition = (
            GatedTransition(z_dim, transition_dim, self.min_scale)
            if transition == "gated"
            else LinearTransition(z_dim, self.min_scale)
        )
        self.emitter = (
            nn.Sequential(
                nn.Linear(z_dim, emitter_dim),
                nn.ReLU(),
                nn.Linear(emitter_dim, emitter_dim),
                nn.ReLU(),
                nn.Linear(emitter_dim, width),
            )
            if emission == "mlp"
            else nn.Linear(z_dim, width)
        )
        self.emission_raw_scale = nn.Parameter(torch.zeros(dim)) if observation == "gaussian" else None
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        # -- guide (names start with "guide_", so num_parameters counts the model only)
        rnn_input = 2 * dim if observation == "gaussian" else width  # Gaussian: values + observed indicators
        bidirectional = guide != "st-r"
        # tanh, not Pyro's relu: a bounded state cannot blow up at a high learning rate.
        # Two single-direction RNNs rather than nn.RNN(bidirectional=True), whose backward pass
        # would read the padding first.
        self.guide_rnn = nn.RNN(rnn_input, rnn_dim, nonlinearity="tanh", batch_first=True)
        self.guide_rnn_forward = (
            nn.RNN(rnn_input, rnn_dim, nonlinearity="tanh", batch_first=True) if bidirectional else None
        )
        self.guide_h_0 = nn.Parameter(torch.zeros(2 if bidirectional else 1, rnn_dim))
        self.guide_z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.guide_z_to_hidden = nn.Linear(z_dim, rnn_dim) if guide != "mf" else None
        self.guide_loc_scale = nn.Linear(rnn_dim, 2 * z_dim)
        self.guide_iafs = nn.ModuleList(
            AffineAutoregressive(AutoRegressiveNN(z_dim, [iaf_dim]), sigmoid_bias=3.0) for _ in range(num_iafs)
        )

    @property
    def _rnn_matmul_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.rnn_precision == "bfloat16" else None

    def config(self) -> dict[str, Any]:
        return {
            "observation": self.observation,
            "dim": self.dim,
            "num_symbols": self.num_symbols,
            "z_dim": self.z_dim,
            "transition_dim": self.transition_dim,
            "emitter_dim": self.emitter_dim,
            "rnn_dim": self.rnn_dim,
            "guide": self.guide_kind,
            "num_iafs": self.num_iafs,
            "iaf_dim": self.iaf_dim,
            "transition": self.transition_kind,
            "emission": self.emission_kind,
            "min_scale": self.min_scale,
            "rnn_precision": self.rnn_precision,
            "guide_dropout": self.guide_dropout,
        }

    def configure_fit(
        self,
        *,
        annealing_epochs: int | None = None,
        min_annealing: float | None = None,
        num_particles: int | None = None,
        weight_decay: float | None = None,
        average_decay: float | None = None,
    ) -> DeepMarkovModel:
        """Sets what :meth:`fit_defaults` returns (``seqzoo fit dmm`` flags): KL annealing from
        ``min_annealing`` to 1 over ``annealing_epochs`` epochs (0: none), and ``num_particles`` for the
        final scores (1: ELBO; M > 1: the IWAE bound), ``weight_decay``, the trainer's L2 prior
        precision on the weights (0: none), and ``average_decay``, the decay per optimiser step of the
        trainer's parameter average, which the fit ends with (0: none, the last iterate). Not part of
        :meth:`config` (training, not the model)."""
        if annealing_epochs is not None:
            if not isinstance(annealing_epochs, int) or isinstance(annealing_epochs, bool) or annealing_epochs < 0:
                raise ValueError(f"annealing_epochs: expected a nonnegative int, got {annealing_epochs!r}")
            self.fit_settings["annealing_epochs"] = annealing_epochs
        if min_annealing is not None:
            if not isinstance(min_annealing, (int, float)) or not 0 <= min_annealing <= 1:
                raise ValueError(f"min_annealing: expected a number in [0, 1], got {min_annealing!r}")
            self.fit_settings["min_annealing"] = float(min_annealing)
        if num_particles is not None:
            if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
                raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
            self.fit_settings["num_particles"] = num_particles
        if weight_decay is not None:
            if (
                not isinstance(weight_decay, (int, float))
                or isinstance(weight_decay, bool)
                or not 0 <= weight_decay < math.inf
            ):
                raise ValueError(f"weight_decay: expected a nonnegative number, got {weight_decay!r}")
            self.fit_settings["weight_decay"] = float(weight_decay)
        if average_decay is not None:
            if (
                isinstance(average_decay, bool)
                or not isinstance(average_decay, (int, float))
                or not (0 <= average_decay < 1)
            ):
                raise ValueError(f"average_decay: expected a number in [0, 1) (0: off), got {average_decay!r}")
            self.fit_settings["average_decay"] = float(average_decay)
        return self

    def fit_defaults(self, method: str):
        """The DMM's SVI recipe, what ``fit(model, train)`` and ``seqzoo fit dmm`` both train with:
        the vectorised :meth:`loss` (``loss="model"``), length-bucketed mini-batches of the paper's 20
        sequences (:func:`length_buckets`), lr 3e-3 after one warm-up epoch, decaying exponentially
        to 5e-4 at ``max_epochs`` (3,000), global-norm clip 10, and what :meth:`configure_fit` sets
        (KL annealing, weight decay, the parameter average). Validation every 5 epochs with a
        patience of 40 evaluations (200 epochs): one draw of the validation ELBO is noisy (about
        0.03 nats per step on JSB's 76 validation chorales) while the bound still improves by a few
        thousandths per epoch, so a short patience stops a run that is still improving."""
        defaults = super().fit_defaults(method)
        if method != "svi":
            return defaults
        settings = self.fit_settings
        annealing = (
            KLAnnealing(start=settings["min_annealing"], epochs=settings["annealing_epochs"])
            if settings["annealing_epochs"]
            else None
        )
        return dataclasses.replace(
            defaults,
            loss="model",
            minibatches=length_buckets,
            batch_size=20,
            max_epochs=3000,
            learning_rate=3e-3,
            final_learning_rate=5e-4,
            warmup_epochs=1,
            clip_norm=10.0,
            weight_decay=settings["weight_decay"],
            average_decay=settings["average_decay"] or None,
            step_kwargs=annealing,
            eval_every=5,
            patience=40,
        )

    def score_particles(self) -> int:
        """The particles of the reported scores (``--particles``): 1 = ELBO, M > 1 = the IWAE bound."""
        return int(self.fit_settings["num_particles"])

    def likelihood_label(self, num_particles: int = 1) -> str:
        return "ELBO" if num_particles == 1 else f"IWAE bound (M={num_particles})"

    # -- observations ------------------------------------------------------
    def _check_batch(self, batch: SequenceBatch) -> None:
        values = batch.values
        if self.observation == "categorical":
            if values.dim() != 2:
                raise ValueError(f"batch.values: categorical observations need shape (N, T), got {tuple(values.shape)}")
            real = values[batch.mask]
            if real.numel() and (
                real.is_floating_point() or int(real.min()) < 0 or int(real.max()) >= self.num_symbols
            ):
                raise ValueError(f"batch.values: expected integer codes in [0, {self.num_symbols}) on real steps")
        elif values.dim() != 3 or values.shape[-1] != self.dim:
            raise ValueError(
                f"batch.values: {self.observation} observations need shape (N, T, {self.dim}), "
                f"got {tuple(values.shape)}"
            )

    def _inputs(self, batch: SequenceBatch) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(rnn inputs (N, T, I), clean observations, observed-entry mask or None)``; padding zeroed."""
        mask = batch.mask
        values = batch.values
        dtype = self.guide_loc_scale.weight.dtype
        if self.observation == "categorical":
            codes = torch.where(mask, values.long(), torch.zeros_like(values, dtype=torch.long))
            return F.one_hot(codes, self.num_symbols).to(dtype), codes, None
        values = values.to(dtype)
        if self.observation == "bernoulli":
            clean = torch.where(mask.unsqueeze(-1), values, torch.zeros((), dtype=dtype))
            return clean, clean, None
        observed = mask.unsqueeze(-1) & ~torch.isnan(values)
        clean = torch.where(observed, values, torch.zeros((), dtype=dtype))
        return torch.cat([clean, observed.to(dtype)], -1), clean, observed

    def _emission_log_prob(self, z: Tensor, clean: Tensor, observed: Tensor | None) -> Tensor:
        """``log p(x_t | z_t)`` for every step, ``(..., N, T)`` (padded steps not yet masked)."""
        out = self.emitter(z)
        if self.observation == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, clean.expand_as(out), reduction="none").sum(-1)
        if self.observation == "categorical":
            return out.log_softmax(-1).gather(-1, clean.expand(out.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        scale = self.emission_scale()
        return torch.where(
            observed,
            _normal_log_prob(clean.unsqueeze(-1), out.unsqueeze(-1), scale.unsqueeze(-1)),
            torch.zeros((), dtype=out.dtype),
        ).sum(-1)

    def emission_scale(self) -> Tensor:
        """``(D,)`` Gaussian emission standard deviations."""
        return F.softplus(self.emission_raw_scale) + self.min_scale

    def _emission_distribution(self, z: Tensor) -> dist.Distribution:
        out = self.emitter(z)
        if self.observation == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        if self.observation == "categorical":
            return dist.Categorical(logits=out)
        return dist.Normal(out, self.emission_scale()).to_event(1)

    # -- guide -------------------------------------------------------------
    def _rnn_summary(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """``(N, T, R)``: the backward RNN over :math:`x_{t:L}` (``st-r``) or the mean of both
        directions (``st-lr``, ``mf``). Each sequence is reversed within its own length, so padding
        is read after the real steps and never reaches them."""
        n, t = inputs.shape[:2]
        steps = torch.arange(t, device=inputs.device)
        reverse = torch.where(steps < lengths.unsqueeze(-1), lengths.unsqueeze(-1) - 1 - steps, steps)  # (N, T)
        gather = reverse.unsqueeze(-1)
        reversed_inputs = inputs.gather(1, gather.expand_as(inputs))
        h_0 = self.guide_h_0
        backward = _run_rnn(
            self.guide_rnn, reversed_inputs, h_0[0].expand(n, self.rnn_dim), lengths, self._rnn_matmul_dtype
        )
        backward = backward.gather(1, gather.expand_as(backward))
        if self.guide_rnn_forward is None:
            return backward
        forward = _run_rnn(
            self.guide_rnn_forward, inputs, h_0[1].expand(n, self.rnn_dim), lengths, self._rnn_matmul_dtype
        )
        return 0.5 * (forward + backward)

    def _guide_features(self, batch: SequenceBatch, inputs: Tensor) -> Tensor:
        """``(N, T, 2Z)``: the part of each step's ``[loc, raw scale]`` that does not depend on
        :math:`z_{t-1}`, for all steps at once (the combiner is linear after its tanh, so the
        RNN's share is computed outside the sequential loop)."""
        summary = self._rnn_summary(inputs, batch.lengths)
        if self._dropout_active:
            # Regularises the amortised guide (each dropout mask is still a valid q).
            summary = F.dropout(summary, self.guide_dropout)
        if self.guide_kind == "mf":
            return self.guide_loc_scale(summary)
        # Combiner (Pyro's): h = (tanh(W z_{t-1}) + h_rnn) / 2; loc, scale from h; the h_rnn half here.
        if self._rnn_matmul_dtype is not None:
            return _LowPrecisionLinear.apply(
                0.5 * summary, self.guide_loc_scale.weight, self.guide_loc_scale.bias, self._rnn_matmul_dtype
            )
        return F.linear(0.5 * summary, self.guide_loc_scale.weight, self.guide_loc_scale.bias)

    def _guide_conditional(self, z_prev: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z_t | z_{t-1}, x)``'s ``loc, scale`` ``(..., Z)`` from ``z_prev (..., Z)`` and one step of
        :meth:`_guide_features`."""
        if self.guide_z_to_hidden is not None:
            hidden = torch.tanh(self.guide_z_to_hidden(z_prev))
            if hidden.dim() == 2 and features.dim() == 2:
                # features + 0.5 * hidden @ W^T as one op (this runs once per time step)
                features = torch.addmm(features, hidden, self.guide_loc_scale.weight.t(), alpha=0.5)
            else:
                features = features + F.linear(0.5 * hidden, self.guide_loc_scale.weight)
        loc, raw_scale = features.chunk(2, -1)
        return loc, F.softplus(raw_scale) + self.min_scale

    def _sample_guide(
        self,
        batch: SequenceBatch,
        inputs: Tensor,
        mean_path: bool = False,
        noise: Tensor | None = None,
        features: Tensor | None = None,
    ) -> _GuidePath:
        """Draws :math:`z_{1:T} \\sim q` step by step (``mean_path``: feeds each step's mean forward, no
        noise; ``noise``: ``(N, T, Z)`` standard normal draws to use instead of torch's RNG; ``features``:
        :meth:`_guide_features` if already computed)."""
        if features is None:
            features = self._guide_features(batch, inputs)
        n, t = features.shape[:2]
        if (
            not self.num_iafs
            and self.guide_z_to_hidden is not None
            and type(self)._guide_conditional is DeepMarkovModel._guide_conditional
        ):
            # The structured guides without flows: the whole loop is one node with a fused backward.
            # Rows sorted by length so that each step computes only the sequences still running.
            rows = _LengthOrder.of(batch.lengths, t)
            step_noise = torch.zeros_like(features[..., : self.z_dim]) if mean_path else noise
            z, loc, scale = _StructuredGuideLoop.apply(
                features[rows.order],
                None if step_noise is None else step_noise[rows.order],
                self.guide_z_q_0,
                self.guide_z_to_hidden.weight,
                self.guide_z_to_hidden.bias,
                self.guide_loc_scale.weight,
                self.min_scale,
                rows.active,
                rows.order,
            )
            z, loc, scale = z[rows.inverse], loc[rows.inverse], scale[rows.inverse]
            return _GuidePath(z, z, loc, scale, None)
        z_prev = self.guide_z_q_0.expand(n, self.z_dim)
        zs, bases, locs, scales, log_dets = [], [], [], [], []
        iafs = list(self.guide_iafs)
        # unbind once: slicing features[:, step] in the loop would cost one full-size zero gradient per step.
        feature_steps = features.unbind(1)
        noise_steps = noise.unbind(1) if noise is not None else None
        for step in range(t):
            loc, scale = self._guide_conditional(z_prev, feature_steps[step])
            if mean_path:
                base = loc
            else:
                # one draw per step (as Pyro's guide does), so the same seed gives the same path
                base = torch.addcmul(loc, scale, torch.randn_like(loc) if noise_steps is None else noise_steps[step])
            z = base
            if iafs:
                log_det = torch.zeros(n, dtype=z.dtype, device=z.device)
                for iaf in iafs:
                    z_next = iaf(z)
                    log_det = log_det + iaf.log_abs_det_jacobian(z, z_next)
                    z = z_next
                log_dets.append(log_det)
            zs.append(z)
            bases.append(base)
            locs.append(loc)
            scales.append(scale)
            z_prev = z
        stack = lambda xs: torch.stack(xs, 1)  # noqa: E731  (N, T, Z)
        return _GuidePath(
            stack(zs), stack(bases), stack(locs), stack(scales), torch.stack(log_dets, 1) if iafs else None
        )

    # -- the vectorised objective ----------------------------------------
    def _step_terms(self, batch: SequenceBatch, estimator: str, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One guide sample; ``(log p(x_t | z_t), KL_t)`` each ``(N, T)``, zero at padded steps.

        ``estimator``: ``"analytic"`` (Gaussian KL at the sampled :math:`z_{t-1}`; needs no flows)
        or ``"mc"`` (:math:`\\log q(z_t \\mid \\cdot) - \\log p(z_t \\mid z_{t-1})` at the sample).
        """
        self._check_batch(batch)
        if estimator not in ("analytic", "mc"):
            raise ValueError(f"estimator: expected 'analytic' or 'mc', got {estimator!r}")
        if estimator == "analytic" and self.num_iafs:
            raise ValueError("estimator: the analytic KL needs a Gaussian guide; with flows use 'mc'")
        inputs, clean, observed = self._inputs(batch)
        return self._path_terms(batch, self._sample_guide(batch, inputs, noise=noise), clean, observed, estimator)

    def _path_terms(
        self, batch: SequenceBatch, path: _GuidePath, clean: Tensor, observed: Tensor | None, estimator: str
    ) -> tuple[Tensor, Tensor]:
        """``(log p(x_t | z_t), KL_t)`` each ``(N, T)`` of a guide ``path`` (see :meth:`_step_terms`)."""
        n = path.z.shape[0]
        mask = batch.mask
        # Every term below only on the R real steps (rows (R, Z)), so padding costs nothing.
        z = path.z[mask]
        z_prev = torch.cat([self.z_0.expand(n, 1, self.z_dim), path.z[:, :-1]], 1)[mask]
        prior_loc, prior_scale = self.transition(z_prev)
        if estimator == "analytic":
            kl = _gaussian_kl(path.loc[mask], path.scale[mask], prior_loc, prior_scale)
        else:
            log_q = _normal_log_prob(path.base[mask], path.loc[mask], path.scale[mask])
            if path.log_det is not None:
                log_q = log_q - path.log_det[mask]
            kl = log_q - _normal_log_prob(z, prior_loc, prior_scale)
        log_lik = self._emission_log_prob(z, clean[mask], None if observed is None else observed[mask])
        zeros = torch.zeros(mask.shape, dtype=kl.dtype, device=kl.device)
        return zeros.masked_scatter(mask, log_lik), zeros.masked_scatter(mask, kl)

    def default_estimator(self) -> str:
        """``"analytic"`` KL without flows, ``"mc"`` with them."""
        return "mc" if self.num_iafs else "analytic"

    def elbo_per_sequence(
        self, batch: SequenceBatch, estimator: str | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """``(N,)`` single-sample ELBO estimate of each sequence (``noise``: optional ``(N, T, Z)``
        standard normal draws for the guide; default torch's global RNG)."""
        log_lik, kl = self._step_terms(batch, estimator or self.default_estimator(), noise)
        return (log_lik - kl).sum(-1)

    def loss(self, batch: SequenceBatch, annealing_factor: float = 1.0, estimator: str | None = None) -> LossOutput:
        """The fast training objective (the contract's ``loss`` capability, ``fit(..., loss="model")``).

        Returns:
            ``LossOutput(loss, objective)``: ``loss`` = annealed negative ELBO
            :math:`-(\\sum \\log p(x|z) - a \\sum KL)`, ``objective`` = the unannealed ELBO (a float
            tensor, nats), both scaled by ``population / N`` to the whole data set like Pyro's
            ``sequence_plate``.
        """
        # Guide dropout acts in this training objective only, in train() mode; never when scoring.
        self._dropout_active = self.training and self.guide_dropout > 0
        try:
            log_lik, kl = self._step_terms(batch, estimator or self.default_estimator())
        finally:
            self._dropout_active = False
        scale = (batch.population or batch.num_sequences) / batch.num_sequences
        log_lik, kl = log_lik.sum() * scale, kl.sum() * scale
        return LossOutput(loss=-(log_lik - annealing_factor * kl), objective=(log_lik - kl).detach())

    # -- scoring -----------------------------------------------------------
    def log_prob_batch(self, batch: SequenceBatch, *, num_particles: int = 1) -> Tensor:
        """``(N,)`` ELBO (``num_particles == 1``, analytic KL without flows) or the importance-weighted
        bound :math:`\\log \\frac1M \\sum_m p(x, z^m) / q(z^m \\mid x)` (Burda et al. 2016), which
        rises with ``M`` towards :math:`\\log p(x)`. Randomness from torch's global RNG."""
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
        if num_particles == 1:
            return self.elbo_per_sequence(batch)
        n = batch.num_sequences
        # Particles go through the guide as copies of the batch, at most IWAE_SEQUENCES_PER_PASS rows at once.
        per_pass = max(1, IWAE_SEQUENCES_PER_PASS // n)
        log_weights = []
        for start in range(0, num_particles, per_pass):
            copies = min(per_pass, num_particles - start)
            repeated = SequenceBatch(
                batch.values.repeat((copies,) + (1,) * (batch.values.dim() - 1)), batch.lengths.repeat(copies)
            )
            log_weights.append(self.elbo_per_sequence(repeated, estimator="mc").reshape(copies, n))
        return torch.cat(log_weights).logsumexp(0) - math.log(num_particles)

    def log_prob(self, values: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(N,)`` single-sample ELBO of each sequence (a bound: see :meth:`log_prob_batch`)."""
        return self.log_prob_batch(SequenceBatch.from_tensor(values, lengths))

    def log_joint(self, batch: SequenceBatch, z: Tensor) -> Tensor:
        """``(N,)`` :math:`\\log p(x_{1:L}, z_{1:L})` at a given path ``z (N, T, Z)`` (padding ignored)."""
        self._check_batch(batch)
        _, clean, observed = self._inputs(batch)
        z_prev = torch.cat([self.z_0.expand(z.shape[0], 1, self.z_dim), z[:, :-1]], 1)
        prior_loc, prior_scale = self.transition(z_prev)
        terms = _normal_log_prob(z, prior_loc, prior_scale) + self._emission_log_prob(z, clean, observed)
        return torch.where(batch.mask, terms, torch.zeros((), dtype=terms.dtype)).sum(-1)

    # -- Pyro model and guide (the reference; the per-step loop of Pyro's examples/dmm.py) --------
    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0) -> None:
        self._check_batch(batch)
        _, clean, observed = self._inputs(batch)
        mask = batch.mask
        n = batch.num_sequences
        with sequence_plate(batch):
            z_prev = self.z_0.expand(n, self.z_dim)
            for t in pyro.markov(range(batch.max_length)):
                loc, scale = self.transition(z_prev)
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t + 1}", dist.Normal(loc, scale).to_event(1).mask(mask[:, t]))
                emission = self._emission_distribution(z)
                if self.observation == "gaussian":
                    # Missing entries: a per-entry mask under the event dim.
                    emission = (
                        dist.Normal(emission.base_dist.loc, emission.base_dist.scale).mask(observed[:, t]).to_event(1)
                    )
                pyro.sample(f"x_{t + 1}", emission.mask(mask[:, t]), obs=clean[:, t])
                z_prev = z

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0) -> None:
        self._check_batch(batch)
        inputs, _, _ = self._inputs(batch)
        features = self._guide_features(batch, inputs)
        mask = batch.mask
        n = batch.num_sequences
        with sequence_plate(batch):
            z_prev = self.guide_z_q_0.expand(n, self.z_dim)
            for t in pyro.markov(range(batch.max_length)):
                loc, scale = self._guide_conditional(z_prev, features[:, t])
                if self.num_iafs:
                    # The flows have event_dim 1, so the transformed distribution already has event_dim 1.
                    q = dist.TransformedDistribution(dist.Normal(loc, scale), list(self.guide_iafs))
                else:
                    q = dist.Normal(loc, scale).to_event(1)
                with poutine.scale(scale=annealing_factor):
                    z_prev = pyro.sample(f"z_{t + 1}", q.mask(mask[:, t]))

    # -- generation and posterior ----------------------------------------
    @torch.no_grad()
    def sample(self, num_sequences: int, length: int, generator: torch.Generator | None = None) -> SequenceBatch:
        """``num_sequences`` new sequences of ``length`` steps drawn from the model."""
        return self.sample_with_states(num_sequences, length, generator)[0]

    @torch.no_grad()
    def sample_with_states(
        self, num_sequences: int, length: int, generator: torch.Generator | None = None
    ) -> tuple[SequenceBatch, Tensor]:
        """Like :meth:`sample`, also returning the latent path ``(N, T, Z)``."""
        if not isinstance(num_sequences, int) or num_sequences < 1 or not isinstance(length, int) or length < 1:
            raise ValueError(f"num_sequences, length: expected positive ints, got {num_sequences!r}, {length!r}")
        ref = self.z_0
        z_prev = ref.expand(num_sequences, self.z_dim)
        zs = []
        for _ in range(length):
            loc, scale = self.transition(z_prev)
            z_prev = loc + scale * torch.randn(loc.shape, generator=generator, dtype=ref.dtype, device=ref.device)
            zs.append(z_prev)
        z = torch.stack(zs, 1)
        out = self.emitter(z)
        if self.observation == "bernoulli":
            values = torch.bernoulli(torch.sigmoid(out), generator=generator)
        elif self.observation == "categorical":
            values = torch.multinomial(out.softmax(-1).reshape(-1, self.num_symbols), 1, generator=generator).reshape(
                num_sequences, length
            )
        else:
            values = out + self.emission_scale() * torch.randn(
                out.shape, generator=generator, dtype=out.dtype, device=out.device
            )
        return SequenceBatch.from_tensor(values), z

    @torch.no_grad()
    def posterior(self, batch: SequenceBatch, num_samples: int = 0) -> DMMPosterior:
        """The guide's state trajectories for ``batch`` (what ``seqzoo decode`` writes)."""
        self._check_batch(batch)
        inputs, _, _ = self._inputs(batch)
        mean = self._sample_guide(batch, inputs, mean_path=True)
        samples = None
        if num_samples:
            samples = torch.stack([self._sample_guide(batch, inputs).z for _ in range(num_samples)])
        mask = batch.mask.unsqueeze(-1)
        zero = torch.zeros((), dtype=mean.loc.dtype)
        return DMMPosterior(
            torch.where(mask, mean.loc, zero),
            torch.where(mask, mean.scale, zero),
            None if samples is None else torch.where(mask, samples, zero),
            batch.mask,
        )

    @torch.no_grad()
    def sample_states(
        self,
        values: Tensor,
        lengths: Tensor | None = None,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``(num_samples, N, T, Z)`` latent paths drawn from the guide :math:`q(z_{1:T} \\mid x)` (flows
        included), NaN past each sequence's length: the posterior state trajectories that
        :func:`inference.arviz.to_inference_data` exports. Draws come from ``generator`` (default torch's RNG)."""
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
        batch = SequenceBatch.from_tensor(values, lengths)
        self._check_batch(batch)
        n, t = batch.num_sequences, batch.max_length
        # Draws go through the guide as copies of the batch, at most IWAE_SEQUENCES_PER_PASS rows at once.
        per_pass = max(1, IWAE_SEQUENCES_PER_PASS // n)
        paths = []
        for start in range(0, num_samples, per_pass):
            copies = min(per_pass, num_samples - start)
            repeated = SequenceBatch(
                batch.values.repeat((copies,) + (1,) * (batch.values.dim() - 1)), batch.lengths.repeat(copies)
            )
            inputs, _, _ = self._inputs(repeated)
            noise = torch.randn(
                (copies * n, t, self.z_dim), generator=generator, dtype=inputs.dtype, device=inputs.device
            )
            paths.append(self._sample_guide(repeated, inputs, noise=noise).z.reshape(copies, n, t, self.z_dim))
        z = torch.cat(paths)
        return torch.where(batch.mask.unsqueeze(-1), z, torch.full((), math.nan, dtype=z.dtype))

    def transition_fixed_point(self, start: Tensor, iterations: int = 500) -> Tensor:
        """Iterates the transition mean ``z -> loc(z)`` from ``start (..., Z)``; a fixed point when it converges."""
        z = start
        with torch.no_grad():
            for _ in range(iterations):
                z = self.transition(z)[0]
        return z


# ----------------------------------------------------------------------------
# Mini-batches for fit(..., options=SVIOptions(minibatches=length_buckets))
# ----------------------------------------------------------------------------
def length_buckets(batch: SequenceBatch, batch_size: int, generator: torch.Generator):
    """Mini-batches of sequences of similar length (sorted by length after a random jitter, batches
    in random order), scaled to the full data; the sequential guide loop then runs ~the mean length,
    not each batch's longest."""
    n = batch.num_sequences
    jitter = torch.rand(n, generator=generator) * 0.5 * float(batch.lengths.float().std().clamp(min=1.0))
    order = torch.argsort(batch.lengths.float() + jitter)
    pieces = list(order.split(batch_size))
    for i in torch.randperm(len(pieces), generator=generator).tolist():
        yield batch[pieces[i]].with_population(n)
