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

**Chains** run one after another in this process, each with its own seed
(``seed + chain``) and its own warm-up (step size and diagonal mass matrix
adaptation). Pyro can run chains in parallel processes (``mp_context``), but
that forks a process holding numba kernels and torch thread pools, and pickles
the model; sequential chains are slower on a many-core machine and always safe.

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

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

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
    """

    draws: dict[str, Tensor]
    sample_stats: dict[str, Tensor]
    states: Tensor | None = None
    label_permutations: Tensor | None = None
    warmup_steps: int = 0
    seed: int = 0
    seconds: float = 0.0
    chain_seconds: list[float] = field(default_factory=list)

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
        count = self._t - self._warmup_steps if self._t > self._warmup_steps else self._t
        accept = mean_accept_before + count * (self._mean_accept_prob - mean_accept_before) if count > 1 else self._mean_accept_prob
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


def _jittered_start(model: SequenceModel, jitter: float, generator: torch.Generator) -> dict[str, Tensor]:
    """The model's point values moved by N(0, jitter^2) noise in each site's unconstrained space."""
    start = {}
    values = model.parameter_values()
    for name, prior in model.parameter_sites().items():
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


def potential_energy(model: SequenceModel, batch: SequenceBatch
                     ) -> tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Transform]] | None:
    """NUTS's potential energy without Pyro's trace, when the model provides ``nuts_log_likelihood``.

    Returns:
        ``(energy, transforms)``: ``energy`` maps unconstrained site values ``{name: z}`` to
        the scalar potential (module docstring); ``transforms[name]`` maps a site's
        constrained value to its unconstrained one (Pyro's convention). ``None`` when the
        model has no such hook or it returns ``None``.
    """
    hook = getattr(model, "nuts_log_likelihood", None)
    log_likelihood = hook(batch) if hook is not None else None
    if log_likelihood is None:
        return None
    # Built once per run; without argument validation, whose checks cost more than the densities
    # (the values are in the support by construction: they come through biject_to).
    with pyro.validation_enabled(False):
        priors = model.parameter_sites()
    to_constrained = {name: biject_to(prior.support) for name, prior in priors.items()}
    # The sequence plate scales a mini-batch to its population (1 for the full data set).
    scale = (batch.population or batch.num_sequences) / batch.num_sequences

    densities = {name: _unconstrained_log_density(prior, to_constrained[name]) for name, prior in priors.items()}

    def energy(unconstrained: dict[str, Tensor]) -> Tensor:
        log_joint = 0.0
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
        if not (isinstance(part, torch.distributions.AffineTransform)
                and bool(torch.all(torch.as_tensor(part.loc) == 0)) and bool(torch.all(torch.as_tensor(part.scale) == 1))):
            return False
    return True


def _unconstrained_log_density(prior: torch.distributions.Distribution, transform: Transform
                               ) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``z -> (log p(T(z)) + log|det T'(z)|, T(z))`` for a site with prior ``p``, ``T = transform``.

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
) -> MCMCResult:
    """Samples the posterior of the model's parameter sites by NUTS (see module docstring).

    Args:
        model: a model with parameter sites and an exact, differentiable
            marginal likelihood inside ``model()``.
        batch: the data.
        num_samples: draws kept per chain.
        warmup_steps: adaptation iterations per chain (discarded).
        num_chains: chains, run one after another.
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
        callbacks: called with ``{"chain", "seconds", "divergences", ...}`` after each chain.

    Returns:
        An :class:`MCMCResult`; the model is left at the posterior ``point``.

    Raises:
        ValueError: the model has no parameter sites, or an argument is out of range.
    """
    sites = model.parameter_sites()
    if not sites:
        raise ValueError(f"model: {type(model).__name__} has no parameter sites (no priors) to sample by NUTS; "
                         f"fit it with method='svi' or 'em'")
    if not model.exact_likelihood:
        raise ValueError(f"model: NUTS needs an exact marginal likelihood; {type(model).__name__} has a "
                         f"{model.likelihood_kind!r} one")
    for name, value in (("num_samples", num_samples), ("warmup_steps", warmup_steps), ("num_chains", num_chains)):
        if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
            raise ValueError(f"{name}: expected a {'nonnegative' if name == 'warmup_steps' else 'positive'} int, got {value!r}")
    if not 0 < target_accept_prob < 1:
        raise ValueError(f"target_accept_prob: expected a number in (0, 1), got {target_accept_prob!r}")
    if init_jitter < 0:
        raise ValueError(f"init_jitter: expected a nonnegative number, got {init_jitter!r}")
    if point not in ("mean", "median"):
        raise ValueError(f"point: expected 'mean' or 'median', got {point!r}")
    model.eval()
    potential = potential_energy(model, batch)
    started = time.perf_counter()
    chains_draws: list[dict[str, Tensor]] = []
    chains_stats: list[dict[str, list]] = []
    chain_seconds = []
    generator = torch.Generator().manual_seed(seed)
    with tqdm(total=num_chains * (warmup_steps + num_samples), desc=description or f"{model.family} nuts",
              unit="it", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for chain in range(num_chains):
            chain_started = time.perf_counter()
            pyro.set_rng_seed(seed + chain)
            start = _jittered_start(model, init_jitter, generator)
            if potential is None:
                kernel = _RecordingNUTS(model.model, init_strategy=init_to_value(values=start),
                                        target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
                initial_params = None
            else:
                energy, transforms = potential
                kernel = _RecordingNUTS(potential_fn=energy, transforms=transforms,
                                        target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
                initial_params = {name: transforms[name](value) for name, value in start.items()}
            stats: dict[str, list] = {name: [] for name in SAMPLE_STAT_NAMES}

            def hook(kernel, samples, stage, index, stats=stats, chain=chain):
                bar.update(1)
                if stage == "Sample":
                    for name in SAMPLE_STAT_NAMES:
                        stats[name].append(kernel.last_stats[name])
                    if index % 20 == 0:
                        bar.set_postfix({"chain": chain, "step": f"{kernel.last_stats['step_size']:.3g}",
                                         "divergences": sum(stats["diverging"])}, refresh=False)

            sampler = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                           disable_progbar=True, hook_fn=hook, initial_params=initial_params)
            sampler.run(batch)
            chains_draws.append({name: value.detach() for name, value in sampler.get_samples().items()})
            chains_stats.append(stats)
            chain_seconds.append(time.perf_counter() - chain_started)
            for callback in callbacks or []:
                callback({"chain": chain, "seconds": chain_seconds[-1], "divergences": sum(stats["diverging"]),
                          "mean_tree_depth": sum(stats["tree_depth"]) / num_samples,
                          "mean_acceptance_rate": sum(stats["acceptance_rate"]) / num_samples})
    draws = {name: torch.stack([chain[name] for chain in chains_draws]) for name in sites}
    sample_stats = {}
    for name in SAMPLE_STAT_NAMES:
        dtype = torch.bool if name == "diverging" else (torch.long if name in ("tree_depth", "n_steps") else torch.float64)
        sample_stats[name] = torch.tensor([chain[name] for chain in chains_stats], dtype=dtype)
    permutations = None
    if align_labels:
        draws, permutations = align_state_labels(model, draws)
    states = None
    if sample_states and hasattr(model, "sample_states"):
        states = sample_state_paths(model, batch, draws, seed=seed)
    result = MCMCResult(draws=draws, sample_stats=sample_stats, states=states, label_permutations=permutations,
                        warmup_steps=warmup_steps, seed=seed, seconds=time.perf_counter() - started,
                        chain_seconds=chain_seconds)
    model.set_parameter_values(result.point(point))
    return result


def sample_state_paths(model: SequenceModel, batch: SequenceBatch, draws: Mapping[str, Tensor], seed: int = 0) -> Tensor:
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
