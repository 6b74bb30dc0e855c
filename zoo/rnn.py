r"""Recurrent next-step models: Elman RNN, GRU and LSTM.

These are the deterministic-state counterparts of the HMM and the Kalman
filter: the hidden state is a function of the past, not a random variable. For
the Elman network (the seed lecture's equations), with :math:`h_0` a learned
initial state,

.. math::

    h_t = \tanh(W_{hh} h_{t-1} + W_{xh} x_t + b_h), \qquad
    y_t = W_{hy} h_t + b_y, \qquad
    x_{t+1} \sim \mathrm{Cat}(\mathrm{softmax}(y_t)),

so :math:`x_1` is predicted from :math:`h_0` and :math:`x_{t+1}` from
:math:`h_t`. The GRU (update and reset gates) and the LSTM (forget, input and
output gates and a memory cell) replace the :math:`\tanh` update; several layers
stack, with dropout between them and before the output layer.

Inputs enter through an embedding (symbols) or a linear projection (vectors), or
raw (one-hot symbols / the vector itself) with ``embedding_dim=None``. Output
heads:

* ``"categorical"`` — symbols, ``(N, T)`` int64 codes, :math:`\mathrm{Cat}(\mathrm{softmax}(y_t))`;
* ``"bernoulli"`` — multi-hot frames (polyphonic music), ``(N, T, D)`` 0/1 floats,
  independent :math:`\mathrm{Bernoulli}(\sigma(y_{td}))` per entry;
* ``"gaussian"`` — real series, ``(N, T, D)`` floats with NaN = missing (masked
  out of the likelihood; the network sees the value 0 and a missing indicator),
  :math:`\mathcal N(\mu_t, \mathrm{diag}\,\sigma^2)` with :math:`\sigma` learned
  per dimension (``scale="learned"``) or predicted from :math:`h_t`
  (``scale="predicted"``). The data are standardised internally with the
  training data's mean and standard deviation (``initialize_from_data``); the
  likelihood is in the data's own units.

An optional per-sequence context vector :math:`\theta` (``context_dim > 0``)
enters every transition, :math:`h_t = \tanh(W_{hh} h_{t-1} + W_{xh} x_t +
W_{x\theta}\theta + b_h)` (concatenated to the input for every cell), and shifts
the initial state linearly.

The Pyro model has no latent variable: the weights are module parameters
(module-local, see :mod:`inference`), ``model(batch)`` scores the observations
through one masked ``pyro.sample("observations", ..., obs=...)`` inside
:func:`inference.batch.sequence_plate`, and ``guide(batch)`` samples nothing,
so the ELBO is exactly the (mini-batch scaled) log-likelihood and
:func:`inference.fit.fit` with ``method="svi"`` is maximum likelihood by Adam.
The whole padded batch runs through :class:`torch.nn.RNN` / ``GRU`` / ``LSTM``
at once; steps after a sequence's end never influence earlier ones, so padding
needs no packing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.forecasting import ForecastDistribution

#: The recurrent cells, by name.
CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
#: The output heads.
OBSERVATIONS = ("categorical", "bernoulli", "gaussian")
_SCALES = ("learned", "predicted")
#: Smallest predicted standard deviation, in standardised units.
_MIN_SCALE = 1e-3


#: Steps per recurrent-kernel call when scoring: bounds the memory of ``log_prob`` on long texts.
SCORE_WINDOW = 8192


class RecurrentModel(SequenceModel):
    """An Elman RNN, GRU or LSTM next-step model with a categorical, Bernoulli or Gaussian head.

    Args:
        observation: ``"categorical"``, ``"bernoulli"`` or ``"gaussian"``.
        num_symbols: ``V``, the number of symbols (categorical only).
        dim: ``D``, the width of one observation (Bernoulli and Gaussian).
        cell: ``"rnn"`` (Elman, tanh), ``"gru"`` or ``"lstm"``.
        hidden_size: ``H``, units per layer.
        num_layers: stacked recurrent layers.
        embedding_dim: width of the input embedding/projection; ``None`` feeds
            one-hot symbols or the raw vectors straight into the cell.
        dropout: dropout probability between layers and before the output
            layer (active in training mode only).
        context_dim: width of the optional per-sequence context vector
            (0: none).
        scale: Gaussian head only: ``"learned"`` (one standard deviation per
            dimension) or ``"predicted"`` (from the hidden state).

    Example:
        >>> model = RecurrentModel("categorical", num_symbols=5, cell="gru", hidden_size=8, embedding_dim=4)
        >>> x = torch.tensor([[0, 1, 2, 3], [4, 4, 0, 0]])
        >>> model.log_prob(x, torch.tensor([4, 2])).shape
        torch.Size([2])
        >>> model.sample(3, 10, generator=torch.Generator().manual_seed(0), temperature=0.8).values.shape
        torch.Size([3, 10])
        >>> model.greedy(1, 5, prime=torch.tensor([0, 1])).values.shape
        torch.Size([1, 5])
    """

    family = "rnn"
    sample_options = frozenset({"temperature", "prime"})
    exact_likelihood = True
    likelihood_kind = "exact"

    def fit_defaults(self, method: str):
        """SVI: lr 2e-3, mini-batches of 64 sequences, one long text cut into pieces of 128 steps."""
        defaults = super().fit_defaults(method)
        if method == "svi":
            defaults = dataclasses.replace(defaults, learning_rate=2e-3, batch_size=64, chunk_length=128)
        return defaults

    def __init__(
        self,
        observation: str = "categorical",
        *,
        num_symbols: int | None = None,
        dim: int | None = None,
        cell: str = "lstm",
        hidden_size: int = 256,
        num_layers: int = 1,
        embedding_dim: int | None = 64,
        dropout: float = 0.0,
        context_dim: int = 0,
        scale: str = "learned",
    ) -> None:
        super().__init__()
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation: expected one of {OBSERVATIONS}, got {observation!r}")
        if cell not in CELLS:
            raise ValueError(f"cell: expected one of {tuple(CELLS)}, got {cell!r}")
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if embedding_dim is not None and (not isinstance(embedding_dim, int) or embedding_dim < 1):
            raise ValueError(f"embedding_dim: expected a positive int or None, got {embedding_dim!r}")
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"context_dim: expected a nonnegative int, got {context_dim!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if scale not in _SCALES:
            raise ValueError(f"scale: expected one of {_SCALES}, got {scale!r}")
        if observation == "categorical":
            if not isinstance(num_symbols, int) or num_symbols < 1:
                raise ValueError(f"num_symbols: a categorical head needs a positive int, got {num_symbols!r}")
            if dim is not None:
                raise ValueError(f"dim: a categorical head takes num_symbols, not dim (got dim={dim!r})")
        else:
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"dim: a {observation} head needs a positive int, got {dim!r}")
            if num_symbols is not None:
                raise ValueError(f"num_symbols: a {observation} head takes dim, not num_symbols")
        self.observation = observation
        self.num_symbols = num_symbols
        self.dim = dim
        self.cell = cell
        self.family = cell  # reports name the cell: "rnn", "gru" or "lstm"
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.embedding_dim = embedding_dim
        self.dropout = float(dropout)
        self.context_dim = context_dim
        self.scale = scale

        # Width of one raw input step: one-hot symbols, the frame, or values + missing indicators.
        raw_width = {"categorical": num_symbols, "bernoulli": dim, "gaussian": 2 * (dim or 0)}[observation]
        if embedding_dim is None:
            self.embedding = None
            input_width = raw_width
        elif observation == "categorical":
            self.embedding = nn.Embedding(num_symbols, embedding_dim)
            input_width = embedding_dim
        else:
            self.embedding = nn.Linear(raw_width, embedding_dim)
            input_width = embedding_dim
        self.rnn = CELLS[cell](
            input_width + context_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=self.dropout if num_layers > 1 else 0.0,
        )
        self.initial_hidden = nn.Parameter(torch.zeros(num_layers, hidden_size))
        self.initial_cell = nn.Parameter(torch.zeros(num_layers, hidden_size)) if cell == "lstm" else None
        self.context_to_initial = (
            nn.Linear(context_dim, num_layers * hidden_size * (2 if cell == "lstm" else 1), bias=False)
            if context_dim
            else None
        )
        self.output_dropout = nn.Dropout(self.dropout)
        output_width = {
            "categorical": num_symbols,
            "bernoulli": dim,
            "gaussian": (dim or 0) * (2 if scale == "predicted" else 1),
        }[observation]
        self.output = nn.Linear(hidden_size, output_width)
        if observation == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(dim)) if scale == "learned" else None
            self.register_buffer("data_loc", torch.zeros(dim))
            self.register_buffer("data_scale", torch.ones(dim))
        self.reset_parameters(torch.Generator().manual_seed(0))

    # -- parameters --------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "observation": self.observation,
            "num_symbols": self.num_symbols,
            "dim": self.dim,
            "cell": self.cell,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout,
            "context_dim": self.context_dim,
            "scale": self.scale,
        }

    @property
    def _dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    @property
    def _device(self) -> torch.device:
        return self.output.weight.device

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default initialisation, drawn from ``generator``: weights and
        biases uniform in :math:`\\pm 1/\\sqrt{\\text{fan-in}}` (:math:`\\pm 1/\\sqrt H`
        inside the cell), embeddings standard normal, initial states and the
        Gaussian log-scale zero."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith(("initial_", "log_scale")):
                    param.zero_()
                    continue
                if name.startswith("embedding.") and isinstance(self.embedding, nn.Embedding):
                    draw = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                else:
                    if name.startswith("rnn."):
                        fan_in = self.hidden_size
                    else:
                        module = self.get_submodule(name.rsplit(".", 1)[0])
                        fan_in = module.in_features
                    bound = 1.0 / math.sqrt(fan_in)
                    draw = (2 * torch.rand(param.shape, generator=generator, dtype=param.dtype) - 1) * bound
                param.copy_(draw.to(param.device))

    def initialize_from_data(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> None:
        """Output biases at the data's marginal frequencies (log unigram for
        symbols, logit frame frequencies for Bernoulli); for the Gaussian head,
        the standardisation constants (observed mean and standard deviation
        per dimension)."""
        with torch.no_grad():
            values = self._check_observations(batch.values, "batch.values", batch.mask)
            mask = batch.mask
            if self.observation == "categorical":
                counts = torch.bincount(values[mask], minlength=self.num_symbols).to(self._dtype) + 0.5
                self.output.bias.copy_((counts / counts.sum()).log())
                return
            observed = ~torch.isnan(values) & mask.unsqueeze(-1)
            filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
            count = observed.sum((0, 1)).clamp(min=1).to(self._dtype)
            mean = filled.sum((0, 1)) / count
            if self.observation == "bernoulli":
                frequency = ((filled.sum((0, 1)) + 0.5) / (count + 1)).clamp(1e-4, 1 - 1e-4)
                self.output.bias.copy_(torch.logit(frequency))
                return
            variance = (torch.where(observed, values - mean, torch.zeros_like(values)) ** 2).sum((0, 1)) / count
            self.data_loc.copy_(mean)
            self.data_scale.copy_(variance.sqrt().clamp(min=1e-6))

    # -- inputs and states -------------------------------------------------
    def _check_observations(self, x, name: str, mask: Tensor | None = None) -> Tensor:
        """Validates observations; returns them on the model's device (codes
        int64 with padding set to 0, vectors in the model's dtype)."""
        values = torch.as_tensor(x, device=self._device)
        if self.observation == "categorical":
            if values.dim() != 2 or values.is_floating_point() or values.dtype == torch.bool:
                raise ValueError(
                    f"{name}: expected int64 symbol codes in [0, {self.num_symbols}) of shape (N, T), "
                    f"got {values.dtype} of shape {tuple(values.shape)}"
                )
            values = values.long()
            if mask is not None:
                values = values.masked_fill(~mask, 0)
            if values.numel() and (values.min() < 0 or values.max() >= self.num_symbols):
                raise ValueError(
                    f"{name}: expected symbol codes in [0, {self.num_symbols}), "
                    f"got values in [{int(values.min())}, {int(values.max())}]"
                )
            return values
        if values.dim() != 3 or values.shape[-1] != self.dim:
            raise ValueError(f"{name}: expected floats of shape (N, T, {self.dim}), got shape {tuple(values.shape)}")
        values = values.to(self._dtype)
        if mask is not None:
            values = values.masked_fill(~mask.unsqueeze(-1), float("nan"))
        if self.observation == "bernoulli":
            observed = values[~torch.isnan(values)]
            if ((observed != 0) & (observed != 1)).any():
                raise ValueError(f"{name}: a Bernoulli head expects 0/1 entries (NaN = missing)")
        return values

    def _mask_for(self, values: Tensor, lengths) -> Tensor:
        n, t = values.shape[:2]
        if lengths is None:
            return torch.ones(n, t, dtype=torch.bool, device=values.device)
        lengths = torch.as_tensor(lengths, device=values.device)
        if lengths.shape != (n,):
            raise ValueError(f"lengths: expected shape ({n},), got {tuple(lengths.shape)}")
        if n and (lengths.min() < 0 or lengths.max() > t):
            raise ValueError(
                f"lengths: expected values in [0, {t}], got range [{int(lengths.min())}, {int(lengths.max())}]"
            )
        return torch.arange(t, device=values.device) < lengths.unsqueeze(-1)

    def _check_context(self, context, n: int) -> Tensor | None:
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("context: this model was built with context_dim=0 and takes no context")
            return None
        if context is None:
            raise ValueError(f"context: expected a ({n}, {self.context_dim}) tensor, got None")
        context = torch.as_tensor(context, device=self._device, dtype=self._dtype)
        if context.shape != (n, self.context_dim):
            raise ValueError(f"context: expected shape ({n}, {self.context_dim}), got {tuple(context.shape)}")
        return context

    def _embed(self, values: Tensor) -> Tensor:
        """``(N, T, input width)`` network inputs of observations ``values``."""
        if self.observation == "categorical":
            if self.embedding is None:
                return F.one_hot(values, self.num_symbols).to(self._dtype)
            return self.embedding(values)
        observed = ~torch.isnan(values)
        if self.observation == "gaussian":
            standardised = (values - self.data_loc) / self.data_scale
            raw = torch.cat(
                [torch.where(observed, standardised, torch.zeros_like(values)), observed.to(self._dtype)], -1
            )
        else:
            raw = torch.where(observed, values, torch.zeros_like(values))
        return raw if self.embedding is None else self.embedding(raw)

    def _initial_state(self, n: int, context: Tensor | None):
        """The cell's initial state for ``n`` sequences: ``(layers, N, H)`` (a pair for the LSTM)."""
        hidden = self.initial_hidden.unsqueeze(1).expand(-1, n, -1)
        cell = self.initial_cell.unsqueeze(1).expand(-1, n, -1) if self.initial_cell is not None else None
        if context is not None:
            shift = self.context_to_initial(context).reshape(n, -1, self.num_layers, self.hidden_size)
            shift = shift.permute(1, 2, 0, 3)  # (1 or 2, layers, N, H)
            hidden = hidden + shift[0]
            if cell is not None:
                cell = cell + shift[1]
        hidden = hidden.contiguous()
        return (hidden, cell.contiguous()) if cell is not None else hidden

    @staticmethod
    def _top(state) -> Tensor:
        """``(N, H)`` top-layer hidden state of a cell state."""
        hidden = state[0] if isinstance(state, tuple) else state
        return hidden[-1]

    def _step_inputs(self, values: Tensor, context: Tensor | None) -> Tensor:
        inputs = self._embed(values)
        if context is not None:
            inputs = torch.cat([inputs, context.unsqueeze(1).expand(-1, inputs.shape[1], -1)], -1)
        return inputs

    def hidden_states(self, values: Tensor, context: Tensor | None = None) -> Tensor:
        """``(N, T, H)`` top-layer states that predict each step: :math:`h_0, \\dots, h_{T-1}`.

        Step ``t`` is predicted from the state after reading ``x_1 .. x_{t}``
        (0-based: ``values[:, :t]``); the whole batch runs through the cuDNN /
        oneDNN recurrent kernel at once. Training mode applies dropout.
        """
        n, length = values.shape[:2]
        initial = self._initial_state(n, context)
        first = self._top(initial).unsqueeze(1)  # (N, 1, H)
        if length > 1:
            outputs, _ = self.rnn(self._step_inputs(values[:, :-1], context), initial)
            states = torch.cat([first, outputs], 1)
        else:
            states = first[:, :length]
        return self.output_dropout(states)

    # -- observation heads -------------------------------------------------
    def _head(self, states: Tensor) -> dist.Distribution:
        """The next-step distribution from states ``(N, T, H)``: batch shape
        ``(N, T)`` (categorical) or ``(N, T, D)``."""
        out = self.output(states)
        if self.observation == "categorical":
            return dist.Categorical(logits=out)
        if self.observation == "bernoulli":
            return dist.Bernoulli(logits=out)
        d = self.dim
        if self.scale == "learned":
            scale = self.log_scale.exp().expand_as(out)
        else:
            scale = F.softplus(out[..., d:]) + _MIN_SCALE
        return dist.Normal(self.data_loc + self.data_scale * out[..., :d], self.data_scale * scale)

    def _observed(self, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Observations with missing entries filled (0) and the mask of the
        entries that count, both of the head's batch shape."""
        if self.observation == "categorical":
            return values, mask
        observed = ~torch.isnan(values) & mask.unsqueeze(-1)
        return torch.where(observed, values, torch.zeros_like(values)), observed

    def log_prob_steps(self, values, lengths=None, context=None) -> Tensor:
        """``(N, T)`` log-likelihood of each step given the steps before it
        (0 on padding; summed over the observed entries of a vector step)."""
        mask = self._mask_for(torch.as_tensor(values), lengths)
        values = self._check_observations(values, "values", mask.to(self._device))
        mask = mask.to(values.device)
        context = self._check_context(context, values.shape[0])
        obs, observed = self._observed(values, mask)
        pieces = [
            self._head(states).log_prob(obs[:, start:stop])
            for states, start, stop in self._hidden_state_windows(values, context)
        ]
        log_probs = (
            torch.cat(pieces, 1)
            if pieces
            else torch.zeros(obs.shape, dtype=self.output.weight.dtype, device=values.device)
        )
        log_probs = torch.where(observed, log_probs, torch.zeros_like(log_probs))
        return log_probs if self.observation == "categorical" else log_probs.sum(-1)

    def _hidden_state_windows(self, values: Tensor, context: Tensor | None, window: int | None = None):
        """Yields ``(states (N, stop - start, H), start, stop)`` over consecutive windows of
        at most ``window`` steps (default :data:`SCORE_WINDOW`), the states that predict steps
        ``start .. stop - 1``.

        The recurrent state is carried from one window to the next, so the result equals
        :meth:`hidden_states` exactly; memory is bounded by the window, which lets a whole
        long text (a million characters) be scored in one call.
        """
        window = window or SCORE_WINDOW
        n, length = values.shape[:2]
        state = self._initial_state(n, context)
        for start in range(0, length, window):
            stop = min(start + window, length)
            previous = self._top(state).unsqueeze(1)  # (N, 1, H): predicts step `start`
            outputs, state = self.rnn(self._step_inputs(values[:, start:stop], context), state)
            yield self.output_dropout(torch.cat([previous, outputs[:, :-1]], 1)), start, stop

    def log_prob(self, values, lengths=None, context=None) -> Tensor:
        """``(N,)`` exact log-likelihood of each sequence, :math:`\\sum_t \\log p(x_t \\mid x_{<t})`.

        Args:
            values: ``(N, T)`` codes or ``(N, T, D)`` floats (NaN = missing).
            lengths: ``(N,)`` real steps of each sequence (default: all ``T``).
            context: ``(N, context_dim)`` when the model takes a context.
        """
        return self.log_prob_steps(values, lengths, context).sum(-1)

    def _batch_context(self, batch: SequenceBatch, context: Tensor | None = None) -> Tensor | None:
        """The context ``θ``: ``context`` if given, else the batch's ``"context"``
        covariate ``(N, context_dim)`` (ignored by a model built without one)."""
        if context is None and self.context_dim:
            context = batch.covariates.get("context")
            if context is None:
                raise ValueError(
                    f"context: this model takes a ({batch.num_sequences}, {self.context_dim}) context; "
                    f"give the batch a 'context' covariate (batch.with_covariates(context=...))"
                )
        return self._check_context(context, batch.num_sequences)

    def log_prob_batch(self, batch: SequenceBatch, *, num_particles: int = 1) -> Tensor:
        """``(N,)`` exact log-likelihood of each sequence of ``batch``, conditioned
        on its ``"context"`` covariate when the model takes one (``num_particles``
        is ignored: the likelihood is exact)."""
        return self.log_prob(batch.values, batch.lengths, self._batch_context(batch))

    # -- the Pyro model ------------------------------------------------------
    def model(self, batch: SequenceBatch, context: Tensor | None = None) -> None:
        """Teacher-forced next-step likelihood of the batch as one masked
        observation site (no latent variable). The context ``θ`` is ``context``
        or the batch's ``"context"`` covariate."""
        mask = batch.mask
        values = self._check_observations(batch.values, "batch.values", mask)
        context = self._batch_context(batch, context)
        obs, observed = self._observed(values, mask)
        head = self._head(self.hidden_states(values, context))
        with sequence_plate(batch):
            pyro.sample("observations", head.mask(observed).to_event(len(head.batch_shape) - 1), obs=obs)

    def guide(self, batch: SequenceBatch, context: Tensor | None = None) -> None:
        """No latent variable: the guide samples nothing."""

    # -- generation ----------------------------------------------------------
    def _check_prime(self, prime, num_sequences: int) -> Tensor | None:
        if prime is None:
            return None
        prime = torch.as_tensor(prime, device=self._device)
        event_dims = 0 if self.observation == "categorical" else 1
        if prime.dim() == 1 + event_dims:
            prime = prime.unsqueeze(0).expand(num_sequences, *prime.shape)
        if prime.dim() != 2 + event_dims or prime.shape[0] != num_sequences:
            expected = "(P,) or (N, P)" if event_dims == 0 else f"(P, {self.dim}) or (N, P, {self.dim})"
            raise ValueError(
                f"prime: expected shape {expected} with N = num_sequences = {num_sequences}, got {tuple(prime.shape)}"
            )
        return self._check_observations(prime, "prime")

    def _draw(self, head: dist.Distribution, temperature: float, generator: torch.Generator | None) -> Tensor:
        """One draw from a next-step head of batch shape ``(N,)`` or ``(N, D)``,
        tempered: symbols :math:`q_i \\propto \\exp(z_i / T)`, Bernoulli logits
        divided by ``T``, Gaussian noise multiplied by ``T``; ``T = 0`` is the mode."""
        if self.observation == "categorical":
            logits = head.logits
            if temperature == 0:
                return logits.argmax(-1)
            probs = torch.softmax(logits.double() / temperature, -1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if self.observation == "bernoulli":
            if temperature == 0:
                return (head.logits > 0).to(self._dtype)
            probs = torch.sigmoid(head.logits / temperature)
            return (torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype) < probs).to(
                self._dtype
            )
        noise = torch.randn(head.loc.shape, generator=generator, device=head.loc.device, dtype=head.loc.dtype)
        return head.loc + temperature * head.scale * noise

    def sample(
        self,
        num_sequences: int,
        length: int,
        generator: torch.Generator | None = None,
        *,
        temperature: float = 1.0,
        prime=None,
        context=None,
    ) -> SequenceBatch:
        """Generates ``length`` steps per sequence, optionally after a prime.

        Args:
            num_sequences: ``N``.
            length: steps to generate (the prime is not included in the result).
            generator: random numbers (on the model's device).
            temperature: ``T >= 0``; 1 samples the model, below 1 sharpens,
                0 is greedy decoding (see :meth:`greedy`).
            prime: a prefix every sequence starts from, ``(P,)`` / ``(P, D)``
                (shared) or ``(N, P)`` / ``(N, P, D)``; the generated steps
                continue it.
            context: ``(N, context_dim)`` when the model takes a context.

        Returns:
            A :class:`SequenceBatch` of ``(N, length)`` codes or ``(N, length, D)`` floats.
        """
        if not isinstance(num_sequences, int) or num_sequences < 1 or not isinstance(length, int) or length < 1:
            raise ValueError(f"num_sequences and length: expected positive ints, got {num_sequences!r}, {length!r}")
        if not isinstance(temperature, (int, float)) or not temperature >= 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
        prime = self._check_prime(prime, num_sequences)
        context = self._check_context(context, num_sequences)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                state = self._initial_state(num_sequences, context)
                if prime is not None and prime.shape[1]:
                    _, state = self.rnn(self._step_inputs(prime, context), state)
                steps = []
                for t in range(length):
                    current = self._draw(self._head(self._top(state)), float(temperature), generator)
                    steps.append(current)
                    if t + 1 < length:
                        _, state = self.rnn(self._step_inputs(current.unsqueeze(1), context), state)
        finally:
            self.train(was_training)
        return SequenceBatch.from_tensor(torch.stack(steps, 1))

    def greedy(self, num_sequences: int, length: int, *, prime=None, context=None) -> SequenceBatch:
        """Greedy decoding: the most probable next symbol (the Bernoulli mode,
        the Gaussian mean) at every step, fed back in; ``sample`` at ``T = 0``."""
        return self.sample(num_sequences, length, temperature=0.0, prime=prime, context=context)

    def forecast_distribution(
        self, history: SequenceBatch, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
    ) -> ForecastDistribution:
        """Forecast by sampling: ``num_samples`` continuations of each history; a categorical
        model returns the symbol frequencies among them (add-half smoothed, so a symbol no path
        drew keeps a finite log-loss), a real-valued one the sample paths."""
        paths = torch.stack(
            [self._continuations(sequence, steps, num_samples, generator) for sequence in history.sequences()], 1
        )  # (S, N, H[, D])
        source = f"monte carlo (S={num_samples})"
        if self.observation == "categorical":
            counts = F.one_hot(paths, self.num_symbols).sum(0).to(self._dtype) + 0.5
            return ForecastDistribution("categorical", probs=counts / counts.sum(-1, keepdim=True), source=source)
        return ForecastDistribution("samples", samples=paths, source=source)

    def _continuations(
        self, sequence: Tensor, steps: int, num_samples: int, generator: torch.Generator | None
    ) -> Tensor:
        """``(S, H[, D])`` sample continuations of one history: the draws of
        ``sample(S, H, generator, prime=sequence)``, but the recurrent state runs through the
        history once and then branches into the ``S`` paths (``sample`` would run the prime
        ``S`` times, ``S x`` the history's length per origin)."""
        if self.context_dim:
            return self.sample(num_samples, steps, generator, prime=sequence if len(sequence) else None).values
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                state = self._initial_state(1, None)
                if len(sequence):
                    _, state = self.rnn(self._step_inputs(self._check_prime(sequence, 1), None), state)
                expand = lambda tensor: tensor.expand(-1, num_samples, -1).contiguous()  # noqa: E731
                state = tuple(expand(part) for part in state) if isinstance(state, tuple) else expand(state)
                draws = []
                for t in range(steps):  # as sample() draws them, at temperature 1
                    current = self._draw(self._head(self._top(state)), 1.0, generator)
                    draws.append(current)
                    if t + 1 < steps:
                        _, state = self.rnn(self._step_inputs(current.unsqueeze(1), None), state)
        finally:
            self.train(was_training)
        return torch.stack(draws, 1)


def elman_rnn(observation: str = "categorical", **kwargs) -> RecurrentModel:
    """A :class:`RecurrentModel` with the Elman (tanh) cell."""
    return RecurrentModel(observation, cell="rnn", **kwargs)


def gru(observation: str = "categorical", **kwargs) -> RecurrentModel:
    """A :class:`RecurrentModel` with the GRU cell."""
    return RecurrentModel(observation, cell="gru", **kwargs)


def lstm(observation: str = "categorical", **kwargs) -> RecurrentModel:
    """A :class:`RecurrentModel` with the LSTM cell."""
    return RecurrentModel(observation, cell="lstm", **kwargs)


# -- command-line registration ------------------------------------------------
# What `seqzoo` needs to offer this family (see zoo/registry.py and docs/families.md).
from zoo.registry import Family, UsageError, register  # noqa: E402

#: Observation head of a recurrent network for each kind of data.
_HEAD_FOR_KIND = {"categorical": "categorical", "binary": "bernoulli", "real": "gaussian"}
#: Settings (the fit flags' destinations, the keys of ``lstm:hidden=256,layers=2``) -> constructor argument.
_CLI_SETTINGS = {
    "hidden": "hidden_size",
    "layers": "num_layers",
    "embedding": "embedding_dim",
    "dropout": "dropout",
    "scale": "scale",
}


#: SVI settings that suit recurrent networks when the command line names none: Adam at 2e-3
#: on mini-batches of 64 sequences of at most 128 steps (truncated backpropagation through time).
def _add_cli_arguments(group) -> None:
    group.add_argument("--hidden", type=int, default=256, help="units per layer (default 256)")
    group.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    group.add_argument(
        "--embedding", type=int, default=64, help="input embedding width, 0 = one-hot/raw input (default 64)"
    )
    group.add_argument(
        "--dropout", type=float, default=0.0, help="dropout between layers and before the output (default 0)"
    )
    group.add_argument(
        "--scale", choices=["learned", "predicted"], help="real data: per-dimension or predicted noise scale"
    )


def _cli_settings(args) -> dict[str, str]:
    return {key: str(getattr(args, key)) for key in _CLI_SETTINGS if getattr(args, key, None) is not None}


def _cli_builder(cell: str):
    def build(data, settings: dict[str, str]) -> RecurrentModel:
        """A recurrent network with ``cell`` and the head that fits the data's kind."""
        head = _HEAD_FOR_KIND.get(data.kind)
        if head is None:
            raise UsageError(f"{cell}: data of kind {data.kind!r} is not supported; read counts as --kind real")
        options: dict[str, Any] = {}
        for key, value in settings.items():
            name = _CLI_SETTINGS[key]
            try:
                if name == "dropout":
                    options[name] = float(value)
                elif name == "scale":
                    options[name] = value
                elif name == "embedding_dim" and value.lower() in ("none", "0"):
                    options[name] = None
                else:
                    options[name] = int(value)
            except ValueError:
                raise UsageError(f"{cell}: setting {key}={value!r} is not a number") from None
        if head == "categorical":
            options["num_symbols"] = data.num_symbols
        else:
            options["dim"] = data.num_series
        try:
            return RecurrentModel(head, cell=cell, **options)
        except ValueError as error:
            raise UsageError(f"{cell}: {error}") from None

    return build


def _cli_label(cell: str):
    def label(settings: dict[str, str]) -> str:
        layers = settings.get("layers", "1")
        return f"{cell}-hidden{settings.get('hidden', 256)}" + (f"-layers{layers}" if layers != "1" else "")

    return label


def _one_step_log_probs(model: RecurrentModel, batch: SequenceBatch) -> Tensor:
    """``(N, T)`` log p(x_t | x_<t, θ), 0 on padding (θ: the batch's ``"context"`` covariate, if any)."""
    return model.log_prob_steps(batch.values, batch.lengths, model._batch_context(batch))


for _cell, _help in (
    ("rnn", "Elman recurrent network (deterministic state)"),
    ("gru", "gated recurrent unit network (deterministic state)"),
    ("lstm", "long short-term memory network (deterministic state)"),
):
    register(
        Family(
            name=_cell,
            help=_help,
            add_arguments=_add_cli_arguments,
            settings_from_args=_cli_settings,
            build=_cli_builder(_cell),
            label=_cli_label(_cell),
            model_classes=(RecurrentModel,),
            data_kinds=tuple(_HEAD_FOR_KIND),
            per_step_log_probs=_one_step_log_probs,
        )
    )
