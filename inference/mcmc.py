r"""NUTS over the parameter sites of a model whose marginal likelihood is exact.

For a family whose ``model()`` samples its global parameters from priors and
marginalises its latent states exactly (the forward algorithm of an HMM, the
Kalman filter of a linear-Gaussian model), the potential energy
:math:`-\log p(\theta) - \log p(x \mid \theta)` is differentiable in the
parameters :math:`\theta`, so Pyro's No-U-Turn sampler
(:class:`pyro.infer.NUTS` over ``model.model``) samples
:math:`p(\theta \mid x)` directly; each site moves in the unconstrained space of
its prior's support (stick-breaking for simplex rows, log for positive values).
The states are recovered afterwards: for every draw, the model is set to that
draw (``set_parameter_values``) and one state path is drawn by
forward-filtering backward-sampling (``model.sample_states``), which together
are exact draws from :math:`p(\theta, s \mid x)`.

Reach it through :func:`inference.fit.fit` with ``method="nuts"``; it depends on
the :class:`~inference.contract.SequenceModel` contract only
(``parameter_sites``, ``parameter_values``, ``set_parameter_values``, and
optionally ``sample_states`` and the state-label hooks).

**Chains** run in parallel worker processes, ``num_workers`` at a time (default: as
many as the chains, at most the cores this process may use), each with its own seed
(``seed + chain``), its own start and its own warm-up (step size and diagonal mass
matrix adaptation); ``num_workers=1`` runs them one after another in this process.
A chain's draws do not depend on which process runs it: the starts are drawn here, in
chain order, and every chain runs the same function, reseeded, in a process with one
torch thread (bit-for-bit the same draws, tested). On Linux the workers are forked, so
nothing is pickled (the model, the batch and the compiled kernels are inherited) and
scripts need no ``if __name__ == "__main__"`` guard; elsewhere (or with
``start_method="spawn"``) the model and batch are pickled to each worker. The workers
send their progress to this process's bar, an exception raised in a chain is re-raised
here naming the chain, and on any error or Ctrl-C every worker is ended before
:func:`run_nuts` returns. Pyro's own multi-chain ``MCMC`` is not used: it would not run
our potential, starts and per-iteration statistics.

**Starts.** Every chain starts at the model's current point values
(``parameter_values()``, e.g. a MAP fit or a data-driven initialisation;
simplex values mixed with 1% of the uniform distribution so that a MAP
probability of exactly 0 does not start the chain at infinity), moved by Gaussian noise of standard deviation ``init_jitter`` in the
unconstrained space, so chains start apart and ``r_hat`` can see a chain that
has not mixed.

**Warm-up.** Pyro adapts the step size and a diagonal mass matrix in
windows during warm-up; below about 100 warm-up iterations the adaptation is
poor and a chain can be left with a tiny step size, crawling at
``max_tree_depth``. Use at least 100 (500 for reported results).

**Potential energy.** By default NUTS runs over ``model.model`` and Pyro traces
the model at every leapfrog step (a few milliseconds of Python per gradient). A
model whose ``model()`` has no latent sites other than its parameter sites may
provide ``nuts_log_likelihood(batch)``, returning a function of the site values
(constrained, as ``parameter_sites()`` names them) to the ``(N,)`` exact
log-likelihoods that ``model()`` factors in, differentiable in them, or ``None``
when it cannot (e.g. states as sample sites). NUTS then runs on the potential
:math:`-\sum_{\rm sites} [\log p(T(z)) + \log|\det T'(z)|] - \log p(x \mid T(z))`
with :math:`T` = ``biject_to(prior.support)``, the priors built once per run: the
same density Pyro's trace gives (tested), without the trace.

**Label switching.** Draws are relabelled to one ordering of the states with
:func:`inference.labels.align_state_labels` (when the model declares state
labels) before anything is averaged or states are sampled.

Example:
    >>> result = fit(hmm, batch, method="nuts", num_samples=500, warmup_steps=500, num_chains=4)  # doctest: +SKIP
    >>> result.mcmc.draws["means"].shape  # (chains, draws, K, D)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform
from tqdm.auto import tqdm

from .batch import SequenceBatch
from .contract import SequenceModel
from .labels import align_state_labels

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext

#: Simplex-valued starts are mixed with this much of the uniform distribution.
_SIMPLEX_SHRINK = 0.01
#: Names of the per-draw NUTS statistics, as ArviZ names them.
SAMPLE_STAT_NAMES = ("diverging", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp")


@dataclass
class MCMCResult:
    """Draws of a NUTS run.

    Attributes:
        draws: site name -> ``(chains, draws, *site_shape)`` posterior draws
            (after warm-up, state labels aligned).
        sample_stats: name -> ``(chains, draws)``: ``diverging`` (bool),
            ``tree_depth`` (doublings of the trajectory), ``n_steps``
            (leapfrog steps), ``step_size``, ``acceptance_rate`` (mean
            Metropolis acceptance probability over the trajectory) and ``lp``
            (log joint density of the draw in the unconstrained space, i.e.
            minus the potential energy).
        states: ``(chains, draws, N, T)`` state paths drawn by
            forward-filtering backward-sampling at each draw (``-1`` on
            padding), or ``None`` if the model cannot sample states or it was
            switched off.
        label_permutations: ``(chains, draws, K)`` relabelling applied to each
            draw (``aligned[k] = raw[perm[k]]``), or ``None``.
        warmup_steps: warm-up iterations per chain.
        seed: base seed (chain ``c`` used ``seed + c``).
        seconds: wall time of the sampling.
        chain_seconds: wall time of each chain.
        chain_cpu_seconds: CPU time of each chain (in the process that ran it).
        num_workers: processes that ran the chains (1: one after another in this one).
    """

    draws: dict[str, Tensor]
    sample_stats: dict[str, Tensor]
    states: Tensor | None = None
    label_permutations: Tensor | None = None
    warmup_steps: int = 0
    seed: int = 0
    seconds: float = 0.0
    chain_seconds: list[float] = field(default_factory=list)
    chain_cpu_seconds: list[float] = field(default_factory=list)
    num_workers: int = 1

    @property
    def num_chains(self) -> int:
        return next(iter(self.sample_stats.values())).shape[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return next(iter(self.sample_stats.values())).shape[1]

    @property
    def num_divergences(self) -> int:
        return int(self.sample_stats["diverging"].sum())

    def draw(self, chain: int, index: int) -> dict[str, Tensor]:
        """Site values of one draw."""
        return {name: value[chain, index] for name, value in self.draws.items()}

    def point(self, statistic: str = "mean") -> dict[str, Tensor]:
        """Posterior mean (``"mean"``) or coordinate-wise median (``"median"``) of every site.

        The mean of simplex rows is a simplex row and the mean of
        positive-definite matrices is positive definite; the median of a simplex
        row is renormalised by the caller's setter only if it needs it, so
        prefer ``"mean"`` for simplex sites.
        """
        if statistic == "mean":
            return {name: value.mean((0, 1)) for name, value in self.draws.items()}
        if statistic == "median":
            return {name: value.flatten(0, 1).median(0).values for name, value in self.draws.items()}
        raise ValueError(f"statistic: expected 'mean' or 'median', got {statistic!r}")


class _RecordingNUTS(NUTS):
    """NUTS that records, for each iteration, the tree depth and the number of
    leapfrog steps (Pyro keeps neither)."""

    leapfrog_steps: int
    max_doubling: int
    last_stats: dict[str, Any]

    def _build_basetree(self, *args, **kwargs):
        self.leapfrog_steps += 1
        return super()._build_basetree(*args, **kwargs)

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        # Top-level calls come with tree_depth = 0, 1, 2 ... (one per doubling);
        # the recursion below them passes smaller values.
        self.max_doubling = max(self.max_doubling, tree_depth)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)

    def sample(self, params):
        self.leapfrog_steps = 0
        self.max_doubling = -1
        divergences_before = len(self._divergences)
        t_before = self._t
        mean_accept_before = self._mean_accept_prob
        z = super().sample(params)
        # NUTS keeps a running mean of the acceptance probability with count n (reset after warm-up).
        warmup_steps = self._warmup_steps
        assert warmup_steps is not None  # set by setup(), which MCMC runs before the first sample
        count = self._t - warmup_steps if self._t > warmup_steps else self._t
        accept = (
            mean_accept_before + count * (self._mean_accept_prob - mean_accept_before)
            if count > 1
            else self._mean_accept_prob
        )
        potential = self._potential_energy_last
        self.last_stats = {
            "diverging": len(self._divergences) > divergences_before,
            "tree_depth": self.max_doubling + 1,
            "n_steps": self.leapfrog_steps,
            "step_size": float(self.step_size),
            "acceptance_rate": min(max(float(accept), 0.0), 1.0),  # recovered from a running mean: rounding
            "lp": -float(potential) if potential is not None else math.nan,
            "t": t_before,
        }
        return z


def _torch_priors(model: SequenceModel) -> dict[str, torch.distributions.Distribution]:
    """``model.parameter_sites()``, checked to be torch distributions (Pyro's are): NUTS reads
    their ``support`` and ``log_prob``."""
    priors = model.parameter_sites()
    for name, prior in priors.items():
        if not isinstance(prior, torch.distributions.Distribution):
            raise TypeError(
                f"{type(model).__name__}.parameter_sites(): the prior of {name!r} is not a torch "
                f"Distribution (use pyro.distributions), got {type(prior).__name__}"
            )
    return cast(dict[str, torch.distributions.Distribution], priors)


def _jittered_start(model: SequenceModel, jitter: float, generator: torch.Generator) -> dict[str, Tensor]:
    """The model's point values moved by N(0, jitter^2) noise in each site's unconstrained space."""
    start = {}
    values = model.parameter_values()
    for name, prior in _torch_priors(model).items():
        value = values[name].detach()
        support = prior.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if isinstance(support, type(constraints.simplex)):
            # A MAP fit can sit on the boundary (an initial or transition probability of
            # exactly 0), which is -inf in the stick-breaking coordinates: start inside.
            value = (1 - _SIMPLEX_SHRINK) * value + _SIMPLEX_SHRINK / value.shape[-1]
        if jitter > 0:
            transform = biject_to(prior.support)
            unconstrained = transform.inv(value)
            noise = torch.randn(unconstrained.shape, generator=generator, dtype=unconstrained.dtype)
            value = transform(unconstrained + jitter * noise.to(unconstrained.device))
        start[name] = value
    return start


def potential_energy(
    model: SequenceModel, batch: SequenceBatch
) -> tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Transform]] | None:
    """NUTS's potential energy without Pyro's trace, when the model provides ``nuts_log_likelihood``.

    Returns:
        ``(energy, transforms)``: ``energy`` maps unconstrained site values ``{name: z}`` to
        the scalar potential (module docstring); ``transforms[name]`` maps a site's
        constrained value to its unconstrained one (Pyro's convention). ``None`` when the
        model has no such hook or it returns ``None``.
    """
    log_likelihood = model.nuts_log_likelihood(batch) if model.supports("nuts_log_likelihood") else None
    if log_likelihood is None:
        return None
    # Built once per run; without argument validation, whose checks cost more than the densities
    # (the values are in the support by construction: they come through biject_to).
    with pyro.validation_enabled(False):
        priors = _torch_priors(model)
    to_constrained = {name: biject_to(prior.support) for name, prior in priors.items()}
    # The sequence plate scales a mini-batch to its population (1 for the full data set).
    scale = (batch.population or batch.num_sequences) / batch.num_sequences

    densities = {name: _unconstrained_log_density(prior, to_constrained[name]) for name, prior in priors.items()}

    def energy(unconstrained: dict[str, Tensor]) -> Tensor:
        log_joint: Tensor | float = 0.0
        sites = {}
        for name, density in densities.items():
            site_log_density, sites[name] = density(unconstrained[name])
            log_joint = log_joint + site_log_density
        return -(log_joint + scale * log_likelihood(sites).sum())

    return energy, {name: transform.inv for name, transform in to_constrained.items()}


def _is_exp(transform: Transform) -> bool:
    """Whether ``transform`` is ``exp`` elementwise (Pyro writes ``biject_to(positive)`` as
    ``exp`` followed by the shift ``0 + 1 * x``)."""
    while isinstance(transform, torch.distributions.transforms.IndependentTransform):
        transform = transform.base_transform
    parts = transform.parts if isinstance(transform, torch.distributions.ComposeTransform) else [transform]
    if not parts or not isinstance(parts[0], torch.distributions.ExpTransform):
        return False
    for part in parts[1:]:
        if not (
            isinstance(part, torch.distributions.AffineTransform)
            and bool(torch.all(torch.as_tensor(part.loc) == 0))
            and bool(torch.all(torch.as_tensor(part.scale) == 1))
        ):
            return False
    return True


def _unconstrained_log_density(
    prior: torch.distributions.Distribution, transform: Transform
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    r"""``z -> (log p(T(z)) + log|det T'(z)|, T(z))`` for a site with prior ``p``, ``T = transform``.

    Inverse-gamma variances on the log scale (the variance priors of the state-space and
    Gaussian families) take the closed form :math:`a \log b - \log\Gamma(a) - a z - b e^{-z}`
    (a few tensor operations instead of the transformed distribution's dozen, which dominate
    the potential of a small model); every other prior goes through its ``log_prob``.
    """
    base = prior
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if isinstance(base, torch.distributions.InverseGamma) and _is_exp(transform):
        shape, rate = base.concentration.detach(), base.rate.detach()
        constant = shape * rate.log() - torch.lgamma(shape)

        def inverse_gamma(z: Tensor) -> tuple[Tensor, Tensor]:
            log_density = constant - shape * z - rate * torch.exp(-z)
            return log_density.expand(prior.batch_shape + prior.event_shape).sum(), transform(z)

        return inverse_gamma

    def generic(z: Tensor) -> tuple[Tensor, Tensor]:
        value = transform(z)
        return prior.log_prob(value).sum() + transform.log_abs_det_jacobian(z, value).sum(), value

    return generic


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def default_num_workers(num_chains: int, device: torch.device | str = "cpu") -> int:
    """Worker processes :func:`run_nuts` uses by default: ``min(num_chains, available_cores())``
    on the CPU, 1 (chains one after another in this process) on any other device."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(num_chains, available_cores()))


class ChainError(RuntimeError):
    """A NUTS chain failed in a worker process without an exception that could be sent back
    (the process died, or its exception could not be pickled). ``chain`` is its index
    (``None`` when a worker died between chains)."""

    def __init__(self, chain: int | None, message: str) -> None:
        super().__init__(message)
        self.chain = chain


class _WorkerTraceback(Exception):
    """The formatted traceback of an exception raised in a worker (set as the re-raised
    exception's ``__cause__``, as :mod:`concurrent.futures` does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)

    def __str__(self) -> str:
        return "\n" + self.args[0]


@dataclass(frozen=True)
class _ChainSettings:
    """What every chain of one run shares (picklable, sent to the workers)."""

    num_samples: int
    warmup_steps: int
    seed: int
    target_accept_prob: float
    max_tree_depth: int


def _run_chain(
    model: SequenceModel,
    batch: SequenceBatch,
    potential,
    start: dict[str, Tensor],
    chain: int,
    settings: _ChainSettings,
    on_iteration: Callable[[_RecordingNUTS, str, dict[str, list]], None],
) -> tuple[dict[str, Tensor], dict[str, list]]:
    """One chain: seeded with ``settings.seed + chain``, started at ``start`` (constrained values).

    The same function runs a chain in this process and in a worker, so both give the same draws.
    ``on_iteration(kernel, stage, stats)`` is called after every warm-up and sampling iteration.

    Returns:
        ``(draws, stats)``: site name -> ``(num_samples, *site_shape)`` and
        statistic name -> list of ``num_samples`` values (:data:`SAMPLE_STAT_NAMES`).
    """
    pyro.set_rng_seed(settings.seed + chain)
    if potential is None:
        kernel = _RecordingNUTS(
            model.model,
            init_strategy=init_to_value(values=start),
            target_accept_prob=settings.target_accept_prob,
            max_tree_depth=settings.max_tree_depth,
        )
        initial_params = None
    else:
        energy, transforms = potential
        kernel = _RecordingNUTS(
            potential_fn=energy,
            transforms=transforms,
            target_accept_prob=settings.target_accept_prob,
            max_tree_depth=settings.max_tree_depth,
        )
        initial_params = {name: transforms[name](value) for name, value in start.items()}
    stats: dict[str, list] = {name: [] for name in SAMPLE_STAT_NAMES}

    def hook(kernel, samples, stage, index):
        if stage == "Sample":
            for name in SAMPLE_STAT_NAMES:
                stats[name].append(kernel.last_stats[name])
        on_iteration(kernel, stage, stats)

    sampler = MCMC(
        kernel,
        num_samples=settings.num_samples,
        warmup_steps=settings.warmup_steps,
        num_chains=1,
        disable_progbar=True,
        hook_fn=hook,
        initial_params=initial_params,
    )
    sampler.run(batch)
    return {name: value.detach() for name, value in sampler.get_samples().items()}, stats


def _chain_record(chain: int, seconds: float, cpu_seconds: float, stats: Mapping[str, list], num_samples: int) -> dict:
    """What the callbacks receive when a chain ends."""
    return {
        "chain": chain,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "divergences": sum(stats["diverging"]),
        "mean_tree_depth": sum(stats["tree_depth"]) / num_samples,
        "mean_acceptance_rate": sum(stats["acceptance_rate"]) / num_samples,
    }


def run_nuts(
    model: SequenceModel,
    batch: SequenceBatch,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    init_jitter: float = 0.1,
    sample_states: bool = True,
    align_labels: bool = True,
    point: str = "mean",
    progress: bool = True,
    description: str | None = None,
    callbacks: list[Callable[[dict], None]] | None = None,
    num_workers: int | None = None,
    start_method: str | None = None,
) -> MCMCResult:
    """Samples the posterior of the model's parameter sites by NUTS (see module docstring).

    Args:
        model: a model with parameter sites and an exact, differentiable
            marginal likelihood inside ``model()``.
        batch: the data.
        num_samples: draws kept per chain.
        warmup_steps: adaptation iterations per chain (discarded).
        num_chains: independent chains.
        seed: chain ``c`` is seeded with ``seed + c``.
        target_accept_prob: step-size adaptation target.
        max_tree_depth: NUTS maximum number of doublings.
        init_jitter: standard deviation of the start noise (unconstrained units).
        sample_states: draw one state path per draw with ``model.sample_states``
            (when the model has it).
        align_labels: relabel states across draws (when the model declares labels).
        point: what the model holds afterwards: ``"mean"`` or ``"median"`` of
            the (aligned) draws.
        progress: tqdm bar on stderr.
        description: progress-bar label.
        callbacks: called with ``{"chain", "seconds", "cpu_seconds", "divergences", ...}``
            for each chain as it ends, in chain order.
        num_workers: processes running chains at once; ``None`` = :func:`default_num_workers`
            (``min(num_chains, available cores)`` on the CPU), 1 = one after another in
            this process. The draws do not depend on it.
        start_method: how workers start (``"fork"``, ``"spawn"``, ``"forkserver"``);
            ``None`` = ``"fork"`` on Linux (no pickling of the model, no ``__main__``
            guard needed), ``"spawn"`` elsewhere, where a model that does not pickle
            runs its chains in this process (``result.num_workers`` says what ran).

    Returns:
        An :class:`MCMCResult`; the model is left at the posterior ``point``.

    Raises:
        ValueError: the model has no parameter sites, or an argument is out of range.
        TypeError: an explicit non-fork ``start_method`` and a model that does not pickle.
        ChainError: a worker process died, or raised an exception that could not be
            sent back; a chain's own exception is re-raised as it is, with a note naming
            the chain and the worker's traceback as its cause.
    """
    sites = model.parameter_sites()
    if not sites:
        raise ValueError(
            f"model: {type(model).__name__} has no parameter sites (no priors) to sample by NUTS; "
            f"fit it with method='svi' or 'em'"
        )
    if not model.exact_likelihood:
        raise ValueError(
            f"model: NUTS needs an exact marginal likelihood; {type(model).__name__} has a "
            f"{model.likelihood_kind!r} one"
        )
    for name, value in (("num_samples", num_samples), ("warmup_steps", warmup_steps), ("num_chains", num_chains)):
        if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
            raise ValueError(
                f"{name}: expected a {'nonnegative' if name == 'warmup_steps' else 'positive'} int, got {value!r}"
            )
    if not 0 < target_accept_prob < 1:
        raise ValueError(f"target_accept_prob: expected a number in (0, 1), got {target_accept_prob!r}")
    if init_jitter < 0:
        raise ValueError(f"init_jitter: expected a nonnegative number, got {init_jitter!r}")
    if point not in ("mean", "median"):
        raise ValueError(f"point: expected 'mean' or 'median', got {point!r}")
    device = batch.values.device
    if num_workers is None:
        num_workers = default_num_workers(num_chains, device)
    elif not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ValueError(f"num_workers: expected a positive int or None, got {num_workers!r}")
    elif num_workers > 1 and device.type != "cpu":
        raise ValueError(
            f"num_workers: chains run in parallel processes on the CPU only; the batch is on "
            f"{device}: use num_workers=1"
        )
    num_workers = min(num_workers, num_chains)
    if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
        raise ValueError(
            f"start_method: expected one of {multiprocessing.get_all_start_methods()}, got {start_method!r}"
        )
    method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
    if num_workers > 1 and method != "fork":
        # Only a forked worker inherits the model; the others unpickle it.
        try:
            pickle.dumps((model, _batch_fields(batch)))
        except Exception as error:
            if start_method is not None:
                raise TypeError(
                    f"start_method={start_method!r} pickles the model and batch to the workers, and "
                    f"{type(model).__name__} does not pickle ({error}); use start_method='fork' "
                    f"where the platform has it, or num_workers=1"
                ) from error
            num_workers = 1  # the default on a platform without fork: the chains run here, one after another
    model.eval()
    settings = _ChainSettings(
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        seed=seed,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
    )
    # All starts drawn here, in chain order, from one generator: the same whichever process runs a chain.
    generator = torch.Generator().manual_seed(seed)
    starts = [_jittered_start(model, init_jitter, generator) for _ in range(num_chains)]
    started = time.perf_counter()
    with tqdm(
        total=num_chains * (warmup_steps + num_samples),
        desc=description or f"{model.family} nuts",
        unit="it",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        if num_workers == 1:
            chains = _run_chains_here(model, batch, starts, settings, bar, callbacks or [])
        else:
            chains = _run_chains_in_workers(model, batch, starts, settings, bar, callbacks or [], num_workers, method)
    draws = {name: torch.stack([chain_draws[name] for chain_draws, _, _, _ in chains]).to(device) for name in sites}
    sample_stats = {}
    for name in SAMPLE_STAT_NAMES:
        dtype = (
            torch.bool if name == "diverging" else (torch.long if name in ("tree_depth", "n_steps") else torch.float64)
        )
        sample_stats[name] = torch.tensor([stats[name] for _, stats, _, _ in chains], dtype=dtype)
    permutations = None
    if align_labels:
        draws, permutations = align_state_labels(model, draws)
    states = None
    if sample_states and model.supports("sample_states"):
        states = sample_state_paths(model, batch, draws, seed=seed)
    result = MCMCResult(
        draws=draws,
        sample_stats=sample_stats,
        states=states,
        label_permutations=permutations,
        warmup_steps=warmup_steps,
        seed=seed,
        seconds=time.perf_counter() - started,
        chain_seconds=[seconds for _, _, seconds, _ in chains],
        chain_cpu_seconds=[cpu for _, _, _, cpu in chains],
        num_workers=num_workers,
    )
    model.set_parameter_values(result.point(point))
    return result


_Chain = tuple[dict[str, Tensor], dict[str, list], float, float]  # draws, stats, wall seconds, CPU seconds


def _run_chains_here(model, batch, starts, settings: _ChainSettings, bar, callbacks) -> list[_Chain]:
    """The chains one after another in this process."""
    potential = potential_energy(model, batch)
    chains = []
    for chain, start in enumerate(starts):
        wall, cpu = time.perf_counter(), time.process_time()

        def on_iteration(kernel, stage, stats, chain=chain):
            bar.update(1)
            if stage == "Sample" and len(stats["diverging"]) % 20 == 1:
                bar.set_postfix(
                    {
                        "chain": chain,
                        "step": f"{kernel.last_stats['step_size']:.3g}",
                        "divergences": sum(stats["diverging"]),
                    },
                    refresh=False,
                )

        try:
            chain_draws, stats = _run_chain(model, batch, potential, start, chain, settings, on_iteration)
        except Exception as error:
            error.add_note(f"(in NUTS chain {chain})")
            raise
        chains.append((chain_draws, stats, time.perf_counter() - wall, time.process_time() - cpu))
        for callback in callbacks:
            callback(_chain_record(chain, chains[-1][2], chains[-1][3], stats, settings.num_samples))
    return chains


#: Seconds between a worker's progress messages.
_PROGRESS_INTERVAL = 0.2
#: Seconds the parent waits for a message before it checks that the workers are alive.
_POLL_INTERVAL = 0.5


def _batch_fields(batch: SequenceBatch) -> dict:
    """The batch's fields, picklable (its covariates are a read-only mapping proxy, which is not)."""
    fields = {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}
    fields["covariates"] = dict(fields["covariates"])
    return fields


def _chain_worker(
    worker: int,
    model: SequenceModel,
    batch_fields: dict,
    starts: list[dict[str, Tensor]],
    settings: _ChainSettings,
    tasks,
    messages,
    parent_pid: int,
) -> None:
    """A worker process: runs the chains it takes from ``tasks`` (``None`` ends it) and sends
    ``("start", chain, worker)``, ``("progress", chain, iterations, divergences)``,
    ``("done", chain, draws as numpy, stats, seconds, cpu seconds)`` or
    ``("error", chain, exception bytes or None, description, traceback)`` to ``messages``."""
    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One thread each: the workers are already as many as the cores.
    torch.set_num_threads(1)
    batch = potential = None
    while (chain := tasks.get()) is not None:
        messages.put(("start", chain, worker))
        wall, cpu = time.perf_counter(), time.process_time()
        unsent = [0, time.perf_counter()]

        def on_iteration(kernel, stage, stats, chain=chain, unsent=unsent):
            unsent[0] += 1
            now = time.perf_counter()
            if now - unsent[1] > _PROGRESS_INTERVAL:
                if os.getppid() != parent_pid:  # the parent is gone (killed): do not run on as an orphan
                    os._exit(1)
                messages.put(("progress", chain, unsent[0], sum(stats["diverging"])))
                unsent[0], unsent[1] = 0, now

        try:
            if batch is None:  # set up inside the try: a failure here is reported with the chain too
                batch = SequenceBatch(**batch_fields)
                potential = potential_energy(model, batch)
            chain_draws, stats = _run_chain(model, batch, potential, starts[chain], chain, settings, on_iteration)
        except BaseException as error:
            try:
                payload = pickle.dumps(error)
                pickle.loads(payload)
            except Exception:
                payload = None
            messages.put(("error", chain, payload, f"{type(error).__name__}: {error}", traceback.format_exc()))
            return
        messages.put(
            (
                "done",
                chain,
                {name: value.cpu().numpy() for name, value in chain_draws.items()},
                stats,
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
        )


def _run_chains_in_workers(
    model, batch, starts, settings: _ChainSettings, bar, callbacks, num_workers: int, start_method: str
) -> list[_Chain]:
    """The chains in ``num_workers`` processes, each taking the next chain when it is free."""
    # start_method is one of get_all_start_methods() (run_nuts checks it); typeshed types
    # get_context(str) as BaseContext, which has no Process.
    # (A string: ForkContext does not exist on Windows.)
    context = cast("ForkContext | SpawnContext | ForkServerContext", multiprocessing.get_context(start_method))
    # The parent only puts into a SimpleQueue, which has no feeder thread: none of ours runs when it forks.
    tasks = context.SimpleQueue()
    messages = context.Queue()
    workers = [
        context.Process(
            target=_chain_worker,
            name=f"nuts-worker-{worker}",
            daemon=True,
            args=(worker, model, _batch_fields(batch), starts, settings, tasks, messages, os.getpid()),
        )
        for worker in range(num_workers)
    ]
    num_chains = len(starts)
    finished: dict[int, _Chain] = {}
    running: dict[int, int] = {}  # worker -> chain
    divergences = [0] * num_chains
    reported = [0] * num_chains
    per_chain = settings.warmup_steps + settings.num_samples
    next_callback = 0
    try:
        for process in workers:
            process.start()
        for chain in range(num_chains):
            tasks.put(chain)
        for _ in workers:
            tasks.put(None)
        silent_polls, checked = 0, time.monotonic()
        while len(finished) < num_chains:
            try:
                message = messages.get(timeout=_POLL_INTERVAL)
            except queue.Empty:
                message = None
            silent_polls = silent_polls + 1 if message is None else 0
            # Checked on a clock, not only when the queue is quiet: the other workers' progress
            # messages would otherwise hide a dead one.
            if message is None or time.monotonic() - checked > _POLL_INTERVAL:
                _check_workers_alive(workers, running, finished, silent_polls)
                checked = time.monotonic()
            if message is None:
                continue
            kind, chain = message[0], message[1]
            if kind == "start":
                running[message[2]] = chain
            elif kind == "progress":
                bar.update(message[2])
                reported[chain] += message[2]
                divergences[chain] = message[3]
            elif kind == "error":
                _raise_chain_error(chain, *message[2:])
            else:
                chain_draws = {name: torch.from_numpy(value) for name, value in message[2].items()}
                stats = message[3]
                finished[chain] = (chain_draws, stats, message[4], message[5])
                divergences[chain] = sum(stats["diverging"])
                bar.update(per_chain - reported[chain])
                running = {worker: running_chain for worker, running_chain in running.items() if running_chain != chain}
            bar.set_postfix({"done": f"{len(finished)}/{num_chains}", "divergences": sum(divergences)}, refresh=False)
            # Callbacks in chain order, as the serial path calls them.
            while next_callback in finished:
                _, stats, seconds, cpu_seconds = finished[next_callback]
                for callback in callbacks:
                    callback(_chain_record(next_callback, seconds, cpu_seconds, stats, settings.num_samples))
                next_callback += 1
        for process in workers:
            process.join()
    finally:
        # On an error or KeyboardInterrupt, no worker outlives this call.
        for process in workers:
            if process.is_alive():
                process.terminate()
        for process in workers:
            if process.pid is not None:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join()
        messages.close()
        messages.cancel_join_thread()
    return [finished[chain] for chain in range(num_chains)]


def _check_workers_alive(
    workers, running: Mapping[int, int], finished: Mapping[int, object], silent_polls: int
) -> None:
    """Raises :class:`ChainError` for a worker that died without reporting (killed, crashed),
    or when every worker has ended and ``silent_polls`` polls in a row found no message
    while chains are missing."""
    for worker, process in enumerate(workers):
        if process.exitcode is not None and process.exitcode != 0:
            chain = running.get(worker)
            if chain is not None and chain not in finished:
                raise ChainError(
                    chain,
                    f"NUTS chain {chain}: its worker process (pid {process.pid}) died with exit code "
                    f"{process.exitcode} (a negative code is the signal that ended it)",
                )
            raise ChainError(
                None, f"a NUTS worker process (pid {process.pid}) died between chains with exit code {process.exitcode}"
            )
    if all(process.exitcode is not None for process in workers) and silent_polls >= 2:
        raise ChainError(None, "the NUTS worker processes ended without sending every chain")


def _raise_chain_error(chain: int, payload: bytes | None, description: str, worker_traceback: str):
    """Re-raises a worker's exception (with a note naming the chain) or a :class:`ChainError`."""
    cause = _WorkerTraceback(worker_traceback)
    if payload is not None:
        error = pickle.loads(payload)
        error.add_note(f"(in NUTS chain {chain}, raised in a worker process; its traceback is above)")
        raise error from cause
    raise ChainError(chain, f"NUTS chain {chain} failed in a worker process: {description}") from cause


def sample_state_paths(
    model: SequenceModel, batch: SequenceBatch, draws: Mapping[str, Tensor], seed: int = 0
) -> Tensor:
    """One state path per draw by forward-filtering backward-sampling.

    Args:
        model: a model with ``sample_states(values, lengths, num_samples, generator)``.
        batch: the data.
        draws: site name -> ``(C, D, *site_shape)``.
        seed: seed of the sampling generator.

    Returns:
        ``(C, D, N, T)`` long state paths (``-1`` on padding). The model's
        parameters are left at the last draw; the caller restores its point.
    """
    first = next(iter(draws.values()))
    chains, per_chain = first.shape[:2]
    generator = torch.Generator(device=batch.device).manual_seed(seed)
    paths = []
    with torch.no_grad():
        for chain in range(chains):
            for index in range(per_chain):
                model.set_parameter_values({name: value[chain, index] for name, value in draws.items()})
                path = model.sample_states(batch.values, batch.lengths, num_samples=1, generator=generator)[0]
                paths.append(path.cpu())
    return torch.stack(paths).reshape(chains, per_chain, *paths[0].shape)
