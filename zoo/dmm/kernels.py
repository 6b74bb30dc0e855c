"""Pure torch kernels of the deep Markov model (no Pyro): diagonal-Gaussian KL and log-density,
reduced-precision matrix products, and hand-written autograd nodes for the guide's tanh RNN and
its sequential ST-R/ST-LR draw, over rows sorted by length."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        projected = (
            torch.addmm(bias_ih + bias_hh, inputs.reshape(n * t, size), weight_ih.t())
            if not low
            else _low_mm(inputs.reshape(n * t, size), weight_ih.t(), matmul_dtype).add_(bias_ih + bias_hh)
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
            total[: carry.shape[0]] += carry
            pre = total.mul_(slope[:rows, step])
            grad_pre[:rows, step] = pre
            carry = torch.mm(pre, weight_hh) if low is None else torch.mm(pre.to(low), weight_hh_low).float()
        grad_h_0 = torch.zeros_like(h_0)
        grad_h_0[: carry.shape[0]] = carry
        flat = grad_pre.reshape(n * t, -1)
        h_prev = torch.cat([h_0.unsqueeze(1), outputs[:, :-1]], 1).reshape(n * t, -1)
        grad_inputs = _low_mm(flat, weight_ih, low).reshape(n, t, size) if ctx.needs_input_grad[0] else None
        grad_bias = flat.sum(0)
        flat_t = flat.t()
        return (
            grad_inputs,
            grad_h_0,
            _low_mm(flat_t, inputs.reshape(n * t, size), low),
            _low_mm(flat_t, h_prev, low),
            grad_bias,
            grad_bias,
            None,
            None,
        )


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
            hidden[:rows, step], loc[:rows, step], raw_scale[:rows, step], z[:rows, step] = (
                h,
                step_loc,
                step_raw,
                z_prev,
            )
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
            total[: into_z.shape[0]] += into_z
            grad_features[:rows, step, :z_dim] = grad_loc[:rows, step] + total
            grad_features[:rows, step, z_dim:] = (grad_scale[:rows, step] + total * noise[:rows, step]) * scale_slope[
                :rows, step
            ]
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
    def of(lengths: Tensor, num_steps: int) -> _LengthOrder:
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = torch.arange(num_steps, device=lengths.device)
        active = (lengths[order].unsqueeze(1) > steps).sum(0).tolist()
        return _LengthOrder(order, torch.argsort(order), active)


def _run_rnn(
    rnn: nn.RNN, inputs: Tensor, h_0: Tensor, lengths: Tensor, matmul_dtype: torch.dtype | None = None
) -> Tensor:
    """``(N, T, H)`` outputs of a one-layer tanh ``rnn`` (batch first) from ``h_0 (N, H)`` over
    sequences whose real steps come first (``lengths (N,)``), through :class:`_TanhRNN`; 0 on padding.
    ``matmul_dtype``: the matrix products' factors rounded to it (e.g. bfloat16), sums in float32."""
    rows = _LengthOrder.of(lengths, inputs.shape[1])
    outputs = _TanhRNN.apply(
        inputs[rows.order],
        h_0[rows.order].contiguous(),
        rnn.weight_ih_l0,
        rnn.weight_hh_l0,
        rnn.bias_ih_l0,
        rnn.bias_hh_l0,
        rows.active,
        matmul_dtype,
    )
    return outputs[rows.inverse]
