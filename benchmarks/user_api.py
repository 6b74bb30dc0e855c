"""Benchmark what a user calls — ``model.log_prob``, its gradient, a fit step, NUTS — against
statsmodels, hmmlearn and dynamax (JAX) in one run, with the kernel-only times beside.

Kalman (one sequence, ``T`` steps, ``d = p``, float64, a random stable system):

* ``log_prob``: ``LinearGaussianSSM.log_prob(y)`` under ``torch.no_grad()``;
* ``log_prob+grad``: ``model.log_prob(y).sum().backward()`` into every learned parameter
  (A, B, Γ, Σ, μ0, Σ0 through the model's own parametrisation);
* ``kernel`` / ``kernel+grad``: :func:`inference.kalman.log_marginal` on the matrices;
* ``fit step``: ``fit(model, batch, method="svi", max_epochs=1)`` (one optimiser step on one
  sequence, including the trainer's set-up);
* statsmodels ``KalmanFilter.loglike``; dynamax ``lgssm_filter(...).marginal_loglik`` under
  ``jax.jit`` and ``jax.jit(jax.value_and_grad(...))`` w.r.t. all its parameters;
* each value and its value + gradient (ours, the kernel's, dynamax's) are timed interleaved,
  call for call, so both see the same load; the ``grad/value`` columns are the ratios of
  their median wall times and of their median CPU times (the process's, which a loaded
  machine's preemptions do not inflate), and ``dynamax+grad / ours+grad`` that of the two
  gradients' median wall times.

HMM (``CategoricalHMM``, ``V = 27`` symbols, one sequence of ``T`` steps):

* ``log_prob`` / ``log_prob+grad`` (into the model's logits) and the kernel
  :func:`inference.discrete.log_marginal` on ``log B.T[x]``;
* hmmlearn ``CategoricalHMM.score``; dynamax ``hmm_filter(...).marginal_loglik`` (jit) and its
  ``value_and_grad`` w.r.t. the three log-parameter arrays (softmax inside, as ours).

NUTS (``--nuts``): ``fit(method="nuts")`` on the Nile local-level model, ``--nuts-chains``
chains of ``--nuts-draws`` warm-up + the same number of draws (default 4 x (1000 + 1000)),
once per ``--nuts-workers`` value (default: 1, chains one after another, then the default
number of worker processes) in the same run: seconds, iterations per second, max r_hat, min
bulk ESS, ESS per second, CPU seconds per chain and the 1-minute load average at the end
(on a shared machine the CPU seconds are the comparable column), and whether the draws
equal the first row's (they should, bit for bit).

Every library runs on ``--threads`` threads (default 1; set before numpy, torch and JAX
load). Times are medians of ``--repeat`` runs after a warm-up (compilation excluded).
``--device cuda`` runs our models on the GPU (the references stay on CPU). A missing
reference library prints ``n/a``. Ratios in the docs are taken within one run: the
machine this was written on is shared and loaded, so absolute seconds vary between runs.

Usage::

    python benchmarks/user_api.py --quick
    python benchmarks/user_api.py --dims 1 4 16 64 --states 2 8 32 128 --nuts
    python benchmarks/user_api.py --dims --states --nuts   # NUTS only: serial, then parallel
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (the benchmarks' shared helpers; sets no state on import)

if __name__ == "__main__":
    _timing.pin_threads(_timing.threads_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import discrete, kalman  # noqa: E402
from inference.batch import SequenceBatch  # noqa: E402
from inference.fit import fit  # noqa: E402
from zoo.hmm import CategoricalHMM  # noqa: E402
from zoo.lgssm import LinearGaussianSSM  # noqa: E402

NUM_SYMBOLS = 27


_timed = _timing.timed
_synchronise = _timing.synchronise


def _interleaved(first, second, repeat: int) -> tuple[str, str, str]:
    """``repeat`` alternating calls of ``first`` and ``second`` (after one untimed call of
    each): their median wall seconds as table cells, and the ratio second / first of the
    median wall times and of the median CPU times of the process (``"2.31 / 2.05"``). The
    two see the same load; on a loaded machine a call that lost the CPU for a scheduler
    tick (4 ms here) is slower by that much in wall time, not in CPU time, so the CPU-time
    ratio is the cost of the code itself."""
    if first is None or second is None:
        return "n/a", "n/a", "n/a"
    wall = ([], [])
    cpu = ([], [])
    try:
        first()
        second()
        for _ in range(repeat):
            for index, function in enumerate((first, second)):
                start, start_cpu = time.perf_counter(), time.process_time()
                function()
                cpu[index].append(time.process_time() - start_cpu)
                wall[index].append(time.perf_counter() - start)
    except Exception as error:  # a reference failing must not stop the table; say why
        return f"failed ({type(error).__name__})", f"failed ({type(error).__name__})", "n/a"
    first_median, second_median = statistics.median(wall[0]), statistics.median(wall[1])
    cpu_ratio = statistics.median(cpu[1]) / statistics.median(cpu[0])
    return f"{first_median:.4g}", f"{second_median:.4g}", f"{second_median / first_median:.2f} / {cpu_ratio:.2f}"


# -- Kalman ------------------------------------------------------------------------------
def _random_system(dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def spd(size: int) -> np.ndarray:
        root = rng.standard_normal((size, size)) / np.sqrt(size)
        return root @ root.T + 0.5 * np.eye(size)

    transition = rng.standard_normal((dim, dim))
    transition *= 0.9 / np.abs(np.linalg.eigvals(transition)).max()
    return dict(
        transition=transition,
        observation=rng.standard_normal((dim, dim)) / np.sqrt(dim),
        transition_cov=spd(dim),
        observation_cov=spd(dim),
        initial_mean=rng.standard_normal(dim),
        initial_cov=spd(dim),
    )


def _simulate(system: dict[str, np.ndarray], num_steps: int, rng: np.random.Generator) -> np.ndarray:
    dim = system["transition"].shape[0]
    state_noise = rng.standard_normal((num_steps, dim)) @ np.linalg.cholesky(system["transition_cov"]).T
    obs_noise = rng.standard_normal((num_steps, dim)) @ np.linalg.cholesky(system["observation_cov"]).T
    state = system["initial_mean"] + np.linalg.cholesky(system["initial_cov"]) @ rng.standard_normal(dim)
    observations = np.empty((num_steps, dim))
    for t in range(num_steps):
        if t > 0:
            state = system["transition"] @ state + state_noise[t]
        observations[t] = system["observation"] @ state + obs_noise[t]
    return observations


def _dynamax_kalman(system, observations):
    try:
        import jax
        from dynamax.linear_gaussian_ssm.inference import (
            ParamsLGSSM,
            ParamsLGSSMDynamics,
            ParamsLGSSMEmissions,
            ParamsLGSSMInitial,
            lgssm_filter,
        )
    except ImportError:
        return None, None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    dim = system["transition"].shape[0]
    arrays = {name: jnp.asarray(value) for name, value in system.items()}
    emissions = jnp.asarray(observations)

    def loglik(arrays):
        params = ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=arrays["initial_mean"], cov=arrays["initial_cov"]),
            dynamics=ParamsLGSSMDynamics(
                weights=arrays["transition"],
                bias=jnp.zeros(dim),
                input_weights=jnp.zeros((dim, 0)),
                cov=arrays["transition_cov"],
            ),
            emissions=ParamsLGSSMEmissions(
                weights=arrays["observation"],
                bias=jnp.zeros(dim),
                input_weights=jnp.zeros((dim, 0)),
                cov=arrays["observation_cov"],
            ),
        )
        return lgssm_filter(params, emissions).marginal_loglik

    value = jax.jit(loglik)
    value_and_grad = jax.jit(jax.value_and_grad(loglik))
    return (lambda: value(arrays).block_until_ready(), lambda: jax.block_until_ready(value_and_grad(arrays)))


def _statsmodels_kalman(system, observations):
    try:
        from statsmodels.tsa.statespace.kalman_filter import KalmanFilter
    except ImportError:
        return None
    dim = system["transition"].shape[0]
    model = KalmanFilter(k_endog=dim, k_states=dim, k_posdef=dim)
    model.bind(np.asfortranarray(observations.T))
    model["design"], model["obs_cov"] = system["observation"], system["observation_cov"]
    model["transition"], model["selection"], model["state_cov"] = (
        system["transition"],
        np.eye(dim),
        system["transition_cov"],
    )
    model.initialize_known(system["initial_mean"], system["initial_cov"])
    return model.loglike


def kalman_rows(dims, num_steps, repeat, device, with_fit, reference_repeat=None) -> list[list[str]]:
    reference_repeat = repeat if reference_repeat is None else reference_repeat
    rng = np.random.default_rng(0)
    rows = []
    for dim in dims:
        system = _random_system(dim, rng)
        observations = _simulate(system, num_steps, rng)
        as_tensor = lambda value: torch.as_tensor(value, dtype=torch.float64, device=device)  # noqa: E731
        model = LinearGaussianSSM.from_params(
            *(
                as_tensor(system[name])
                for name in (
                    "transition",
                    "observation",
                    "transition_cov",
                    "observation_cov",
                    "initial_mean",
                    "initial_cov",
                )
            ),
            initial="prior",
        ).to(device)
        values = as_tensor(observations)[None]
        matrices = [
            as_tensor(system[name])
            for name in (
                "transition",
                "transition_cov",
                "observation",
                "observation_cov",
                "initial_mean",
                "initial_cov",
            )
        ]
        leaves = [value.clone().requires_grad_() for value in matrices]

        def value():
            with torch.no_grad():
                model.log_prob(values)
            _synchronise(device)

        def value_and_grad():
            model.zero_grad(set_to_none=True)
            model.log_prob(values).sum().backward()
            _synchronise(device)

        def kernel():
            with torch.no_grad():
                kalman.log_marginal(*matrices, values)
            _synchronise(device)

        def kernel_grad():
            kalman.log_marginal(*leaves, values).sum().backward()
            _synchronise(device)

        def fit_step():
            batch = SequenceBatch(values=values, lengths=torch.tensor([num_steps], device=device))
            fit(model, batch, method="svi", max_epochs=1, progress=False)

        dynamax_value, dynamax_grad = _dynamax_kalman(system, observations)
        # Value and value + gradient alternate (same load); their ratio is the goal's measure.
        value_cell, grad_cell, model_ratio = _interleaved(value, value_and_grad, repeat)
        kernel_cell, kernel_grad_cell, kernel_ratio = _interleaved(kernel, kernel_grad, repeat)
        dynamax_cell, dynamax_grad_cell, dynamax_ratio = _interleaved(dynamax_value, dynamax_grad, reference_repeat)
        against = f"{float(dynamax_grad_cell) / float(grad_cell):.3g}" if dynamax_ratio != "n/a" else "n/a"
        rows.append(
            [
                str(dim),
                value_cell,
                grad_cell,
                kernel_cell,
                kernel_grad_cell,
                _timed(fit_step, 1) if with_fit else "-",
                _timed(_statsmodels_kalman(system, observations), reference_repeat),
                dynamax_cell,
                dynamax_grad_cell,
                model_ratio,
                kernel_ratio,
                dynamax_ratio,
                against,
            ]
        )
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    return rows


# -- HMM ---------------------------------------------------------------------------------
def _random_hmm(num_states, rng):
    transition = rng.dirichlet(np.ones(num_states), size=num_states)
    emission = rng.dirichlet(np.ones(NUM_SYMBOLS), size=num_states)
    initial = rng.dirichlet(np.ones(num_states))
    return initial, transition, emission


def _sample(initial, transition, emission, num_steps, rng):
    states = np.empty(num_steps, dtype=np.int64)
    states[0] = rng.choice(len(initial), p=initial)
    cumulative = transition.cumsum(1)
    uniforms = rng.random(num_steps)
    for t in range(1, num_steps):
        states[t] = min(np.searchsorted(cumulative[states[t - 1]], uniforms[t]), len(initial) - 1)
    emission_cumulative = emission.cumsum(1)
    draws = rng.random(num_steps)
    return np.array([min(np.searchsorted(emission_cumulative[s], u), NUM_SYMBOLS - 1) for s, u in zip(states, draws)])


def _hmmlearn(initial, transition, emission, symbols):
    try:
        from hmmlearn.hmm import CategoricalHMM as Reference
    except ImportError:
        return None
    reference = Reference(n_components=len(initial), n_features=NUM_SYMBOLS)
    reference.startprob_, reference.transmat_, reference.emissionprob_ = initial, transition, emission
    return lambda: reference.score(symbols[:, None])


def _dynamax_hmm(initial, transition, emission, symbols):
    try:
        import jax
        from dynamax.hidden_markov_model.inference import hmm_filter
    except ImportError:
        return None, None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    logits = tuple(jnp.log(jnp.asarray(value)) for value in (initial, transition, emission))
    codes = jnp.asarray(symbols)

    def loglik(logits):
        log_initial, log_transition, log_emission = logits
        emission_probs = jax.nn.log_softmax(log_emission, -1)
        return hmm_filter(
            jax.nn.softmax(log_initial), jax.nn.softmax(log_transition, -1), emission_probs[:, codes].T
        ).marginal_loglik

    value = jax.jit(loglik)
    value_and_grad = jax.jit(jax.value_and_grad(loglik))
    return (lambda: value(logits).block_until_ready(), lambda: jax.block_until_ready(value_and_grad(logits)))


def hmm_rows(state_counts, num_steps, repeat, device) -> list[list[str]]:
    rng = np.random.default_rng(1)
    rows = []
    for num_states in state_counts:
        initial, transition, emission = _random_hmm(num_states, rng)
        symbols = _sample(initial, transition, emission, num_steps, rng)
        model = CategoricalHMM.from_probs(
            torch.as_tensor(initial), torch.as_tensor(transition), torch.as_tensor(emission)
        ).to(device)
        codes = torch.as_tensor(symbols, device=device)[None]
        log_potentials = [torch.as_tensor(np.log(value), device=device) for value in (initial, transition, emission)]
        leaves = [value.clone().requires_grad_() for value in log_potentials]

        def value():
            with torch.no_grad():
                model.log_prob(codes)
            _synchronise(device)

        def value_and_grad():
            model.zero_grad(set_to_none=True)
            model.log_prob(codes).sum().backward()
            _synchronise(device)

        def kernel():
            with torch.no_grad():
                discrete.log_marginal(log_potentials[0], log_potentials[1], log_potentials[2].T[codes])
            _synchronise(device)

        def kernel_grad():
            discrete.log_marginal(leaves[0], leaves[1], leaves[2].T[codes]).sum().backward()
            _synchronise(device)

        dynamax_value, dynamax_grad = _dynamax_hmm(initial, transition, emission, symbols)
        rows.append(
            [
                str(num_states),
                _timed(value, repeat),
                _timed(value_and_grad, repeat),
                _timed(kernel, repeat),
                _timed(kernel_grad, repeat),
                _timed(_hmmlearn(initial, transition, emission, symbols), repeat),
                _timed(dynamax_value, repeat),
                _timed(dynamax_grad, repeat),
            ]
        )
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    return rows


# -- NUTS --------------------------------------------------------------------------------
def nuts_row(num_draws: int, num_chains: int, device, num_workers: int | None, reference=None):
    """One NUTS run; returns the table row and the draws (to compare the next rows with)."""
    import os
    import warnings

    from statsmodels.datasets import nile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

    volume = nile.load_pandas().data["volume"].to_numpy(dtype=np.float64, copy=True)
    values = torch.as_tensor(volume, device=device).reshape(1, -1, 1)
    batch = SequenceBatch(values=values, lengths=torch.tensor([values.shape[1]], device=device))
    model = LinearGaussianSSM.local_level(level_var=1000.0, noise_var=10000.0, dtype=torch.float64).to(device)
    start = time.perf_counter()
    result = fit(
        model,
        batch,
        method="nuts",
        num_samples=num_draws,
        warmup_steps=num_draws,
        num_chains=num_chains,
        progress=False,
        initialize=False,
        sample_states=False,
        num_workers=num_workers,
    )
    seconds = time.perf_counter() - start
    draws = {name: value[..., 0].cpu().numpy() for name, value in result.mcmc.draws.items()}
    posterior = az.from_dict(posterior=draws)
    ess = az.ess(posterior)
    ess_min = min(float(ess[name]) for name in draws)
    r_hat = max(float(az.rhat(posterior)[name]) for name in draws) if num_chains > 1 else float("nan")
    steps = int(result.mcmc.sample_stats["n_steps"].sum())
    iterations = num_chains * 2 * num_draws
    cpu_per_chain = sum(result.mcmc.chain_cpu_seconds) / num_chains
    same = (
        "–"
        if reference is None
        else ("yes" if all(np.array_equal(draws[name], reference[name]) for name in draws) else "NO")
    )
    row = [
        f"{num_chains} x ({num_draws}+{num_draws})",
        str(result.mcmc.num_workers),
        f"{seconds:.1f}",
        f"{iterations / seconds:.0f}",
        f"{steps / result.mcmc.seconds:.0f}",
        f"{r_hat:.4f}",
        f"{ess_min:.0f}",
        f"{ess_min / seconds:.1f}",
        f"{cpu_per_chain:.1f}",
        f"{os.getloadavg()[0]:.1f}",
        same,
    ]
    print("| " + " | ".join(row) + " |", flush=True)
    return row, draws


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=10_000, help="Kalman sequence length")
    parser.add_argument("--hmm-T", type=int, default=100_000, help="HMM sequence length")
    parser.add_argument("--dims", type=int, nargs="*", default=[1, 4, 16, 64])
    parser.add_argument("--states", type=int, nargs="*", default=[2, 8, 32, 128])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--reference-repeat",
        type=int,
        default=None,
        help="repeats of the Kalman references (statsmodels, dynamax; default --repeat)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-fit", action="store_true", help="skip the fit-step column")
    parser.add_argument("--nuts", action="store_true", help="time NUTS on the Nile local level")
    parser.add_argument("--nuts-draws", type=int, default=1000, help="warm-up and kept draws per chain")
    parser.add_argument("--nuts-chains", type=int, default=4)
    parser.add_argument(
        "--nuts-workers",
        type=int,
        nargs="*",
        default=[1, 0],
        help="worker processes per NUTS run, one run each (0 = the default number)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.T, args.hmm_T, args.dims, args.states, args.repeat, args.nuts_draws, args.nuts_chains = (
            500,
            2000,
            [1, 2],
            [2, 4],
            1,
            20,
            2,
        )
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} device={device} torch={torch.__version__}")
    print(f"load average at start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print(f"\n### Kalman, T = {args.T}, float64 (seconds; value and value+grad interleaved)\n")
    print(
        "| d = p | log_prob | log_prob+grad | kernel | kernel+grad | fit step | statsmodels | dynamax | dynamax+grad "
        "| grad/value (model; wall / CPU) | grad/value (kernel) | grad/value (dynamax) "
        "| dynamax+grad / ours+grad |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    kalman_rows(args.dims, args.T, args.repeat, device, not args.no_fit, args.reference_repeat)
    print(f"\n### CategoricalHMM, V = {NUM_SYMBOLS}, T = {args.hmm_T} (seconds)\n")
    print("| K | log_prob | log_prob+grad | kernel | kernel+grad | hmmlearn | dynamax | dynamax+grad |")
    print("|---|---|---|---|---|---|---|---|")
    hmm_rows(args.states, args.hmm_T, args.repeat, device)
    print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    if args.nuts:
        print("\n### NUTS, Nile local level (workers: chains run at once, each in its own process)\n")
        print(
            "| chains x (warm-up+draws) | workers | seconds | iterations/s | leapfrog steps/s (sampling) | r_hat (max) "
            "| bulk ESS (min) | ESS/s | CPU s per chain | load (1 min) | same draws |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        reference = None
        for workers in args.nuts_workers:
            _, draws = nuts_row(args.nuts_draws, args.nuts_chains, device, workers or None, reference)
            reference = draws if reference is None else reference


if __name__ == "__main__":
    main()
