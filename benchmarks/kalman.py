"""Benchmark the Kalman filter log-likelihood and the RTS smoother against statsmodels, pykalman and Pyro.

One sequence of ``T`` steps drawn from a random stable system with ``d = p``. For each
``(T, d)`` it times (median of ``--repeat`` runs after a warm-up; numba compile excluded):

* ours: :func:`inference.kalman.log_marginal` and :func:`inference.kalman.rts_smoother`
  (``method="auto"``: the numba kernels on CPU; the steady-state gain is used once the
  predicted covariance has converged, as statsmodels does by default);
* statsmodels: ``statsmodels.tsa.statespace.kalman_filter.KalmanFilter.loglike`` and
  ``kalman_smoother.KalmanSmoother.smooth`` with the same matrices and a known
  initialisation (its default ``tolerance``: the steady-state gain once converged);
* pykalman: ``KalmanFilter.loglikelihood`` and ``.smooth`` ("skipped" when a 500-step
  probe extrapolates to more than ``--pykalman-limit`` seconds);
* Pyro: ``pyro.distributions.GaussianHMM(...).log_prob`` (no smoother).

A reference whose warm-up alone takes more than 5 s is timed by that single run. Every
library runs with ``--threads`` BLAS/OpenMP/torch threads (default 1: on a shared,
loaded machine multi-threaded BLAS made statsmodels and Pyro over 10x slower). Prints
a markdown table with seconds, ratios reference/ours (> 1: ours is faster) and the
relative difference of our log-likelihood from statsmodels'. Pyro's initial
distribution is that of the state *before* the first transition, so the benchmark
system's ``S_1`` prior is chosen as the one-step prediction of Pyro's ``z_0 ~ N(mu, I)``
and all three libraries evaluate the same density.

Usage::

    python benchmarks/kalman.py                      # T = 10^4, d = p in {1, 4, 16, 64}
    python benchmarks/kalman.py --T 2000 --dims 2 8 --repeat 5
    python benchmarks/kalman.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _threads_from_argv(argv: list[str]) -> str:
    """``--threads`` must take effect before numpy and torch load their BLAS/OpenMP pools."""
    for index, value in enumerate(argv):
        if value == "--threads" and index + 1 < len(argv):
            return argv[index + 1]
        if value.startswith("--threads="):
            return value.split("=", 1)[1]
    return "1"


if __name__ == "__main__":
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = _threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.kalman import log_marginal, rts_smoother  # noqa: E402

SLOW_REFERENCE_SECONDS = 5.0
PYKALMAN_PROBE_STEPS = 500


def _median_seconds(function: Callable[[], object], repeat: int, reference: bool = True) -> float:
    start = time.perf_counter()
    function()  # warm-up: numba loads/compiles, allocators settle
    warm_up = time.perf_counter() - start
    if reference and warm_up > SLOW_REFERENCE_SECONDS:
        return warm_up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_system(dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random stable system with ``d = p`` (spectral radius 0.9) and a Pyro-compatible prior."""

    def spd(size: int) -> np.ndarray:
        root = rng.standard_normal((size, size)) / np.sqrt(size)
        return root @ root.T + 0.5 * np.eye(size)

    transition = rng.standard_normal((dim, dim))
    transition *= 0.9 / np.abs(np.linalg.eigvals(transition)).max()
    transition_cov = spd(dim)
    pyro_mean = rng.standard_normal(dim)
    return dict(
        transition=transition,
        transition_cov=transition_cov,
        observation=rng.standard_normal((dim, dim)) / np.sqrt(dim),
        observation_cov=spd(dim),
        pyro_mean=pyro_mean,
        # S_1 = A z_0 + w with z_0 ~ N(pyro_mean, I).
        initial_mean=transition @ pyro_mean,
        initial_cov=transition @ transition.T + transition_cov,
    )


def simulate(system: dict[str, np.ndarray], num_steps: int, rng: np.random.Generator) -> np.ndarray:
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


def _statsmodels(system: dict[str, np.ndarray], observations: np.ndarray, smoother: bool):
    from statsmodels.tsa.statespace.kalman_smoother import KalmanSmoother

    dim = system["transition"].shape[0]
    model = KalmanSmoother(k_endog=dim, k_states=dim, k_posdef=dim)
    model.bind(np.asfortranarray(observations.T))
    model["design"] = system["observation"]
    model["obs_cov"] = system["observation_cov"]
    model["transition"] = system["transition"]
    model["selection"] = np.eye(dim)
    model["state_cov"] = system["transition_cov"]
    model.initialize_known(system["initial_mean"], system["initial_cov"])
    return model


