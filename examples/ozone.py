"""Midwest ozone, summer 1987: a Kalman model over 153 stations fills in missing
days, maps smoothed ozone, and synthesises a day.

The data (the ``ozone2`` data of the R package fields): the 8-hour average
surface ozone (ppb) at 153 stations around Lake Michigan on 89 days,
1987-06-03 to 08-31, 495 of the 13,617 values missing.

The model, as in the seed lectures: the state ``S_t`` is the ozone level at
every station (``d = 153``) and follows a random walk, ``A = I`` (fixed);
station ``j`` observes the average of the state over the stations within
``radius`` km of it, ``X_t,j = (B S_t)_j + noise``, with ``B_jk = 1 / n_j`` for
the ``n_j`` stations ``k`` within the radius of ``j`` (itself included; radius 0
gives ``B = I``). Distances are great-circle distances (haversine, Earth
radius 6371 km) between the stations' longitudes and latitudes. The
transition covariance Γ and the observation covariance Σ are learned by EM,
both diagonal: with 89 days, a full 153 × 153 Γ (11,781 free entries) would
be estimated from fewer days than stations (its MLE is rank deficient and the
E-step cost grows), while the averaging in ``B`` already couples neighbouring
stations. The initial state is a fixed Gaussian prior: mean the station's
mean over the training values, variance that of all training values (``B`` is
singular when two stations share a neighbourhood, so a diffuse start would
stay diffuse in those directions).

Outputs in ``--out``: ``ozone.json`` and printed tables of the held-out RMSE
(10% of the observed values hidden with a seeded RNG, predicted by the
smoother's posterior mean, against the per-station mean and the last observed
value at the station), ``ozone_maps.png`` (smoothed ozone ``B E[S_t | data]``
on a few days, with the observed values as inner dots and missing ones as
crosses), ``ozone_imputed.csv`` (the posterior mean and standard deviation of
every value missing from the data, the model fitted on all observed values),
and ``ozone_synthetic_day.png`` (a day drawn from the posterior of the
states, plus observation noise, next to one drawn from the fitted model
without data).

Run::

    python examples/ozone.py            # 3 radii, 40 EM iterations each (~15 minutes on 2 busy cores)
    python examples/ozone.py --days 30 --stations 40 --radii 0 100 --em-iterations 5  # tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.batch import SequenceBatch  # noqa: E402
from inference.fit import fit  # noqa: E402
from zoo import plots  # noqa: E402
from zoo.lgssm import LinearGaussianSSM  # noqa: E402

EARTH_RADIUS_KM = 6371.0


def default_data_dir() -> Path:
    """``$SEQZOO_SHARED_DATA`` if set, else ``../shared/data`` next to the repository root."""
    if os.environ.get("SEQZOO_SHARED_DATA"):
        return Path(os.environ["SEQZOO_SHARED_DATA"])
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def load_ozone(data_dir: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Reads ``ozone2_y.csv`` and ``ozone2_stations.csv``.

    Returns:
        ``(dates, station_ids, values (T, M) with NaN where missing, lon (M,), lat (M,))``.
    """
    values_path, stations_path = data_dir / "ozone2_y.csv", data_dir / "ozone2_stations.csv"
    for path in (values_path, stations_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: pass --data-dir (or set SEQZOO_SHARED_DATA) to the folder holding the ozone2 CSV files"
            )
    with open(values_path, newline="") as handle:
        rows = list(csv.reader(handle))
    station_ids = rows[0][1:]
    dates = [row[0] for row in rows[1:]]
    values = np.array([[float(cell) if cell.strip() else np.nan for cell in row[1:]] for row in rows[1:]])
    with open(stations_path, newline="") as handle:
        stations = {row["station_id"]: (float(row["lon"]), float(row["lat"])) for row in csv.DictReader(handle)}
    missing = [s for s in station_ids if s not in stations]
    if missing:
        raise ValueError(f"{stations_path}: no coordinates for stations {missing[:5]}")
    lon = np.array([stations[s][0] for s in station_ids])
    lat = np.array([stations[s][1] for s in station_ids])
    return dates, station_ids, values, lon, lat


