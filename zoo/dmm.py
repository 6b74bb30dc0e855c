"""Deep Markov models (Krishnan, Shalit & Sontag, AAAI 2017).

A deep Markov model keeps the stochastic, continuous latent state of a Kalman
filter but lets neural networks parameterise its transition and emission:

.. math::

    z_1 \\sim \\mathcal N(\\mu(z_0), \\sigma(z_0)), \\quad
    z_t \\mid z_{t-1} \\sim \\mathcal N(\\mu(z_{t-1}), \\operatorname{diag} \\sigma^2(z_{t-1})), \\quad
    x_t \\mid z_t \\sim p(x_t \\mid \\eta(z_t)),

with :math:`z_0` a learned vector. The guide is structured like the true
posterior, which is Markov given the observations:
:math:`q(z_{1:T} \\mid x_{1:T}) = \\prod_t q(z_t \\mid z_{t-1}, x_{\\ge t})`.

Guides (the paper's names, Table 1 of Krishnan et al. 2017):

* ``"st-r"`` ("ST-R", structured, right): a *backward* RNN summarises
  :math:`x_{t:T}`; a combiner mixes it with :math:`z_{t-1}`. This is Pyro's
  ``examples/dmm.py`` guide and the one whose conditional independences match
  the exact posterior.
* ``"st-lr"`` ("ST-LR", structured, left and right): a bidirectional RNN
  (summaries of :math:`x_{1:t}` and :math:`x_{t:T}`) plus :math:`z_{t-1}`.
* ``"mf"`` ("MF-LR", mean field): :math:`q(z_t \\mid x_{1:T})` from the
  bidirectional RNN only; no sequential sampling at all.

Each :math:`q(z_t \\mid \\cdot)` may be followed by ``num_iafs`` inverse
autoregressive flows (Kingma et al. 2016), as in Pyro's DMM tutorial.

**Estimator.** :meth:`DeepMarkovModel.loss` samples :math:`z_{1:T}` from the
guide (the only sequential part: :math:`z_t` needs :math:`z_{t-1}`), then
evaluates every transition and emission term for all steps at once. Without
flows both :math:`q(z_t \\mid z_{t-1}, x)` and :math:`p(z_t \\mid z_{t-1})` are
diagonal Gaussians, so the KL term of each step is computed analytically at the
sampled :math:`z_{t-1}` (the estimator of Pyro's ``TraceMeanField_ELBO``):
it integrates :math:`z_t` out exactly, so its variance is lower than the
single-sample Monte Carlo :math:`\\log q - \\log p` and it is still unbiased for
the ELBO and its reparameterised gradient. With flows the density of
:math:`q(z_t)` is not Gaussian and the estimator falls back to Monte Carlo.

Shapes: observations ``(N, T, D)`` (Bernoulli frames, Gaussian vectors with NaN
for missing entries) or ``(N, T)`` integer codes (categorical); latent paths
``(N, T, Z)``.
"""

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
from zoo.registry import Decoding, Family, UsageError, register

__all__ = ["DeepMarkovModel", "DMMPosterior", "GUIDES", "OBSERVATIONS", "length_buckets"]

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


def _gaussian_kl(q_loc: Tensor, q_scale: Tensor, p_loc: Tensor, p_scale: Tensor) -> Tensor:
    """``KL(N(q) || N(p))`` of diagonal Gaussians summed over the last dim."""
    ratio = (q_scale / p_scale).pow(2)
    return 0.5 * (ratio + ((q_loc - p_loc) / p_scale).pow(2) - 1.0 - ratio.log()).sum(-1)


