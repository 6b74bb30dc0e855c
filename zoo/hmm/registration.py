"""The HMM family's command-line registration: what ``seqzoo`` needs to offer it (see
:mod:`zoo.registry` and docs/families.md) — its flags, the settings they give, the model
they build (the emission chosen by the data's kind), the fit's memory estimate from the
settings alone, the categorical HMM's one-step predictive log-probabilities, the
state-posterior figure, and the ``register(Family(...))`` call, run when :mod:`zoo.hmm` is
imported."""

from __future__ import annotations

import torch
from torch import Tensor

from inference.batch import SequenceBatch
from zoo.data import require_counts, require_real
from zoo.registry import Decoding, Family, UsageError, register

from .base import HiddenMarkovModel
from .categorical import CategoricalHMM
from .gaussian import GaussianHMM
from .memory import hmm_fit_memory
from .poisson import PoissonHMM

#: The emission an HMM takes for each kind of data when the user names none.
_EMISSION_FOR_KIND = {"categorical": "categorical", "real": "gaussian", "count": "poisson"}


def _add_cli_arguments(group) -> None:
    group.add_argument("--states", type=int, required=True, help="number of hidden states K")
    group.add_argument("--emission", choices=["categorical", "gaussian", "poisson"])
    group.add_argument("--covariance", choices=["diag", "full"], default="diag")
    group.add_argument("--guide", choices=["map", "meanfield"], default="map")
    group.add_argument("--marginalize", choices=["kernel", "enumerate"], default="kernel")


def _cli_settings(args) -> dict[str, str]:
    settings = {
        "states": str(args.states),
        "covariance": args.covariance,
        "guide": args.guide,
        "marginalize": args.marginalize,
    }
    if args.emission:
        settings["emission"] = args.emission
    return settings


def _states_setting(settings: dict[str, str]) -> int:
    """``--states`` as a positive int, refused by its flag (not the constructor's ``num_states``)."""
    try:
        states = int(settings.get("states", 8))
    except ValueError:
        raise UsageError(f"--states: expected a positive integer, got {settings['states']!r}") from None
    if states < 1:
        raise UsageError(f"--states: expected a positive integer, got {states}")
    return states


def _emission_setting(data, settings: dict[str, str]) -> str:
    emission = settings.get("emission") or _EMISSION_FOR_KIND.get(data.kind)
    if emission is None:
        raise UsageError(
            f"--emission: data of kind {data.kind!r} needs an explicit emission (categorical, gaussian or poisson)"
        )
    return emission


def _fit_memory(data, settings: dict[str, str], method: str):
    """The fit's peak memory from ``--states`` and the data's sizes alone, before any
    ``(K, K)`` parameter is allocated (see :func:`zoo.hmm.memory.hmm_fit_memory`)."""
    states, emission = _states_setting(settings), _emission_setting(data, settings)
    batch = data.batch
    if emission == "categorical" and data.kind == "categorical":
        sizes = {"num_symbols": data.num_symbols}
    else:
        d = data.dim
        per_state = d + d * d if settings.get("covariance") == "full" and emission == "gaussian" else 2 * d
        sizes = {"emission_parameters_per_state": per_state}
    return hmm_fit_memory(
        states,
        **sizes,
        batch_sequences=max(1, batch.num_sequences),
        batch_steps=int(batch.values.shape[1]),
        method=method if method in ("em", "svi") else "em",
        parameter_bytes=batch.values.element_size() if batch.values.is_floating_point() else 4,
    )


def _build_from_settings(data, settings: dict[str, str]) -> HiddenMarkovModel:
    """An HMM matching the data: categorical for symbols, Gaussian for reals, Poisson for counts."""
    states = _states_setting(settings)
    emission = _emission_setting(data, settings)
    common = dict(guide=settings.get("guide", "map"), marginalize=settings.get("marginalize", "kernel"))
    if emission == "categorical":
        if data.kind != "categorical":
            raise UsageError(f"--emission categorical needs symbol data, but {data.source} holds {data.kind} data")
        return CategoricalHMM(states, data.num_symbols, **common)
    if emission == "gaussian":
        require_real(data, "--emission gaussian")
        return GaussianHMM(states, data.dim, covariance_type=settings.get("covariance", "diag"), **common)
    if emission == "poisson":
        require_counts(data, "--emission poisson")
        return PoissonHMM(states, data.dim, **common)
    raise UsageError(f"--emission: expected categorical, gaussian or poisson, got {emission!r}")


def _one_step_log_probs(model: HiddenMarkovModel, batch: SequenceBatch) -> Tensor | None:
    """``(N, T)`` log p(x_t | x_<t) of a categorical HMM (0 on padding); None for other emissions.

    The one-step predictive: p(x_t | x_<t) = Σ_k p(s_t = k | x_<t) B[k, x_t], with
    p(s_t | x_<t) the filtered distribution of step t - 1 pushed through A (π at t = 1).
    """
    if not isinstance(model, CategoricalHMM):
        return None
    codes, lengths = batch.values, batch.lengths
    filtered = model.filter(codes, lengths).double()  # (N, T, K)
    initial = model.initial_probs.double().expand(len(codes), 1, -1)  # (N, 1, K)
    predicted = torch.cat([initial, filtered[:, :-1] @ model.transition_probs.double()], 1)  # (N, T, K)
    emitted = model.emission_probs.double()[:, codes].permute(1, 2, 0)  # (N, T, K): B[k, x_nt]
    log_probs = (predicted * emitted).sum(-1).log()
    inside = torch.arange(codes.shape[1], device=codes.device) < lengths.unsqueeze(-1)
    return torch.where(inside, log_probs, torch.zeros_like(log_probs))


def _plot_state_posterior(run, model: HiddenMarkovModel, splits, data, steps: int = 120) -> None:
    """``posterior_states.png``: p(state | data) over the first ``steps`` steps of the
    first validation sequence (else the first training sequence)."""
    from zoo import plots  # matplotlib only when a figure is drawn

    part = splits.valid if splits.valid is not None and splits.valid.batch.num_steps else splits.train
    batch = part.batch[0]
    length = min(steps, int(batch.lengths[0]))
    values = batch.values[:, :length].to(next(model.parameters()).device)
    with torch.no_grad():
        marginals = model.smooth(values)[0].cpu().numpy()
    labels = list(data.vocabulary.decode(batch.values[0, :length].tolist())) if data.vocabulary else None
    # One series cut in time: the validation part starts where the training part ends, so number its steps so.
    first_step = int(splits.train.batch.lengths[0]) if part is splits.valid and data.num_sequences == 1 else 0
    title = f"p(state | data), steps {first_step}–{first_step + length - 1}" + (
        " (validation part)" if part is splits.valid else ""
    )
    run.save_figure(
        "posterior_states.png", plots.state_probabilities(marginals, labels, title=title, first_step=first_step)
    )


register(
    Family(
        name="hmm",
        help="hidden Markov model (discrete states)",
        add_arguments=_add_cli_arguments,
        settings_from_args=_cli_settings,
        build=_build_from_settings,
        label=lambda settings: f"hmm-states{settings.get('states', 8)}",
        model_classes=(CategoricalHMM, GaussianHMM, PoissonHMM),
        data_kinds=("categorical", "real", "count"),
        plots=_plot_state_posterior,
        per_step_log_probs=_one_step_log_probs,
        decode=lambda model, batch: Decoding(model.decode(batch.values, batch.lengths), model.num_states),
        memory_estimate=_fit_memory,
    )
)