def great_circle_km(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """``(M, M)`` haversine distances in km between points given in degrees."""
    lon, lat = np.deg2rad(lon), np.deg2rad(lat)
    half_dlat, half_dlon = (lat[:, None] - lat[None]) / 2, (lon[:, None] - lon[None]) / 2
    h = np.sin(half_dlat) ** 2 + np.cos(lat[:, None]) * np.cos(lat[None]) * np.sin(half_dlon) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def neighbourhood_average(distances: np.ndarray, radius: float) -> np.ndarray:
    """``(M, M)`` row-stochastic ``B``: row ``j`` averages the stations within ``radius`` km of ``j``."""
    near = (distances <= radius).astype(float)
    return near / near.sum(1, keepdims=True)


def hide_entries(values: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of ``fraction`` of the observed entries, drawn with a seeded RNG."""
    observed = np.flatnonzero(np.isfinite(values))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(observed, size=int(round(fraction * len(observed))), replace=False)
    hidden = np.zeros(values.size, dtype=bool)
    hidden[chosen] = True
    return hidden.reshape(values.shape)


def station_mean_prediction(train: np.ndarray) -> np.ndarray:
    """Each station's mean over its observed training values (the overall mean for a station with none)."""
    seen = np.isfinite(train)
    counts, sums = seen.sum(0), np.where(seen, train, 0.0).sum(0)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), sums.sum() / max(counts.sum(), 1))
    return np.broadcast_to(means, train.shape)


def last_value_prediction(train: np.ndarray) -> np.ndarray:
    """At each day and station, the station's last observed training value before that day; where
    there is none yet, its first observed value; for a station never observed, the overall mean."""
    prediction = np.empty_like(train)
    fallback = station_mean_prediction(train)[0]
    for j in range(train.shape[1]):
        seen = np.flatnonzero(np.isfinite(train[:, j]))
        if not len(seen):
            prediction[:, j] = fallback[j]
            continue
        previous = np.searchsorted(seen, np.arange(train.shape[0]), side="left") - 1
        prediction[:, j] = train[seen[np.maximum(previous, 0)], j]
    return prediction


def build_model(train: np.ndarray, mixing: np.ndarray) -> LinearGaussianSSM:
    """The random-walk model with fixed ``A = I``, ``B = mixing`` and initial prior; Γ, Σ diagonal, learned."""
    num_stations = train.shape[1]
    station_means = station_mean_prediction(train)[0]
    overall_var = float(np.nanvar(train))
    fixed = {
        "transition_matrix": torch.eye(num_stations),
        "observation_matrix": torch.as_tensor(mixing),
        "initial_mean": torch.tensor(station_means),
        "initial_cov": overall_var * torch.eye(num_stations),
    }
    return LinearGaussianSSM(
        num_stations,
        num_stations,
        transition_cov_type="diag",
        observation_cov_type="diag",
        initial="prior",
        prior="none",
        fixed=fixed,
    )


def fit_model(train: np.ndarray, mixing: np.ndarray, args) -> tuple[LinearGaussianSSM, SequenceBatch, dict]:
    model = build_model(train, mixing)
    batch = SequenceBatch.from_tensor(torch.as_tensor(train)[None])
    started = time.perf_counter()
    result = fit(
        model,
        batch,
        method="em",
        max_iterations=args.em_iterations,
        tolerance=args.tolerance,
        progress=False,
        seed=args.seed,
    )
    info = {
        "em_iterations": len(result.history),
        "stopped": result.stopped,
        "seconds": round(time.perf_counter() - started, 1),
        "log_likelihood": float(result.history[-1]["objective"]) if result.history else float("nan"),
    }
    print(
        f"  EM: {info['em_iterations']} iterations ({info['stopped']}), {info['seconds']} s, "
        f"log-likelihood {info['log_likelihood']:.2f}",
        file=sys.stderr,
    )
    return model, batch, info