def _normal_log_prob(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Diagonal Gaussian log-density summed over the last dim."""
    return (-0.5 * ((value - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _low_mm(a: Tensor, b: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``a @ b`` with both factors rounded to ``dtype`` (e.g. bfloat16; the products accumulate in
    float32 inside the kernel), returned in ``a``'s dtype; ``dtype=None``: the plain product."""
    if dtype is None or dtype == a.dtype:
        return torch.mm(a, b)
    return torch.mm(a.to(dtype), b.to(dtype)).to(a.dtype)


class _LowPrecisionLinear(torch.autograd.Function):
    """``F.linear(inputs, weight, bias)`` with the three matrix products (forward, input and weight
    gradients) on factors rounded to ``matmul_dtype`` (:func:`_low_mm`); ``inputs (..., I)``."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, matmul_dtype):
        flat = inputs.reshape(-1, inputs.shape[-1])
        ctx.save_for_backward(flat, weight)
        ctx.matmul_dtype, ctx.shape = matmul_dtype, inputs.shape
        return _low_mm(flat, weight.t(), matmul_dtype).add_(bias).reshape(*inputs.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad_output):
        flat, weight = ctx.saved_tensors
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_inputs = _low_mm(grad, weight, ctx.matmul_dtype).reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        return grad_inputs, _low_mm(grad.t(), flat, ctx.matmul_dtype), grad.sum(0), None


class _TanhRNN(torch.autograd.Function):
    """``nn.RNN(nonlinearity="tanh")`` (one layer, batch first) as one autograd node:
    :math:`h_t = \\tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`. The input projection of
    all steps is one product; the backward loop does one ``(N, H) x (H, H)`` product per step and
    the weight gradients one product over all ``N*T`` rows (PyTorch's CPU RNN backward forms
    them step by step, from rank-``N`` products). Tested against ``nn.RNN`` and by ``gradcheck``.

    Args (forward): ``inputs (N, T, I)``, ``h_0 (N, H)``, ``weight_ih (H, I)``, ``weight_hh (H, H)``,
    ``bias_ih (H,)``, ``bias_hh (H,)``, ``active``: per step the number of rows still running (rows
    sorted by length, longest first; padding steps are not computed). Returns the outputs
    ``(N, T, H)``, 0 on padding.
    """

    @staticmethod
    def forward(ctx, inputs, h_0, weight_ih, weight_hh, bias_ih, bias_hh, active, matmul_dtype=None):
        n, t, size = inputs.shape
        low = matmul_dtype is not None and matmul_dtype != inputs.dtype
        projected = (torch.addmm(bias_ih + bias_hh, inputs.reshape(n * t, size), weight_ih.t()) if not low else
                     _low_mm(inputs.reshape(n * t, size), weight_ih.t(), matmul_dtype).add_(bias_ih + bias_hh)
                     ).reshape(n, t, -1)
        outputs = torch.zeros_like(projected)
        h, weight_hh_t = h_0, weight_hh.t()
        if low:
            weight_hh_t = weight_hh_t.to(matmul_dtype)  # cast once; h is cast per step, sums stay in float32
        for step in range(t):
            rows = active[step]  # rows sorted by length, longest first: the first `rows` are still running
            if low:
                h = torch.tanh(torch.mm(h[:rows].to(matmul_dtype), weight_hh_t).float().add_(projected[:rows, step]))
            else:
                h = torch.tanh(torch.addmm(projected[:rows, step], h[:rows], weight_hh_t))
            outputs[:rows, step] = h
        ctx.save_for_backward(inputs, h_0, weight_ih, weight_hh, outputs)
        ctx.active, ctx.matmul_dtype = active, matmul_dtype if low else None
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, h_0, weight_ih, weight_hh, outputs = ctx.saved_tensors
        active, low = ctx.active, ctx.matmul_dtype
        n, t, size = inputs.shape
        grad_pre = torch.zeros_like(outputs)
        slope = 1 - outputs * outputs
        carry = outputs.new_zeros(0, outputs.shape[-1])  # gradient reaching h_t from step t + 1 (its running rows)
        weight_hh_low = weight_hh.to(low) if low is not None else None
        for step in range(t - 1, -1, -1):
            rows = active[step]
            total = grad_outputs[:rows, step].clone()
            total[:carry.shape[0]] += carry
            pre = total.mul_(slope[:rows, step])
            grad_pre[:rows, step] = pre
            carry = torch.mm(pre, weight_hh) if low is None else torch.mm(pre.to(low), weight_hh_low).float()
        grad_h_0 = torch.zeros_like(h_0)
        grad_h_0[:carry.shape[0]] = carry
        flat = grad_pre.reshape(n * t, -1)
        h_prev = torch.cat([h_0.unsqueeze(1), outputs[:, :-1]], 1).reshape(n * t, -1)
        grad_inputs = _low_mm(flat, weight_ih, low).reshape(n, t, size) if ctx.needs_input_grad[0] else None
        grad_bias = flat.sum(0)
        flat_t = flat.t()
        return (grad_inputs, grad_h_0, _low_mm(flat_t, inputs.reshape(n * t, size), low), _low_mm(flat_t, h_prev, low),
                grad_bias, grad_bias, None, None)


class _StructuredGuideLoop(torch.autograd.Function):
    """The ST-R/ST-LR guide's sequential draw of :math:`z_{1:T}` as one autograd node, with a
    hand-written backward: per step only two small matrix products (instead of ~20 autograd
    nodes), and the weight gradients as one product over all steps (rows ``N*T``, not ``N``).

    Forward, for each step ``t`` (``z_0`` = ``z_q_0``)::

        h_t = tanh(W_z z_{t-1} + b_z);  [loc_t, r_t] = f_t + 0.5 W_ls h_t
        scale_t = softplus(r_t) + min_scale;  z_t = loc_t + scale_t * eps_t

    Args (forward): ``features (N, T, 2Z)`` (:meth:`DeepMarkovModel._guide_features`), ``noise``
    ``(N, T, Z)`` or None (then one ``randn`` per step, in the order Pyro's guide draws them),
    ``z_q_0 (Z,)``, ``weight_z (H, Z)``, ``bias_z (H,)``, ``weight_ls (2Z, H)``, ``min_scale``,
    ``active`` (per step, the rows still running; rows sorted by length, longest first) and
    ``order`` (``(N,)``: row ``i`` is the caller's row ``order[i]``, for drawing noise in the caller's
    order). Returns ``z, loc, scale`` each ``(N, T, Z)`` (0 and ``softplus(0) + min_scale`` on padding).
    Tested against autograd and by ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, features, noise, z_q_0, weight_z, bias_z, weight_ls, min_scale, active, order):
        n, t, two_z = features.shape
        z_dim = two_z // 2
        draws = noise is None
        if draws:
            noise = features.new_zeros(n, t, z_dim)
        z = features.new_zeros(n, t, z_dim)
        loc = features.new_zeros(n, t, z_dim)
        raw_scale = features.new_zeros(n, t, z_dim)
        hidden = features.new_zeros(n, t, weight_z.shape[0])
        z_prev = z_q_0.expand(n, z_dim)
        weight_z_t, weight_ls_t = weight_z.t(), weight_ls.t()
        for step in range(t):
            rows = active[step]  # rows sorted by length, longest first: the first `rows` are still running
            h = torch.tanh(torch.addmm(bias_z, z_prev[:rows], weight_z_t))
            combined = torch.addmm(features[:rows, step], h, weight_ls_t, alpha=0.5)
            step_loc, step_raw = combined[:, :z_dim], combined[:, z_dim:]
            if draws:
                # all N rows in the caller's order, as Pyro's guide draws them, then the running ones
                noise[:rows, step] = torch.randn((n, z_dim), dtype=z.dtype, device=z.device)[order[:rows]]
            z_prev = torch.addcmul(step_loc, F.softplus(step_raw) + min_scale, noise[:rows, step])
            hidden[:rows, step], loc[:rows, step], raw_scale[:rows, step], z[:rows, step] = h, step_loc, step_raw, z_prev
        scale = F.softplus(raw_scale) + min_scale
        ctx.save_for_backward(noise, z_q_0, weight_z, weight_ls, hidden, raw_scale, z)
        ctx.active = active
        return z, loc, scale

    @staticmethod
    def backward(ctx, grad_z, grad_loc, grad_scale):
        noise, z_q_0, weight_z, weight_ls, hidden, raw_scale, z = ctx.saved_tensors
        active = ctx.active
        n, t, z_dim = z.shape
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        grad_z = grad_z if grad_z is not None else zero.expand(n, t, z_dim)
        grad_loc = grad_loc if grad_loc is not None else zero.expand(n, t, z_dim)
        grad_scale = grad_scale if grad_scale is not None else zero.expand(n, t, z_dim)
        grad_features = z.new_zeros(n, t, 2 * z_dim)
        grad_pre = z.new_zeros(n, t, hidden.shape[-1])  # gradient at W_z z_{t-1} + b_z
        scale_slope = torch.sigmoid(raw_scale)  # d softplus / d raw
        tanh_slope = 1 - hidden * hidden
        into_z = z.new_zeros(0, z_dim)  # gradient reaching z_t through step t + 1 (its running rows)
        for step in range(t - 1, -1, -1):
            rows = active[step]
            total = grad_z[:rows, step].clone()
            total[:into_z.shape[0]] += into_z
            grad_features[:rows, step, :z_dim] = grad_loc[:rows, step] + total
            grad_features[:rows, step, z_dim:] = ((grad_scale[:rows, step] + total * noise[:rows, step])
                                                  * scale_slope[:rows, step])
            pre = torch.mm(grad_features[:rows, step], weight_ls).mul_(0.5).mul_(tanh_slope[:rows, step])
            grad_pre[:rows, step] = pre
            into_z = torch.mm(pre, weight_z)
        z_prev = torch.cat([z_q_0.expand(n, 1, z_dim), z[:, :-1]], 1)
        flat_pre = grad_pre.reshape(n * t, -1)
        grad_weight_z = torch.mm(flat_pre.t(), z_prev.reshape(n * t, z_dim))
        grad_weight_ls = torch.mm(grad_features.reshape(n * t, -1).t(), hidden.reshape(n * t, -1)).mul_(0.5)
        return (grad_features, None, into_z.sum(0), grad_weight_z, flat_pre.sum(0), grad_weight_ls, None, None, None)


class _LengthOrder(NamedTuple):
    """Rows sorted by length, longest first: ``order (N,)`` (sorted row i is row ``order[i]``),
    ``inverse (N,)`` and ``active`` (per step, how many sorted rows are still running)."""

    order: Tensor
    inverse: Tensor
    active: list[int]

    @staticmethod
    def of(lengths: Tensor, num_steps: int) -> "_LengthOrder":
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = torch.arange(num_steps, device=lengths.device)
        active = (lengths[order].unsqueeze(1) > steps).sum(0).tolist()
        return _LengthOrder(order, torch.argsort(order), active)


def _run_rnn(rnn: nn.RNN, inputs: Tensor, h_0: Tensor, lengths: Tensor, matmul_dtype: torch.dtype | None = None
             ) -> Tensor:
    """``(N, T, H)`` outputs of a one-layer tanh ``rnn`` (batch first) from ``h_0 (N, H)`` over
    sequences whose real steps come first (``lengths (N,)``), through :class:`_TanhRNN`; 0 on padding.
    ``matmul_dtype``: the matrix products' factors rounded to it (e.g. bfloat16), sums in float32."""
    rows = _LengthOrder.of(lengths, inputs.shape[1])
    outputs = _TanhRNN.apply(inputs[rows.order], h_0[rows.order].contiguous(), rnn.weight_ih_l0, rnn.weight_hh_l0,
                             rnn.bias_ih_l0, rnn.bias_hh_l0, rows.active, matmul_dtype)
    return outputs[rows.inverse]


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

    def __init__(self, observation: str = "bernoulli", *, dim: int | None = None, num_symbols: int | None = None,
                 z_dim: int = 100, transition_dim: int = 200, emitter_dim: int = 100, rnn_dim: int = 600,
                 guide: str = "st-r", num_iafs: int = 0, iaf_dim: int = 100, transition: str = "gated",
                 emission: str = "mlp", min_scale: float = 1e-2, rnn_precision: str = "float32",
                 guide_dropout: float = 0.0) -> None:
        super().__init__()
        for name, value, allowed in (("observation", observation, OBSERVATIONS), ("guide", guide, GUIDES),
                                     ("transition", transition, TRANSITIONS), ("emission", emission, EMISSIONS)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        for name, value in (("z_dim", z_dim), ("transition_dim", transition_dim), ("emitter_dim", emitter_dim),
                            ("rnn_dim", rnn_dim), ("iaf_dim", iaf_dim)):
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
                raise ValueError(f"categorical observations need num_symbols (a positive int) and no dim; "
                                 f"got num_symbols={num_symbols!r}, dim={dim!r}")
        elif not isinstance(dim, int) or dim < 1 or num_symbols is not None:
            raise ValueError(f"{observation} observations need dim (a positive int) and no num_symbols; "
                             f"got dim={dim!r}, num_symbols={num_symbols!r}")
        self.observation, self.dim, self.num_symbols = observation, dim, num_symbols
        self.z_dim, self.transition_dim, self.emitter_dim, self.rnn_dim = z_dim, transition_dim, emitter_dim, rnn_dim
        self.guide_kind, self.num_iafs, self.iaf_dim = guide, num_iafs, iaf_dim
        self.transition_kind, self.emission_kind, self.min_scale = transition, emission, float(min_scale)
        self.rnn_precision = rnn_precision
        self.guide_dropout = float(guide_dropout)
        self._dropout_active = False
        #: Training settings behind :meth:`fit_defaults` (see :meth:`configure_fit`).
        self.fit_settings: dict[str, Any] = {"annealing_epochs": 10, "min_annealing": 0.2, "num_particles": 1,
                                             "weight_decay": 0.0, "average_decay": 0.0}

        width = num_symbols if observation == "categorical" else dim
        # -- generative model
        self.transition = (GatedTransition(z_dim, transition_dim, self.min_scale) if transition == "gated"
                           else LinearTransition(z_dim, self.min_scale))
        self.emitter = (nn.Sequential(nn.Linear(z_dim, emitter_dim), nn.ReLU(), nn.Linear(emitter_dim, emitter_dim),
                                      nn.ReLU(), nn.Linear(emitter_dim, width))
                        if emission == "mlp" else nn.Linear(z_dim, width))
        self.emission_raw_scale = nn.Parameter(torch.zeros(dim)) if observation == "gaussian" else None
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        # -- guide (names start with "guide_", so num_parameters counts the model only)
        rnn_input = 2 * dim if observation == "gaussian" else width  # Gaussian: values + observed indicators
        bidirectional = guide != "st-r"
        # tanh, not Pyro's relu: a bounded state cannot blow up at a high learning rate.
        # Two single-direction RNNs rather than nn.RNN(bidirectional=True), whose backward pass
        # would read the padding first.
        self.guide_rnn = nn.RNN(rnn_input, rnn_dim, nonlinearity="tanh", batch_first=True)
        self.guide_rnn_forward = (nn.RNN(rnn_input, rnn_dim, nonlinearity="tanh", batch_first=True)
                                  if bidirectional else None)
        self.guide_h_0 = nn.Parameter(torch.zeros(2 if bidirectional else 1, rnn_dim))
        self.guide_z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.guide_z_to_hidden = nn.Linear(z_dim, rnn_dim) if guide != "mf" else None
        self.guide_loc_scale = nn.Linear(rnn_dim, 2 * z_dim)
        self.guide_iafs = nn.ModuleList(
            AffineAutoregressive(AutoRegressiveNN(z_dim, [iaf_dim]), sigmoid_bias=3.0) for _ in range(num_iafs))

    @property
    def _rnn_matmul_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.rnn_precision == "bfloat16" else None

    def config(self) -> dict[str, Any]:
        return {"observation": self.observation, "dim": self.dim, "num_symbols": self.num_symbols,
                "z_dim": self.z_dim, "transition_dim": self.transition_dim, "emitter_dim": self.emitter_dim,
                "rnn_dim": self.rnn_dim, "guide": self.guide_kind, "num_iafs": self.num_iafs,
                "iaf_dim": self.iaf_dim, "transition": self.transition_kind, "emission": self.emission_kind,
                "min_scale": self.min_scale, "rnn_precision": self.rnn_precision,
                "guide_dropout": self.guide_dropout}

    def configure_fit(self, *, annealing_epochs: int | None = None, min_annealing: float | None = None,
                      num_particles: int | None = None, weight_decay: float | None = None,
                      average_decay: float | None = None) -> "DeepMarkovModel":
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
            if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not 0 <= weight_decay < math.inf:
                raise ValueError(f"weight_decay: expected a nonnegative number, got {weight_decay!r}")
            self.fit_settings["weight_decay"] = float(weight_decay)
        if average_decay is not None:
            if isinstance(average_decay, bool) or not isinstance(average_decay, (int, float)) or not (
                    0 <= average_decay < 1):
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
        annealing = (KLAnnealing(start=settings["min_annealing"], epochs=settings["annealing_epochs"])
                     if settings["annealing_epochs"] else None)
        return dataclasses.replace(
            defaults, loss="model", minibatches=length_buckets, batch_size=20, max_epochs=3000,
            learning_rate=3e-3, final_learning_rate=5e-4, warmup_epochs=1, clip_norm=10.0,
            weight_decay=settings["weight_decay"], average_decay=settings["average_decay"] or None,
            step_kwargs=annealing, eval_every=5, patience=40)

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
            if real.numel() and (real.is_floating_point() or int(real.min()) < 0 or int(real.max()) >= self.num_symbols):
                raise ValueError(f"batch.values: expected integer codes in [0, {self.num_symbols}) on real steps")
        elif values.dim() != 3 or values.shape[-1] != self.dim:
            raise ValueError(f"batch.values: {self.observation} observations need shape (N, T, {self.dim}), "
                             f"got {tuple(values.shape)}")

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
        return torch.where(observed, _normal_log_prob(clean.unsqueeze(-1), out.unsqueeze(-1), scale.unsqueeze(-1)),
                           torch.zeros((), dtype=out.dtype)).sum(-1)

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
        backward = _run_rnn(self.guide_rnn, reversed_inputs, h_0[0].expand(n, self.rnn_dim), lengths,
                            self._rnn_matmul_dtype)
        backward = backward.gather(1, gather.expand_as(backward))
        if self.guide_rnn_forward is None:
            return backward
        forward = _run_rnn(self.guide_rnn_forward, inputs, h_0[1].expand(n, self.rnn_dim), lengths,
                           self._rnn_matmul_dtype)
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
            return _LowPrecisionLinear.apply(0.5 * summary, self.guide_loc_scale.weight, self.guide_loc_scale.bias,
                                             self._rnn_matmul_dtype)
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

    def _sample_guide(self, batch: SequenceBatch, inputs: Tensor, mean_path: bool = False,
                      noise: Tensor | None = None, features: Tensor | None = None) -> _GuidePath:
        """Draws :math:`z_{1:T} \\sim q` step by step (``mean_path``: feeds each step's mean forward, no
        noise; ``noise``: ``(N, T, Z)`` standard normal draws to use instead of torch's RNG; ``features``:
        :meth:`_guide_features` if already computed)."""
        if features is None:
            features = self._guide_features(batch, inputs)
        n, t = features.shape[:2]
        if (not self.num_iafs and self.guide_z_to_hidden is not None
                and type(self)._guide_conditional is DeepMarkovModel._guide_conditional):
            # The structured guides without flows: the whole loop is one node with a fused backward.
            # Rows sorted by length so that each step computes only the sequences still running.
            rows = _LengthOrder.of(batch.lengths, t)
            step_noise = torch.zeros_like(features[..., :self.z_dim]) if mean_path else noise
            z, loc, scale = _StructuredGuideLoop.apply(
                features[rows.order], None if step_noise is None else step_noise[rows.order], self.guide_z_q_0,
                self.guide_z_to_hidden.weight, self.guide_z_to_hidden.bias, self.guide_loc_scale.weight,
                self.min_scale, rows.active, rows.order)
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
        return _GuidePath(stack(zs), stack(bases), stack(locs), stack(scales),
                          torch.stack(log_dets, 1) if iafs else None)

    # -- the vectorised objective ----------------------------------------
    def _step_terms(self, batch: SequenceBatch, estimator: str, noise: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
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

    def _path_terms(self, batch: SequenceBatch, path: _GuidePath, clean: Tensor, observed: Tensor | None,
                    estimator: str) -> tuple[Tensor, Tensor]:
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

    def elbo_per_sequence(self, batch: SequenceBatch, estimator: str | None = None,
                          noise: Tensor | None = None) -> Tensor:
        """``(N,)`` single-sample ELBO estimate of each sequence (``noise``: optional ``(N, T, Z)``
        standard normal draws for the guide; default torch's global RNG)."""
        log_lik, kl = self._step_terms(batch, estimator or self.default_estimator(), noise)
        return (log_lik - kl).sum(-1)

    def loss(self, batch: SequenceBatch, annealing_factor: float = 1.0, estimator: str | None = None) -> LossOutput:
        """The fast training objective (INTERFACES §3, ``fit(..., loss="model")``).

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
            repeated = SequenceBatch(batch.values.repeat((copies,) + (1,) * (batch.values.dim() - 1)),
                                     batch.lengths.repeat(copies))
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
                    emission = dist.Normal(emission.base_dist.loc, emission.base_dist.scale).mask(
                        observed[:, t]).to_event(1)
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
    def sample_with_states(self, num_sequences: int, length: int, generator: torch.Generator | None = None
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
            values = torch.multinomial(out.softmax(-1).reshape(-1, self.num_symbols), 1, generator=generator
                                       ).reshape(num_sequences, length)
        else:
            values = out + self.emission_scale() * torch.randn(out.shape, generator=generator, dtype=out.dtype,
                                                               device=out.device)
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
        return DMMPosterior(torch.where(mask, mean.loc, zero), torch.where(mask, mean.scale, zero),
                            None if samples is None else torch.where(mask, samples, zero), batch.mask)

    @torch.no_grad()
    def sample_states(self, values: Tensor, lengths: Tensor | None = None, num_samples: int = 1,
                      generator: torch.Generator | None = None) -> Tensor:
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
            repeated = SequenceBatch(batch.values.repeat((copies,) + (1,) * (batch.values.dim() - 1)),
                                     batch.lengths.repeat(copies))
            inputs, _, _ = self._inputs(repeated)
            noise = torch.randn((copies * n, t, self.z_dim), generator=generator, dtype=inputs.dtype,
                                device=inputs.device)
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


# ----------------------------------------------------------------------------
# Registry entry (INTERFACES §4).
# ----------------------------------------------------------------------------
def _add_arguments(group) -> None:
    group.add_argument("--z-dim", type=int, default=100, help="latent state width (default 100)")
    group.add_argument("--transition-dim", type=int, default=200, help="gated transition hidden width (200)")
    group.add_argument("--emitter-dim", type=int, default=100, help="emitter hidden width (100)")
    group.add_argument("--rnn-dim", type=int, default=600, help="guide RNN width (600)")
    group.add_argument("--guide", choices=GUIDES, default="st-r",
                       help="st-r: backward RNN + z_{t-1} (paper's ST-R); st-lr: bidirectional; mf: mean field")
    group.add_argument("--iafs", type=int, default=0, help="inverse autoregressive flows per step (0)")
    group.add_argument("--transition", choices=TRANSITIONS, default="gated", help="gated (default) or linear")
    group.add_argument("--emission", choices=EMISSIONS, default="mlp", help="mlp (default) or linear")
    group.add_argument("--rnn-precision", choices=RNN_PRECISIONS, default="float32",
                       help="guide RNN matrix products: float32 (default) or bfloat16 (faster on CPUs with "
                            "bfloat16 instructions; float32 sums; not exact)")
    group.add_argument("--guide-dropout", type=float, default=0.0,
                       help="dropout on the guide RNN's summary in the training loss (0: none)")
    group.add_argument("--annealing-epochs", type=int, default=10, help="epochs of linear KL annealing (10)")
    group.add_argument("--min-annealing", type=float, default=0.2, help="initial KL annealing factor (0.2)")
    group.add_argument("--particles", type=int, default=1, help="IWAE particles for scoring (1 = ELBO)")
    group.add_argument("--weight-decay", type=float, default=0.0,
                       help="L2 prior precision on the weights against the full-data loss (0: none)")
    group.add_argument("--average", type=float, default=0.0, metavar="DECAY",
                       help="end with a moving average of the weights, DECAY per optimiser step (e.g. 0.9995 "
                            "for long runs; 0: the last iterate)")


def _settings_from_args(args) -> dict[str, str]:
    return {"z_dim": str(args.z_dim), "transition_dim": str(args.transition_dim),
            "emitter_dim": str(args.emitter_dim), "rnn_dim": str(args.rnn_dim), "guide": args.guide,
            "iafs": str(args.iafs), "transition": args.transition, "emission": args.emission,
            "rnn_precision": args.rnn_precision, "guide_dropout": str(args.guide_dropout),
            "annealing_epochs": str(args.annealing_epochs), "min_annealing": str(args.min_annealing),
            "particles": str(args.particles), "weight_decay": str(args.weight_decay),
            "average": str(args.average)}


# spec setting -> (keyword, type): the model's numbers, and the training settings, which go to
# configure_fit and reach the trainer/scorer through fit_defaults (not the constructor).
_MODEL_NUMBERS = {"z_dim": ("z_dim", int), "transition_dim": ("transition_dim", int),
                  "emitter_dim": ("emitter_dim", int), "rnn_dim": ("rnn_dim", int), "iafs": ("num_iafs", int),
                  "guide_dropout": ("guide_dropout", float)}
_MODEL_CHOICES = ("guide", "transition", "emission", "rnn_precision")
_TRAINING_SETTINGS = {"annealing_epochs": ("annealing_epochs", int), "min_annealing": ("min_annealing", float),
                      "particles": ("num_particles", int), "weight_decay": ("weight_decay", float),
                      "average": ("average_decay", float)}


def _converted(settings: dict[str, str], table: dict[str, tuple[str, type]]) -> dict[str, Any]:
    """``{keyword: value}`` of the ``settings`` that ``table`` names, each converted to its type."""
    converted: dict[str, Any] = {}
    for key, (name, convert) in table.items():
        if key in settings:
            try:
                converted[name] = convert(settings[key])
            except ValueError:
                raise UsageError(f"dmm: {key} must be a{'n int' if convert is int else ' number'}, "
                                 f"got {settings[key]!r}") from None
    return converted


def build_dmm(data, settings: dict[str, str]) -> DeepMarkovModel:
    """A :class:`DeepMarkovModel` for ``data`` (a ``zoo.data.SequenceData``) from spec settings."""
    allowed = set(_MODEL_NUMBERS) | set(_MODEL_CHOICES) | set(_TRAINING_SETTINGS)
    unknown = set(settings) - allowed
    if unknown:
        raise UsageError(f"dmm: unknown settings {sorted(unknown)}; allowed: {sorted(allowed)}")
    observation = {"binary": "bernoulli", "count": "bernoulli", "categorical": "categorical",
                   "real": "gaussian"}.get(data.kind)
    if observation is None:
        raise UsageError(f"dmm: cannot model {data.kind!r} data")
    options = _converted(settings, _MODEL_NUMBERS)
    options.update({key: settings[key] for key in _MODEL_CHOICES if key in settings})
    if observation == "categorical":
        options["num_symbols"] = data.num_symbols
    else:
        options["dim"] = data.dim
    training = _converted(settings, _TRAINING_SETTINGS)
    try:
        return DeepMarkovModel(observation, **options).configure_fit(**training)
    except ValueError as error:
        raise UsageError(f"dmm: {error}") from None


def _label(settings: dict[str, str]) -> str:
    label = f"dmm(z={settings.get('z_dim', 100)}, {settings.get('guide', 'st-r')}"
    if int(settings.get("iafs", 0) or 0):
        label += f", {settings['iafs']} IAF"
    return label + ")"


def _decode(model: DeepMarkovModel, batch: SequenceBatch) -> Decoding:
    """What ``seqzoo decode`` writes: the guide's means and scales along its mean path."""
    post = model.posterior(batch)
    return Decoding(values={"loc": post.loc, "scale": post.scale})


register(Family(
    name="dmm",
    help="deep Markov model (neural transition and emission, RNN guide)",
    add_arguments=_add_arguments,
    settings_from_args=_settings_from_args,
    build=build_dmm,
    label=_label,
    model_classes=(DeepMarkovModel,),
    data_kinds=("binary", "categorical", "real"),
    decode=_decode,
))
