"""The Nile local-level model: maximum likelihood by EM and by gradient, checked
against Durbin & Koopman and statsmodels.

The annual flow of the Nile at Aswan, 1871-1970 (``builtin:nile``, 100 values),
as a random walk observed with noise (Durbin & Koopman, *Time Series Analysis
by State Space Methods*, 2012, ch. 2)::

    level_{t+1} = level_t + eta_t,   eta_t ~ N(0, sigma2_eta)
    y_t         = level_t + eps_t,   eps_t ~ N(0, sigma2_eps)

This script checks, and exits non-zero when a check fails:

(a) With the exact diffuse initialisation of the level, the maximum-likelihood
    estimate found by EM (``fit(..., method="em")``) and by gradient ascent on
    the exact log-likelihood (``fit(..., method="svi")`` with ``prior="none"``:
    the marginal form's loss is minus the log-likelihood) both land within 1%
    of Durbin & Koopman's sigma2_eps = 15099 and sigma2_eta = 1469.1, and the
    exact-diffuse log-likelihood there is -633.4646.
(b) With statsmodels' default start (``UnobservedComponents(y, "llevel")``: an
    approximate diffuse prior a1 = 0, P1 = 1e6, and the first observation's
    term left out of the likelihood, ``loglikelihood_burn = 1``), our
    ``log_prob(..., burn=1)`` equals statsmodels' ``loglike`` at the same
    parameters to 1e-8 relative (-632.5377 at the D&K values), and our
    maximum of that likelihood is at least as high as statsmodels' own
    default ``fit()``, which stops slightly short of the optimum.

It also draws the data with the smoothed level and its 90% band and a 10-year
forecast with its 90% band.

Run::

    python examples/nile_local_level.py                    # every check (about a minute on 2 busy cores)
    python examples/nile_local_level.py --svi-epochs 0 --lbfgs-iterations 0 --em-tolerance 1e-8   # tiny: no gradient fits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.fit import fit  # noqa: E402
from zoo.data import load_builtin  # noqa: E402
from zoo.lgssm import LinearGaussianSSM  # noqa: E402

#: Durbin & Koopman (2012), section 2.10: the MLE and the exact-diffuse log-likelihood there.
DK_NOISE_VAR = 15099.0
DK_LEVEL_VAR = 1469.1
DK_EXACT_DIFFUSE_LOG_LIKELIHOOD = -633.4646
#: statsmodels' approximate diffuse prior for a nonstationary state, and its log-likelihood at D&K's values.
APPROXIMATE_DIFFUSE_VAR = 1e6
STATSMODELS_APPROXIMATE_LOG_LIKELIHOOD = -632.5377
Z90 = 1.6448536269514722
FIRST_YEAR = 1871


def variances(model: LinearGaussianSSM) -> tuple[float, float]:
    """``(sigma2_eps, sigma2_eta)``: observation and level noise variances."""
    with torch.no_grad():
        return float(model.observation_cov[0, 0]), float(model.transition_cov[0, 0])


def approximate_diffuse(noise_var: float, level_var: float, learn=()) -> LinearGaussianSSM:
    """The local-level model with statsmodels' default start: a1 = 0, P1 = 1e6."""
    one = torch.ones(1, 1)
    return LinearGaussianSSM.from_params(
        one,
        one,
        torch.tensor([[level_var]]),
        torch.tensor([[noise_var]]),
        torch.zeros(1),
        torch.tensor([[APPROXIMATE_DIFFUSE_VAR]]),
        learn=tuple(learn),
        initial="prior",
        prior="none",
    )