def rmse(prediction: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction[where] - truth[where]) ** 2)))


def main(args) -> int:
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dates, station_ids, values, lon, lat = load_ozone(Path(args.data_dir))
    if args.days:
        dates, values = dates[: args.days], values[: args.days]
    if args.stations:
        # The stations nearest the centre of the network: a contiguous smaller region.
        centre_distance = great_circle_km(np.append(lon, lon.mean()), np.append(lat, lat.mean()))[-1, :-1]
        keep = np.sort(np.argsort(centre_distance, kind="stable")[: args.stations])
        station_ids, values, lon, lat = [station_ids[j] for j in keep], values[:, keep], lon[keep], lat[keep]
    num_days, num_stations = values.shape
    distances = great_circle_km(lon, lat)
    print(f"ozone: {num_stations} stations x {num_days} days, {int(np.isnan(values).sum())} missing values")

    # Held-out RMSE: hide a fraction of the observed values, fit on the rest, predict the hidden ones.
    hidden = hide_entries(values, args.holdout, args.seed)
    train = np.where(hidden, np.nan, values)
    rows = [
        {"method": "per-station mean", "rmse": rmse(station_mean_prediction(train), values, hidden)},
        {"method": "last observed value", "rmse": rmse(last_value_prediction(train), values, hidden)},
    ]
    fitted = {}
    for radius in args.radii:
        print(f"fitting radius {radius:g} km on the training values", file=sys.stderr)
        mixing = neighbourhood_average(distances, radius)
        model, batch, info = fit_model(train, mixing, args)
        with torch.no_grad():
            imputation = model.impute(batch.values)
        mean = imputation.mean[0].numpy()
        sd = imputation.var[0].clamp_min(0).sqrt().numpy()
        z = abs(values - mean) / np.maximum(sd, 1e-12)
        coverage = float(np.mean(z[hidden] <= 1.6448536269514722))
        neighbours = float((distances <= radius).sum(1).mean())
        rows.append(
            {
                "method": f"Kalman smoother, radius {radius:g} km",
                "rmse": rmse(mean, values, hidden),
                "coverage_90": coverage,
                "mean_neighbours": neighbours,
                **info,
            }
        )
        fitted[radius] = model
    best_row = min(rows[2:], key=lambda r: r["rmse"])
    print(
        f"\nheld-out RMSE (ppb) on {int(hidden.sum())} hidden values ({args.holdout:.0%} of the observed, seed {args.seed})"
    )
    print(f"{'method':<36} {'RMSE':>8} {'90% coverage':>13} {'EM iters':>9}")
    for row in rows:
        coverage = f"{row['coverage_90']:.3f}" if "coverage_90" in row else "—"
        iterations = str(row.get("em_iterations", "—"))
        print(f"{row['method']:<36} {row['rmse']:>8.2f} {coverage:>13} {iterations:>9}")

    # The model with the best radius, refitted on every observed value: impute, map, synthesise.
    radius = float(best_row["method"].split("radius ")[1].split(" km")[0])
    print(f"refitting radius {radius:g} km on every observed value", file=sys.stderr)
    mixing = neighbourhood_average(distances, radius)
    model, batch, info = fit_model(values, mixing, args)
    with torch.no_grad():
        imputation = model.impute(batch.values)
        smoothed = model.smooth(batch.values)
        signal = (smoothed.smoothed_mean[0] @ model.observation_matrix.T).numpy()
    missing = np.argwhere(np.isnan(values))
    lines = ["date,station_id,lon,lat,imputed_mean,imputed_sd"]
    for t, j in missing:
        lines.append(
            f"{dates[t]},{station_ids[j]},{lon[j]},{lat[j]},{float(imputation.mean[0, t, j]):.3f},"
            f"{math.sqrt(max(float(imputation.var[0, t, j]), 0.0)):.3f}"
        )
    (out / "ozone_imputed.csv").write_text("\n".join(lines) + "\n")
    missing_per_day = np.isnan(values).sum(1)
    days = sorted({0, int(np.argmax(missing_per_day)), num_days // 2, num_days - 1})
    figure = plots.station_maps(
        lon,
        lat,
        signal[days],
        observed=values[days],
        label="ozone (ppb)",
        titles=[f"{dates[t]}\nsmoothed, radius {radius:g} km, {int(missing_per_day[t])} missing" for t in days],
        columns=2,
    )
    figure.savefig(out / "ozone_maps.png", dpi=110)
    plt.close(figure)

    # A synthetic day: states drawn from their posterior given the data (FFBS), plus observation noise;
    # and a day drawn from the fitted model alone (no data).
    generator = torch.Generator().manual_seed(args.seed)
    day = num_days // 2
    with torch.no_grad():
        states = model.sample_states(batch.values, num_samples=1, generator=generator)[0, 0, day]
        noise = torch.randn(num_stations, generator=generator) * torch.diagonal(model.observation_cov).sqrt()
        conditional_day = (model.observation_matrix @ states + noise).numpy()
        unconditional_day = model.sample(1, num_days, generator=generator).values[0, day].numpy()
    figure = plots.station_maps(
        lon,
        lat,
        np.stack([values[day], conditional_day, unconditional_day]),
        titles=[
            f"{dates[day]}: data",
            f"{dates[day]}: synthesised given the data",
            f"day {day + 1}: synthesised from the model alone",
        ],
        label="ozone (ppb)",
        columns=3,
    )
    figure.savefig(out / "ozone_synthetic_day.png", dpi=110)
    plt.close(figure)

    report = {
        "data": {
            "stations": num_stations,
            "days": num_days,
            "missing": int(np.isnan(values).sum()),
            "first_date": dates[0],
            "last_date": dates[-1],
        },
        "distance": "great-circle (haversine), Earth radius 6371 km",
        "holdout": {"fraction": args.holdout, "seed": args.seed, "hidden": int(hidden.sum()), "rmse": rows},
        "final_model": {
            "radius_km": radius,
            **info,
            "median_transition_sd": float(torch.diagonal(model.transition_cov.detach()).sqrt().median()),
            "median_observation_sd": float(torch.diagonal(model.observation_cov.detach()).sqrt().median()),
        },
        "synthetic_day": {
            "date": dates[day],
            "given_data": conditional_day.tolist(),
            "model_alone": unconditional_day.tolist(),
        },
    }
    (out / "ozone.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nfinal model: radius {radius:g} km, refitted on all observed values; imputed {len(missing)} missing values "
        f"into {out / 'ozone_imputed.csv'}; maps in {out}"
    )
    best_baseline = min(row["rmse"] for row in rows[:2])
    if not best_row["rmse"] < best_baseline:
        print(
            f"FAILED: the Kalman smoother's held-out RMSE {best_row['rmse']:.2f} does not beat the best baseline {best_baseline:.2f}"
        )
        return 1
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="folder with ozone2_y.csv and ozone2_stations.csv "
        "(default: $SEQZOO_SHARED_DATA, else ../shared/data beside the repository)",
    )
    parser.add_argument(
        "--radii",
        type=float,
        nargs="+",
        default=[0.0, 50.0, 100.0],
        help="neighbourhood radii in km to compare (B averages the state over stations within the radius)",
    )
    parser.add_argument("--days", type=int, help="keep only the first N days")
    parser.add_argument("--stations", type=int, help="keep only the N stations nearest the centre of the network")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of observed values hidden for the RMSE")
    parser.add_argument("--em-iterations", type=int, default=40, help="EM iterations at most, per fit")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="EM stops below this gain in nats per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/output/ozone")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