def benchmark_case(num_steps: int, dim: int, repeat: int, seed: int, pykalman_limit: float) -> dict[str, object]:
    """Time every implementation on one random problem; returns one table row."""
    rng = np.random.default_rng(seed + dim)
    system = random_system(dim, rng)
    observations = simulate(system, num_steps, rng)
    tensors = [
        torch.from_numpy(np.ascontiguousarray(system[key]))
        for key in ("transition", "transition_cov", "observation", "observation_cov", "initial_mean", "initial_cov")
    ]
    x = torch.from_numpy(observations)[None]
    row: dict[str, object] = dict(T=num_steps, d=dim)

    row["ours_ll"] = _median_seconds(lambda: log_marginal(*tensors, x), repeat, reference=False)
    row["ours_smooth"] = _median_seconds(lambda: rts_smoother(*tensors, x), repeat, reference=False)
    ours_value = float(log_marginal(*tensors, x))

    model = _statsmodels(system, observations, smoother=True)
    row["sm_ll"] = _median_seconds(lambda: model.loglike(), repeat)
    row["sm_smooth"] = _median_seconds(lambda: model.smooth(), repeat)
    statsmodels_value = float(model.loglike())
    row["rel_diff"] = abs(ours_value - statsmodels_value) / abs(statsmodels_value)

    from pykalman import KalmanFilter

    reference = KalmanFilter(
        transition_matrices=system["transition"],
        observation_matrices=system["observation"],
        transition_covariance=system["transition_cov"],
        observation_covariance=system["observation_cov"],
        initial_state_mean=system["initial_mean"],
        initial_state_covariance=system["initial_cov"],
    )
    probe = observations[:PYKALMAN_PROBE_STEPS]
    start = time.perf_counter()
    reference.loglikelihood(probe)
    estimate = (time.perf_counter() - start) * num_steps / len(probe)
    if estimate > pykalman_limit:
        row["pk_ll"] = row["pk_smooth"] = None
    else:
        row["pk_ll"] = _median_seconds(lambda: reference.loglikelihood(observations), repeat)
        row["pk_smooth"] = _median_seconds(lambda: reference.smooth(observations), repeat)

    import pyro.distributions as dist

    hmm = dist.GaussianHMM(
        dist.MultivariateNormal(torch.from_numpy(system["pyro_mean"]), torch.eye(dim, dtype=torch.float64)),
        tensors[0].T.contiguous(),
        dist.MultivariateNormal(torch.zeros(dim, dtype=torch.float64), tensors[1]),
        tensors[2].T.contiguous(),
        dist.MultivariateNormal(torch.zeros(dim, dtype=torch.float64), tensors[3]),
        duration=num_steps,
    )
    with torch.no_grad():
        row["pyro_ll"] = _median_seconds(lambda: hmm.log_prob(x[0]), repeat)
        row["pyro_rel_diff"] = abs(float(hmm.log_prob(x[0])) - statsmodels_value) / abs(statsmodels_value)
    return row


def _cell(value: object) -> str:
    return "skipped" if value is None else f"{value:.4f}"


def _ratio(reference: object, ours: float) -> str:
    return "-" if reference is None else f"{reference / ours:.1f}x"


def format_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of the timings (seconds) and ratios reference/ours."""
    lines = [
        "| T | d=p | ours ll (s) | statsmodels | pykalman | Pyro GaussianHMM | sm/ours | pk/ours | pyro/ours "
        "| ll rel. diff vs sm | ours smoother (s) | sm smoother | pk smoother | sm/ours | pk/ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['T']} | {row['d']} | {row['ours_ll']:.4f} | {row['sm_ll']:.4f} | {_cell(row['pk_ll'])} | "
            f"{row['pyro_ll']:.4f} | {_ratio(row['sm_ll'], row['ours_ll'])} | {_ratio(row['pk_ll'], row['ours_ll'])} | "
            f"{_ratio(row['pyro_ll'], row['ours_ll'])} | {row['rel_diff']:.1e} | {row['ours_smooth']:.4f} | "
            f"{row['sm_smooth']:.4f} | {_cell(row['pk_smooth'])} | {_ratio(row['sm_smooth'], row['ours_smooth'])} | "
            f"{_ratio(row['pk_smooth'], row['ours_smooth'])} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    torch.set_num_threads(args.threads)
    if args.quick:
        args.T, args.dims, args.repeat = [1000], [1, 4], 1
    rows = []
    for num_steps in args.T:
        for dim in args.dims:
            rows.append(benchmark_case(num_steps, dim, args.repeat, args.seed, args.pykalman_limit))
            print(f"done T={num_steps} d={dim}", file=sys.stderr, flush=True)
    print(f"threads (BLAS, OpenMP, torch): {torch.get_num_threads()}; ours: numba, single-threaded")
    print(format_table(rows))
    worst = max(row["rel_diff"] for row in rows)
    print(f"largest relative difference of our log-likelihood from statsmodels': {worst:.1e}")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", default=[10_000], help="sequence lengths")
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 4, 16, 64], help="state = observation dims")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pykalman-limit",
        type=float,
        default=60.0,
        help="skip pykalman where a probe extrapolates to more seconds than this",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/OpenMP/torch threads for every library (ours is single-threaded); the default 1 "
        "avoids oversubscription on a shared machine, where multi-threaded BLAS ran 10x slower",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run: T=1000, d in {1, 4}, one repeat")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