def statsmodels_reference(y: np.ndarray) -> dict:
    """statsmodels' local-level model: its initialisation, log-likelihoods and default fits."""
    import statsmodels.api as sm

    default = sm.tsa.UnobservedComponents(y, "llevel")
    exact = sm.tsa.UnobservedComponents(y, "llevel", use_exact_diffuse=True)
    default_fit = default.fit(disp=0)
    exact_fit = exact.fit(disp=0)
    names = list(default.param_names)
    assert names == ["sigma2.irregular", "sigma2.level"], names
    return {
        "initialization": default.ssm.initialization.initialization_type,
        "initial_variance": float(default.ssm.initial_variance),
        "loglikelihood_burn": int(default.ssm.loglikelihood_burn),
        "loglike_at_dk": float(default.loglike([DK_NOISE_VAR, DK_LEVEL_VAR])),
        "exact_diffuse_loglike_at_dk": float(exact.loglike([DK_NOISE_VAR, DK_LEVEL_VAR])),
        "fit_params": [float(v) for v in default_fit.params],
        "fit_loglike": float(default_fit.llf),
        "exact_diffuse_fit_params": [float(v) for v in exact_fit.params],
        "exact_diffuse_fit_loglike": float(exact_fit.llf),
        "_model": default,
    }


def maximise_approximate(start: tuple[float, float], values: torch.Tensor, iterations: int) -> LinearGaussianSSM:
    """Maximises the approximate-diffuse log-likelihood (burn = 1) over both variances by L-BFGS,
    from ``start``; only the two variances are learned."""
    model = approximate_diffuse(*start, learn=("transition_cov", "observation_cov"))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=iterations,
        tolerance_grad=1e-12,
        tolerance_change=1e-13,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = -model.log_prob(values, burn=1).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def plot(
    years: np.ndarray, y: np.ndarray, model: LinearGaussianSSM, values: torch.Tensor, horizon: int, path: Path
) -> None:
    with torch.no_grad():
        smoothed = model.smooth(values)
        prediction = model.forecast(values, horizon)
    level = smoothed.smoothed_mean[0, :, 0].numpy()
    level_sd = smoothed.smoothed_cov[0, :, 0, 0].clamp_min(0).sqrt().numpy()
    future = np.arange(years[-1] + 1, years[-1] + 1 + horizon)
    mean = prediction.observation_mean[0, :, 0].numpy()
    sd = prediction.observation_cov[0, :, 0, 0].sqrt().numpy()
    state_sd = prediction.state_cov[0, :, 0, 0].sqrt().numpy()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(years, y, ".", color="k", label="annual flow (10⁸ m³)")
    ax.fill_between(
        years, level - Z90 * level_sd, level + Z90 * level_sd, color="C0", alpha=0.3, label="90% band of the level"
    )
    ax.plot(years, level, color="C0", label="smoothed level")
    ax.fill_between(future, mean - Z90 * sd, mean + Z90 * sd, color="C1", alpha=0.2, label="90% predictive band (flow)")
    ax.fill_between(
        future, mean - Z90 * state_sd, mean + Z90 * state_sd, color="C1", alpha=0.4, label="90% band (level)"
    )
    ax.plot(future, mean, color="C1", label=f"{horizon}-year forecast")
    ax.set_xlabel("year")
    ax.set_ylabel("flow")
    ax.set_title("Nile at Aswan: local-level model, exact diffuse MLE")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_builtin("nile")
    values = data.batch.values  # (1, 100, 1)
    batch = data.batch
    y = values[0, :, 0].numpy()
    years = FIRST_YEAR + np.arange(len(y))
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append((name, bool(ok), detail))

    def relative(a: float, b: float) -> float:
        return abs(a - b) / abs(b)

    # (a) exact diffuse initialisation: EM and gradient
    results: dict[str, dict] = {}
    # Both fits start from the same data-scaled guess: half the sample variance as noise, a tenth as level noise.
    start = {"noise_var": float(np.var(y)) / 2, "level_var": float(np.var(y)) / 10}
    em_model = LinearGaussianSSM.local_level(**start, initial="diffuse", prior="none")
    em_fit = fit(
        em_model,
        batch,
        method="em",
        max_iterations=args.em_iterations,
        tolerance=args.em_tolerance,
        progress=False,
        seed=args.seed,
    )
    fits = [("em", em_model, em_fit)]
    if args.svi_epochs > 0:
        svi_model = LinearGaussianSSM.local_level(**start, initial="diffuse", prior="none")
        svi_fit = fit(
            svi_model,
            batch,
            method="svi",
            max_epochs=args.svi_epochs,
            learning_rate=args.lr,
            final_learning_rate=args.lr / 100,
            progress=False,
            seed=args.seed,
        )
        fits.append(("gradient", svi_model, svi_fit))
    else:
        print("gradient fit skipped (--svi-epochs 0)")
    for name, model, result in fits:
        noise_var, level_var = variances(model)
        with torch.no_grad():
            log_likelihood = float(model.log_prob(values).sum())
        results[name] = {
            "sigma2_eps": noise_var,
            "sigma2_eta": level_var,
            "exact_diffuse_log_likelihood": log_likelihood,
            "steps": len(result.history),
            "stopped": result.stopped,
        }
        check(
            f"{name}: sigma2_eps within 1% of D&K",
            relative(noise_var, DK_NOISE_VAR) < 0.01,
            f"{noise_var:.1f} vs {DK_NOISE_VAR}",
        )
        check(
            f"{name}: sigma2_eta within 1% of D&K",
            relative(level_var, DK_LEVEL_VAR) < 0.01,
            f"{level_var:.2f} vs {DK_LEVEL_VAR}",
        )
        check(
            f"{name}: exact-diffuse log-likelihood at its MLE >= D&K's -633.4646 (4 decimals)",
            log_likelihood >= DK_EXACT_DIFFUSE_LOG_LIKELIHOOD - 5e-5,
            f"{log_likelihood:.6f}",
        )
    at_dk = LinearGaussianSSM.local_level(
        level_var=DK_LEVEL_VAR, noise_var=DK_NOISE_VAR, initial="diffuse", prior="none"
    )
    with torch.no_grad():
        exact_at_dk = float(at_dk.log_prob(values).sum())
    check(
        "exact-diffuse log-likelihood at D&K's values = -633.4646",
        abs(exact_at_dk - DK_EXACT_DIFFUSE_LOG_LIKELIHOOD) < 5e-5,
        f"{exact_at_dk:.6f}",
    )

    # (b) statsmodels' default approximate diffuse start
    reference = statsmodels_reference(y)
    statsmodels_model = reference.pop("_model")
    check(
        "statsmodels' default start is approximate diffuse, P1 = 1e6, first term dropped",
        reference["initialization"] == "approximate_diffuse"
        and reference["initial_variance"] == APPROXIMATE_DIFFUSE_VAR
        and reference["loglikelihood_burn"] == 1,
        str(reference),
    )
    comparisons = []
    points = {
        "D&K": (DK_NOISE_VAR, DK_LEVEL_VAR),
        "our EM MLE": variances(em_model),
        "statsmodels fit": tuple(reference["fit_params"]),
    }
    for label, (noise_var, level_var) in points.items():
        with torch.no_grad():
            ours = float(approximate_diffuse(noise_var, level_var).log_prob(values, burn=1).sum())
        theirs = float(statsmodels_model.loglike([noise_var, level_var]))
        comparisons.append(
            {
                "at": label,
                "sigma2_eps": noise_var,
                "sigma2_eta": level_var,
                "ours": ours,
                "statsmodels": theirs,
                "relative_difference": relative(ours, theirs),
            }
        )
        check(
            f"approximate-diffuse log-likelihood equals statsmodels' at {label} (1e-8 relative)",
            relative(ours, theirs) < 1e-8,
            f"{ours:.10f} vs {theirs:.10f}",
        )
    check(
        "approximate-diffuse log-likelihood at D&K's values = -632.5377",
        abs(comparisons[0]["ours"] - STATSMODELS_APPROXIMATE_LOG_LIKELIHOOD) < 5e-5,
        f"{comparisons[0]['ours']:.6f}",
    )
    if args.lbfgs_iterations > 0:
        best = maximise_approximate(variances(em_model), values, args.lbfgs_iterations)
        label = "L-BFGS maximum"
    else:
        best, label = approximate_diffuse(*variances(em_model)), "at the exact-diffuse EM MLE"
        print("approximate-diffuse maximisation skipped (--lbfgs-iterations 0): our point is the EM MLE")
    with torch.no_grad():
        best_approximate = float(best.log_prob(values, burn=1).sum())
    ours_approximate = {
        "point": label,
        "sigma2_eps": variances(best)[0],
        "sigma2_eta": variances(best)[1],
        "log_likelihood": best_approximate,
    }
    check(
        "our approximate-diffuse log-likelihood >= that of statsmodels' default fit()",
        best_approximate >= reference["fit_loglike"] - 1e-9,
        f"{best_approximate:.8f} vs {reference['fit_loglike']:.8f}",
    )

    plot(years, y, em_model, values, args.horizon, out / "nile_local_level.png")
    report = {
        "data": "builtin:nile (annual flow at Aswan, 1871-1970, 10^8 m^3)",
        "durbin_koopman": {
            "sigma2_eps": DK_NOISE_VAR,
            "sigma2_eta": DK_LEVEL_VAR,
            "exact_diffuse_log_likelihood": DK_EXACT_DIFFUSE_LOG_LIKELIHOOD,
        },
        "exact_diffuse": {**results, "log_likelihood_at_dk": exact_at_dk},
        "approximate_diffuse": {"comparisons": comparisons, "our_maximum": ours_approximate},
        "statsmodels": reference,
        "checks": [{"check": name, "passed": ok, "detail": detail} for name, ok, detail in checks],
    }
    (out / "nile_local_level.json").write_text(json.dumps(report, indent=2))

    print("Nile local level: exact diffuse initialisation")
    print(f"{'':<26} {'sigma2_eps':>12} {'sigma2_eta':>12} {'log-lik':>14}")
    print(
        f"{'Durbin & Koopman':<26} {DK_NOISE_VAR:>12.1f} {DK_LEVEL_VAR:>12.1f} {DK_EXACT_DIFFUSE_LOG_LIKELIHOOD:>14.4f}"
    )
    for name, r in results.items():
        print(
            f"{'ours, ' + name:<26} {r['sigma2_eps']:>12.1f} {r['sigma2_eta']:>12.1f} {r['exact_diffuse_log_likelihood']:>14.6f}"
        )
    sm_exact = reference["exact_diffuse_fit_params"]
    print(
        f"{'statsmodels fit (exact)':<26} {sm_exact[0]:>12.1f} {sm_exact[1]:>12.1f} {reference['exact_diffuse_fit_loglike']:>14.6f}"
    )
    print("approximate diffuse (a1 = 0, P1 = 1e6, first term dropped)")
    for row in comparisons:
        print(
            f"{'at ' + row['at']:<26} {row['sigma2_eps']:>12.1f} {row['sigma2_eta']:>12.1f} {row['ours']:>14.8f}"
            f"  statsmodels {row['statsmodels']:.8f}  rel. diff {row['relative_difference']:.1e}"
        )
    print(
        f"{'ours (' + ('max' if args.lbfgs_iterations > 0 else 'EM MLE') + ')':<26} {ours_approximate['sigma2_eps']:>12.1f} {ours_approximate['sigma2_eta']:>12.1f} {best_approximate:>14.8f}"
    )
    print(
        f"{'statsmodels fit()':<26} {reference['fit_params'][0]:>12.1f} {reference['fit_params'][1]:>12.1f} {reference['fit_loglike']:>14.8f}"
    )
    failed = [c for c in checks if not c[1]]
    for name, ok, detail in checks:
        print(f"[{'ok' if ok else 'FAILED'}] {name}: {detail}")
    print(f"figure: {out / 'nile_local_level.png'}")
    return 1 if failed else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--em-iterations", type=int, default=2000, help="EM iterations at most")
    parser.add_argument("--em-tolerance", type=float, default=1e-10, help="EM stops below this gain in nats per step")
    parser.add_argument(
        "--svi-epochs",
        type=int,
        default=100,
        help="gradient steps (full batch: one per epoch); 0 skips the gradient fit",
    )
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (decays 100-fold over the run)")
    parser.add_argument(
        "--lbfgs-iterations",
        type=int,
        default=30,
        help="L-BFGS iterations for the approximate-diffuse maximum (0: report the EM MLE's value)",
    )
    parser.add_argument("--horizon", type=int, default=10, help="forecast horizon in years")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/output/nile_local_level")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
