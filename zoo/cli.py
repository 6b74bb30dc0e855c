"""The ``seqzoo`` command line (also ``python -m zoo``).

Subcommands::

    seqzoo fit hmm --data DATA --states K [--emission ...] [--method em|svi] --out DIR
    seqzoo fit lgssm --data DATA --state-dim d [--transition ...] [--method em|svi] --out DIR
    seqzoo fit rnn|gru|lstm --data DATA [--hidden 256 --layers 1 --embedding 64 --dropout 0] --out DIR
    seqzoo decode DIR --data DATA
    seqzoo sample DIR --length N [--prime "ROMEO:" --temperature 0.8]
    seqzoo compare --data DATA --models hmm:states=8 lstm:hidden=256,layers=2 gru:hidden=256 ... --out DIR
    seqzoo diagnose DIR [--data DATA] [--nuts --chains 4 --draws 500 --warmup 500]

This is the only module that parses arguments or prints for a person.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from inference.fit import fit
from inference.rundir import RunDirectory
from inference.scoring import ratio_standard_error, score
from zoo import baselines, plots
from zoo.data import SequenceData, Vocabulary, load_data, split_data
from zoo.hmm import CategoricalHMM, GaussianHMM, HiddenMarkovModel, PoissonHMM
from zoo.lgssm import LinearGaussianSSM
from zoo.rnn import RecurrentModel

#: Every model class a run directory may name. Loading looks the class up here
#: and nowhere else, so a run directory can never make us import arbitrary code.
MODEL_CLASSES = {cls.__name__: cls for cls in (CategoricalHMM, GaussianHMM, PoissonHMM, LinearGaussianSSM, RecurrentModel)}

EMISSION_FOR_KIND = {"categorical": "categorical", "real": "gaussian", "count": "poisson"}


class UsageError(Exception):
    """A mistake in the command line or its inputs, reported without a traceback."""


# -- data ------------------------------------------------------------------
def _add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, help="a file (.txt, .csv, .csv.gz, .npz) or builtin:letters|nile|sunspots")
    parser.add_argument("--kind", choices=["categorical", "real", "count"], help="how to read the data (default: from the file type)")
    parser.add_argument("--first", type=int, metavar="N", help="keep only the first N time steps of each sequence")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,valid,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument("--time-column", help="CSV: a column of dates/times to drop")
    parser.add_argument("--sequence-column", help="CSV: a column of sequence ids, to read many sequences from one file")


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--split: expected three comma-separated fractions like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise UsageError(f"--split: expected three nonnegative fractions summing to 1, got {text!r}")
    return parts


def _load(args, vocabulary: Vocabulary | None = None) -> SequenceData:
    options: dict[str, Any] = {}
    if args.kind:
        options["kind"] = args.kind
    if vocabulary is not None:
        options["vocabulary"] = vocabulary
    for option in ("time_column", "sequence_column"):
        if getattr(args, option, None):
            options[option] = getattr(args, option)
    data = load_data(args.data, **options)
    if args.first:
        data = data.head(args.first)
    return data


# -- models ----------------------------------------------------------------
@dataclass
class ModelSpec:
    """A model named on the command line, e.g. ``hmm:states=8,emission=gaussian``."""

    family: str
    settings: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        family, _, rest = text.partition(":")
        settings = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"model spec {text!r}: expected key=value settings after ':', got {item!r}")
            settings[key.strip().replace("-", "_")] = value.strip()
        if family not in MODEL_BUILDERS:
            raise UsageError(f"model spec {text!r}: unknown model {family!r}; available: {', '.join(MODEL_BUILDERS)}")
        return cls(family, settings)

    @property
    def label(self) -> str:
        return self.family + "".join(f"-{k}{v}" for k, v in self.settings.items())


def build_hmm(data: SequenceData, states: int, emission: str | None = None, covariance: str = "diag",
              guide: str = "map", marginalize: str = "kernel") -> HiddenMarkovModel:
    """An HMM matching the data: categorical for symbols, Gaussian for reals, Poisson for counts."""
    emission = emission or EMISSION_FOR_KIND.get(data.kind)
    if emission is None:
        raise UsageError(f"--emission: data of kind {data.kind!r} needs an explicit emission (categorical, gaussian or poisson)")
    common = dict(guide=guide, marginalize=marginalize)
    if emission == "categorical":
        if data.kind != "categorical":
            raise UsageError(f"--emission categorical needs symbol data, but {data.source} holds {data.kind} data")
        return CategoricalHMM(states, data.num_symbols, **common)
    if emission == "gaussian":
        return GaussianHMM(states, data.dim, covariance_type=covariance, **common)
    if emission == "poisson":
        return PoissonHMM(states, data.dim, **common)
    raise UsageError(f"--emission: expected categorical, gaussian or poisson, got {emission!r}")


def _reject_unknown_settings(family: str, settings: dict[str, str], allowed: set[str]) -> None:
    """A model spec's settings must be the family's own (training settings such as
    ``lr`` or ``method`` are split off before the family's builder sees them)."""
    unknown = set(settings) - allowed
    if unknown:
        raise UsageError(f"{family}: unknown settings {sorted(unknown)}; allowed: {sorted(allowed)} "
                         f"(and the training settings {sorted(FIT_SETTINGS)})")


def _build_hmm_from_settings(data: SequenceData, settings: dict[str, str]) -> HiddenMarkovModel:
    _reject_unknown_settings("hmm", settings, {"states", "emission", "covariance", "guide", "marginalize"})
    try:
        states = int(settings.get("states", 8))
    except ValueError:
        raise UsageError(f"hmm: states must be an integer, got {settings['states']!r}") from None
    return build_hmm(data, states, settings.get("emission"), settings.get("covariance", "diag"),
                     settings.get("guide", "map"), settings.get("marginalize", "kernel"))


LGSSM_MATRIX_NAMES = ("transition_matrix", "observation_matrix", "transition_cov", "observation_cov", "initial_mean", "initial_cov")


def build_lgssm(data: SequenceData, state_dim: int, transition: str = "learned", observation: str = "learned",
                covariance: str = "diag", initial: str = "diffuse", guide: str = "map", latent: str = "marginal",
                prior: str = "weak") -> LinearGaussianSSM:
    """A linear-Gaussian state-space model with ``state_dim`` states over the data's ``p`` real series.

    ``transition="identity"`` fixes ``A = I`` (random-walk states); ``observation="identity"``
    fixes ``B = I`` (needs ``state_dim == p``); ``covariance`` is the form of both noise
    covariances Γ and Σ.
    """
    if data.kind == "categorical":
        raise UsageError(f"fit lgssm: needs real-valued data, but {data.source} holds categorical data (use --kind real for a numeric CSV)")
    if not isinstance(state_dim, int) or state_dim < 1:
        raise UsageError(f"--state-dim: expected a positive integer, got {state_dim!r}")
    obs_dim = data.dim
    choices = {"--transition": (transition, ("identity", "learned")), "--observation": (observation, ("identity", "learned")),
               "--covariance": (covariance, ("diag", "full")), "--initial": (initial, ("diffuse", "prior")),
               "--guide": (guide, ("map", "meanfield")), "--latent": (latent, ("marginal", "sampled")),
               "--prior": (prior, ("weak", "none"))}
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            raise UsageError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")
    if latent == "sampled" and initial == "diffuse":
        raise UsageError("--latent sampled: the states need a proper prior on the first one; add --initial prior")
    dtype = data.batch.values.dtype
    fixed = {}
    if transition == "identity":
        fixed["transition_matrix"] = torch.eye(state_dim, dtype=dtype)
    if observation == "identity":
        if state_dim != obs_dim:
            raise UsageError(f"--observation identity: needs --state-dim equal to the number of series ({obs_dim}), got {state_dim}")
        fixed["observation_matrix"] = torch.eye(obs_dim, dtype=dtype)
    model = LinearGaussianSSM(state_dim, obs_dim, transition_cov_type=covariance, observation_cov_type=covariance,
                              initial=initial, prior=prior, guide=guide, latent=latent, fixed=fixed or None)
    return model.to(dtype=dtype)


def _build_lgssm_from_settings(data: SequenceData, settings: dict[str, str]) -> LinearGaussianSSM:
    _reject_unknown_settings("lgssm", settings, {"state_dim", "transition", "observation", "covariance", "initial",
                                                 "guide", "latent", "prior"})
    try:
        state_dim = int(settings.get("state_dim", 1))
    except ValueError:
        raise UsageError(f"lgssm: state_dim must be an integer, got {settings['state_dim']!r}") from None
    options = {k: settings[k] for k in ("transition", "observation", "covariance", "initial", "guide", "latent", "prior") if k in settings}
    return build_lgssm(data, state_dim, **options)


#: Observation head of a recurrent network for each kind of data.
RNN_HEAD_FOR_KIND = {"categorical": "categorical", "binary": "bernoulli", "real": "gaussian"}
#: Settings of a recurrent-network spec (``lstm:hidden=256,layers=2``) -> constructor argument.
_RNN_SETTINGS = {"hidden": "hidden_size", "layers": "num_layers", "embedding": "embedding_dim",
                 "dropout": "dropout", "scale": "scale"}


def build_rnn(data: SequenceData, cell: str, settings: dict[str, str]) -> RecurrentModel:
    """A recurrent network (``cell`` = rnn, gru or lstm) with the head that fits the data's kind."""
    _reject_unknown_settings(cell, settings, set(_RNN_SETTINGS))
    head = RNN_HEAD_FOR_KIND.get(data.kind)
    if head is None:
        raise UsageError(f"{cell}: data of kind {data.kind!r} is not supported; read counts as --kind real")
    options: dict[str, Any] = {}
    for key, value in settings.items():
        name = _RNN_SETTINGS[key]
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


MODEL_BUILDERS = {
    "hmm": _build_hmm_from_settings,
    "lgssm": _build_lgssm_from_settings,
    "rnn": lambda data, settings: build_rnn(data, "rnn", settings),
    "gru": lambda data, settings: build_rnn(data, "gru", settings),
    "lstm": lambda data, settings: build_rnn(data, "lstm", settings),
}
#: Training settings any model spec may carry (``lstm:hidden=256,lr=0.002,batch_size=32``) -> type.
FIT_SETTINGS = {"lr": float, "batch_size": int, "chunk_length": int, "epochs": int, "method": str}


def _config_from_json(config: dict) -> dict:
    """Constructor keyword arguments from ``model.json``: fixed matrices saved as nested lists become tensors."""
    fixed = config.get("fixed")
    if isinstance(fixed, dict):
        config = {**config, "fixed": {name: torch.as_tensor(value, dtype=torch.get_default_dtype()) if not isinstance(value, torch.Tensor) else value
                                      for name, value in fixed.items()}}
    return config


def load_model(run: RunDirectory):
    """Rebuilds the model saved in a run directory (weights via safetensors)."""
    description = run.read_json("model.json")
    cls = MODEL_CLASSES.get(description.get("class", "").rsplit(".", 1)[-1])
    if cls is None:
        raise UsageError(f"{run.file('model.json')}: unknown model class {description.get('class')!r}; known: {', '.join(MODEL_CLASSES)}")
    model = cls(**_config_from_json(description["config"]))
    tensors, _ = run.load_tensors("model")
    first = next(iter(tensors.values()), None)
    if first is not None and first.is_floating_point():
        model = model.to(dtype=first.dtype)  # a model fitted in float64 reloads in float64
    run.load_state_dict_into(model)
    return model.eval()


# -- training one model into a run directory ---------------------------------
#: SVI settings when neither the command line nor the model's family names one.
_SVI_DEFAULTS = {"learning_rate": 0.05, "batch_size": None, "chunk_length": 2000}


def _training_setting(args, model, name: str):
    """An SVI setting: the command line's, else the family's default (e.g. an
    RNN's learning rate 2e-3 and sequences of 128), else the general default."""
    value = getattr(args, {"learning_rate": "lr"}.get(name, name), None)
    if value is not None:
        return value
    return model.default_fit_options().get(name, _SVI_DEFAULTS[name])


def _fit_options(args, model, data: SequenceData) -> dict[str, Any]:
    method = getattr(args, "method", None) or ("em" if model.supports_em else "svi")
    options = dict(method=method, seed=args.seed, progress=not args.no_progress, device=args.device,
                   time_budget=args.time_budget * 60 if getattr(args, "time_budget", None) else None)
    if method == "em":
        options.update(max_iterations=args.max_iterations, tolerance=args.tolerance, num_restarts=args.restarts)
    else:
        options.update(max_epochs=args.epochs, learning_rate=_training_setting(args, model, "learning_rate"),
                       batch_size=_training_setting(args, model, "batch_size"))
    return options


def train_into(run: RunDirectory, model, splits, data: SequenceData, args, label: str, description: dict) -> dict:
    """Fits ``model`` on the train split, scores every split, writes the run directory."""
    train, valid, test = splits.train, splits.valid, splits.test
    options = _fit_options(args, model, data)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    chunk_length = _training_setting(args, model, "chunk_length")
    if options["method"] == "svi" and chunk_length and train.batch.num_sequences == 1:
        train_batch = train.batch.chunk(chunk_length)
    else:
        train_batch = train.batch
    device = torch.device(args.device) if args.device else train_batch.device
    model.to(device)
    run.write_json("config.json", {**description, "model": label, "model_config": model.config(),
                                   "fit": {k: v for k, v in options.items() if k != "device"},
                                   "device": str(device)})
    if data.vocabulary is not None:
        run.write_json("vocabulary.json", json.loads(data.vocabulary.to_json()))
    started = time.perf_counter()
    has_valid = valid is not None and valid.batch.num_steps > 0
    result = fit(model, train_batch.to(device), valid=valid.batch.to(device) if has_valid else None,
                 checkpoint=run, resume=getattr(args, "resume", False),
                 description=getattr(args, "progress_label", None) or label, **options)
    seconds = time.perf_counter() - started
    run.save_model(model)
    summary = {
        "model": label,
        "class": type(model).__name__,
        "num_parameters": int(model.num_parameters),
        "seconds": round(seconds, 3),
        "method": result.method,
        "stopped": result.stopped,
        "likelihood": model.likelihood_kind,
        "unit": "nats per time step",
    }
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if part is not None and part.batch.num_steps:
            result_score = score(model, part.batch.to(device))
            summary[f"{name}_log_likelihood"] = result_score.per_step
            summary[f"{name}_stderr"] = result_score.stderr
            summary[f"{name}_steps"] = result_score.num_steps
            if result_score.stderr is None and part.batch.num_sequences == 1 and name != "train":
                summary[f"{name}_stderr"] = _block_stderr(lambda b: _per_step_log_probs(model, b), part.batch.to(device))
    if data.kind == "categorical":
        for name in ("train", "valid", "test"):
            if f"{name}_log_likelihood" in summary:
                summary[f"{name}_bits_per_symbol"] = -summary[f"{name}_log_likelihood"] / math.log(2)
    summary["history"] = result.history
    run.write_json("summary.json", summary)
    run.save_figure("log_likelihood_trace.png", plots.log_likelihood_trace(result.history, title=label))
    if isinstance(model, LinearGaussianSSM):
        _plot_lgssm(run, model, splits, data)
    else:
        _plot_states(run, model, valid if has_valid else train, data)
    return summary


#: Contiguous blocks of one long held-out sequence over which a standard error is taken.
NUM_BLOCKS = 20


def _per_step_log_probs(model, batch) -> torch.Tensor | None:
    """``(T,)`` log p(x_t | x_<t) of a one-sequence batch, or None when the model cannot say."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if hasattr(model, "log_prob_steps"):
                return model.log_prob_steps(batch.values, batch.lengths)[0].double().cpu()
            if isinstance(model, CategoricalHMM):
                codes = batch.values[0, : int(batch.lengths[0])]
                filtered = model.filter(codes.unsqueeze(0))[0].double()  # (T, K)
                transition = model.transition_probs.double()
                predicted = torch.cat([model.initial_probs.double().unsqueeze(0), filtered[:-1] @ transition])
                emission = model.emission_probs.double()[:, codes].T  # (T, K)
                return (predicted * emission).sum(-1).log().cpu()
    finally:
        model.train(was_training)
    return None


def _block_stderr(per_step_scorer, batch, num_blocks: int = NUM_BLOCKS) -> float | None:
    """Standard error of the per-step log-likelihood of one long sequence over
    ``num_blocks`` contiguous blocks (each scored in its full left context)."""
    log_probs = per_step_scorer(batch)
    if log_probs is None or len(log_probs) < 2 * num_blocks:
        return None
    blocks = torch.tensor_split(log_probs[: int(batch.lengths[0])], num_blocks)
    return ratio_standard_error(torch.stack([b.sum() for b in blocks]), torch.tensor([len(b) for b in blocks]))


def _plot_states(run: RunDirectory, model, part: SequenceData, data: SequenceData, steps: int = 120) -> None:
    if not hasattr(model, "smooth"):
        return
    batch = part.batch[0]
    length = min(steps, int(batch.lengths[0]))
    values = batch.values[:, :length].to(next(model.parameters()).device)
    with torch.no_grad():
        marginals = model.smooth(values)[0].cpu().numpy()
    labels = list(data.vocabulary.decode(batch.values[0, :length].tolist())) if data.vocabulary else None
    run.save_figure("posterior_states.png", plots.state_probabilities(marginals, labels, title=f"p(state | data), first {length} steps"))


def _plot_lgssm(run: RunDirectory, model: LinearGaussianSSM, splits, data: SequenceData,
                max_history: int = 1000, max_horizon: int = 200) -> None:
    """``smoothed_states.png`` (smoothed and filtered states, smoothed signal, 90% bands) on
    the end of the training series, and ``forecast.png`` from there over the held-out steps.

    One series (the data is one sequence): the history is the training part and the
    forecast covers the validation and test parts that follow it in time. Many sequences:
    the first sequence of the validation part (else training), its first 80% as history.
    """
    if data.num_sequences == 1:
        series = data.batch.values[0, : int(data.batch.lengths[0])]
        history_length = int(splits.train.batch.lengths[0])
    else:
        part = splits.valid if splits.valid is not None and splits.valid.batch.num_steps else splits.train
        series = part.batch.values[0, : int(part.batch.lengths[0])]
        history_length = max(1, int(0.8 * len(series)))
    start = max(0, history_length - max_history)
    horizon = min(max_horizon, len(series) - history_length)
    device = next(model.parameters()).device
    history = series[start:history_length].to(device)[None]
    time = np.arange(start, history_length)
    names = data.series_names
    with torch.no_grad():
        smoothed = model.smooth(history)
        filtered = model.filter(history)
        matrix = model.observation_matrix
        signal_mean = (smoothed.smoothed_mean[0] @ matrix.T).cpu().numpy()
        signal_var = torch.diagonal(matrix @ smoothed.smoothed_cov[0] @ matrix.T, dim1=-2, dim2=-1)
        state_var = torch.diagonal(smoothed.smoothed_cov[0], dim1=-2, dim2=-1)
        identity_observation = matrix.shape[0] == matrix.shape[1] and torch.allclose(matrix, torch.eye(len(matrix), dtype=matrix.dtype, device=device))
    observed = history[0].cpu().numpy()
    figure = plots.state_bands(
        time, smoothed.smoothed_mean[0].cpu().numpy(), state_var.clamp_min(0).sqrt().cpu().numpy(),
        filtered_mean=filtered.filtered_mean[0].cpu().numpy(),
        signal_mean=None if identity_observation else signal_mean,
        signal_std=None if identity_observation else signal_var.clamp_min(0).sqrt().cpu().numpy(),
        observed=observed, series_names=names, title=f"{model.family}: smoothed states, 90% bands ({data.source})")
    run.save_figure("smoothed_states.png", figure)
    steps = horizon if horizon > 0 else min(max_horizon, max(10, len(history[0]) // 5))
    with torch.no_grad():
        prediction = model.forecast(history, steps)
    mean = prediction.observation_mean[0].cpu().numpy()
    std = torch.diagonal(prediction.observation_cov[0], dim1=-2, dim2=-1).clamp_min(0).sqrt().cpu().numpy()
    actual = series[history_length: history_length + steps].cpu().numpy() if horizon > 0 else None
    figure = plots.forecast_bands(time, observed, np.arange(history_length, history_length + steps), mean, std,
                                  actual=actual, series_names=names,
                                  title=f"{model.family}: {steps}-step forecast with 90% bands ({data.source})")
    run.save_figure("forecast.png", figure)


# -- subcommands -------------------------------------------------------------
def _data_description(args, data: SequenceData, fractions) -> dict:
    return {"data": args.data, "kind": data.kind, "first": args.first, "split": list(fractions), "seed": args.seed,
            "time_column": args.time_column, "sequence_column": args.sequence_column}


def cmd_fit(args) -> int:
    fractions = _parse_split(args.split)
    data = _load(args)
    splits = split_data(data, fractions, seed=args.seed)
    settings, label = FIT_FAMILIES[args.family][1](args)
    model = MODEL_BUILDERS[args.family](splits.train, settings)
    run = RunDirectory.open(args.out) if args.resume else RunDirectory.create(args.out, force=args.force)
    summary = train_into(run, model, splits, data, args, label, _data_description(args, data, fractions))
    _print_summary([summary])
    print(f"run directory: {run.path}")
    return 0


def cmd_compare(args) -> int:
    fractions = _parse_split(args.split)
    specs = [ModelSpec.parse(text) for text in args.models]
    data = _load(args)
    splits = split_data(data, fractions, seed=args.seed)
    root = RunDirectory.create(args.out, force=args.force)
    rows, curves, samples, exports = [], {}, {}, {}
    if data.kind == "categorical":
        rows.extend(_baseline_rows(splits, data))
    started = time.perf_counter()
    for index, spec in enumerate(specs):
        label = spec.label
        model_settings, fit_settings = _split_spec_settings(spec)
        model = MODEL_BUILDERS[spec.family](splits.train, model_settings)
        model_args = argparse.Namespace(**{**vars(args), **fit_settings})
        model_args.time_budget = args.budget_minutes
        model_args.progress_label = f"[{index + 1}/{len(specs)}] {label}"
        print(f"[{index + 1}/{len(specs)}] training {label}{_time_left(args.budget_minutes, len(specs) - index, started)}",
              file=sys.stderr)
        run = RunDirectory.create(root.path / label, force=args.force)
        summary = train_into(run, model, splits, data, model_args, label, _data_description(args, data, fractions))
        curves[label] = summary["history"]
        rows.append({k: v for k, v in summary.items() if k != "history"})
        temperature = SAMPLE_TEMPERATURE if isinstance(model, RecurrentModel) else 1.0
        samples[label] = _sample_text(model, data, length=200, seed=args.seed, temperature=temperature)
        exports[label] = _guide_export(model, splits.train.batch)
    print(f"compared {len(specs)} model(s) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    comparison = {"data": args.data, "split": list(fractions), "unit": "nats per time step",
                  "stderr": "over held-out sequences, or over 20 contiguous blocks of a single held-out sequence",
                  "sample_temperature": {"recurrent networks": SAMPLE_TEMPERATURE, "other models": 1.0},
                  "models": rows, "samples": samples}
    markdown = _comparison_markdown(comparison, data)
    if exports and all(idata is not None for idata in exports.values()) and len(exports) > 1:
        from inference.arviz import compare

        # Every model has posterior draws (a mean-field guide): PSIS-LOO over training sequences.
        table = compare(exports, warn=False)
        comparison["loo_compare"] = json.loads(table.to_json(orient="index"))
        root.write_text("loo_compare.csv", table.to_csv())
        markdown += ("\n## PSIS-LOO over training sequences (az.compare, guide draws with the importance-sampling "
                     "correction)\n\n```\n" + table.to_string() + "\n```\n")
    root.write_json("comparison.json", comparison)
    root.write_text("comparison.md", markdown)
    root.save_figure("learning_curves.png", plots.learning_curves(curves, title=f"{args.data}: validation log-likelihood"))
    _print_summary(rows)
    print(f"comparison: {root.file('comparison.md')}")
    return 0


def _guide_export(model, train, num_draws: int = 200):
    """Guide draws with per-sequence log-likelihoods for az.compare, or None when the
    model has no posterior draws (a point estimate) or the training part has one sequence."""
    from inference.arviz import guide_is_point_mass, to_inference_data

    batch = train.to(next(model.parameters()).device)
    if batch.num_sequences < 2 or guide_is_point_mass(model, batch):
        return None
    return to_inference_data(model, batch, "guide", num_draws=num_draws, posterior_predictive=False, states=False)


#: Temperature of the recurrent networks' samples in a comparison.
SAMPLE_TEMPERATURE = 0.8


def _split_spec_settings(spec: ModelSpec) -> tuple[dict[str, str], dict[str, Any]]:
    """A spec's model settings and its training settings (``lr``, ``batch_size``, ...)."""
    model_settings, fit_settings = {}, {}
    for key, value in spec.settings.items():
        if key in FIT_SETTINGS:
            try:
                fit_settings[key] = FIT_SETTINGS[key](value)
            except ValueError:
                raise UsageError(f"{spec.label}: setting {key}={value!r} is not a number") from None
        else:
            model_settings[key] = value
    return model_settings, fit_settings


def _time_left(budget_minutes: float | None, models_left: int, started: float) -> str:
    """A status note: elapsed time and, with a per-model budget, at most how much is left."""
    elapsed = time.perf_counter() - started
    note = f" ({elapsed / 60:.1f} min elapsed"
    if budget_minutes:
        note += f", at most about {models_left * budget_minutes:.1f} min of training left"
    return note + ")"


def _baseline_rows(splits, data: SequenceData) -> list[dict]:
    v = data.num_symbols
    unigram = baselines.unigram_log_probs(splits.train.batch, v)
    initial, transition = baselines.bigram_log_probs(splits.train.batch, v)
    rows = []
    for name, scorer, num_parameters in (
        ("unigram", lambda b: baselines.unigram_score(unigram, b), v - 1),
        ("bigram", lambda b: baselines.bigram_score(initial, transition, b), (v - 1) * (v + 1)),
    ):
        row = {"model": name, "class": "count table", "num_parameters": num_parameters, "seconds": 0.0, "likelihood": "exact"}
        for part_name in ("train", "valid", "test"):
            part = getattr(splits, part_name)
            if part is not None and part.batch.num_steps:
                per_sequence = scorer(part.batch)
                row[f"{part_name}_log_likelihood"] = float(per_sequence.sum()) / part.batch.num_steps
                row[f"{part_name}_bits_per_symbol"] = -row[f"{part_name}_log_likelihood"] / math.log(2)
                row[f"{part_name}_stderr"] = ratio_standard_error(per_sequence, part.batch.lengths)
                if row[f"{part_name}_stderr"] is None and part_name != "train":
                    row[f"{part_name}_stderr"] = _block_stderr(
                        lambda b, name=name: _baseline_per_step(name, unigram, initial, transition, b), part.batch)
        rows.append(row)
    return rows


def _baseline_per_step(name: str, unigram, initial, transition, batch) -> torch.Tensor:
    """``(T,)`` per-step log-likelihoods of a one-sequence batch under a count table."""
    codes = batch.values[0, : int(batch.lengths[0])].long().cpu()
    if name == "unigram":
        return unigram[codes]
    return torch.cat([initial[codes[:1]], transition[codes[:-1], codes[1:]]])


def _sample_text(model, data: SequenceData, length: int, seed: int, temperature: float = 1.0) -> str | None:
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    options = {"temperature": temperature} if temperature != 1.0 else {}
    with torch.no_grad():
        batch = model.sample(1, length, generator=generator, **options)
    if data.vocabulary is not None:
        return data.vocabulary.decode(batch.values[0].cpu().tolist())
    return None


def _comparison_markdown(comparison: dict, data: SequenceData) -> str:
    symbols = data.kind == "categorical"
    header = "| model | likelihood | parameters | seconds | train | valid | test |" + (" test bits/symbol |" if symbols else "")
    lines = [f"# Comparison on {comparison['data']}", "",
             "Held-out log-likelihood in nats per time step (higher is better), ± one standard error over held-out "
             "sequences, or over 20 contiguous blocks of a single held-out sequence. Every likelihood here is exact "
             "(column 'likelihood'); a bound would be named there. Bits per symbol = -nats / ln 2.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row in comparison["models"]:
        def cell(part):
            value = row.get(f"{part}_log_likelihood")
            if value is None:
                return "—"
            stderr = row.get(f"{part}_stderr")
            return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr else "")
        line = (f"| {row['model']} | {row.get('likelihood', 'exact')} | {row['num_parameters']} | {row['seconds']:.1f} | "
                f"{cell('train')} | {cell('valid')} | {cell('test')} |")
        if symbols:
            bits = row.get("test_bits_per_symbol")
            line += f" {bits:.3f} |" if bits is not None else " — |"
        lines.append(line)
    if comparison.get("samples"):
        lines += ["", f"## Samples (recurrent networks at temperature {SAMPLE_TEMPERATURE}, other models at 1)", ""]
        for name, text in comparison["samples"].items():
            if text is not None:
                lines += [f"**{name}**", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def _print_summary(rows: Sequence[dict]) -> None:
    print(f"{'model':<28} {'params':>8} {'seconds':>8} {'train':>9} {'valid':>9} {'test':>9}   (nats per step)")
    for row in rows:
        cells = [f"{row.get(f'{p}_log_likelihood', float('nan')):9.4f}" for p in ("train", "valid", "test")]
        print(f"{row['model']:<28} {row['num_parameters']:>8} {row['seconds']:>8.1f} {' '.join(cells)}")


def cmd_decode(args) -> int:
    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    model = load_model(run)
    if not hasattr(model, "decode"):
        raise UsageError(f"decode: {type(model).__name__} has no discrete states to decode (Viterbi paths are for HMMs)")
    vocabulary = Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    args.data = args.data or config["data"]
    args.kind = args.kind or config.get("kind")
    for option in ("time_column", "sequence_column"):
        if getattr(args, option) is None and args.data == config["data"]:
            setattr(args, option, config.get(option))
    data = _load(args, vocabulary=vocabulary)
    device = next(model.parameters()).device
    batch = data.batch.to(device)
    with torch.no_grad():
        paths = model.decode(batch.values, batch.lengths).cpu()
    out = Path(args.output) if args.output else run.file("decoded.csv")
    lines = ["sequence,time,state"]
    for n, length in enumerate(batch.lengths.tolist()):
        lines.extend(f"{n},{t},{int(paths[n, t])}" for t in range(length))
    _write_text_atomic(out, "\n".join(lines) + "\n", force=args.force)
    counts = torch.bincount(paths[paths >= 0], minlength=model.num_states)
    print(f"decoded {batch.num_steps} steps of {batch.num_sequences} sequence(s) into {out}")
    print("state occupancy: " + ", ".join(f"{k}: {int(c)}" for k, c in enumerate(counts)))
    return 0


def cmd_sample(args) -> int:
    run = RunDirectory.open(args.run)
    model = load_model(run)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    vocabulary = Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    options: dict[str, Any] = {}
    if args.temperature is not None or args.prime is not None:
        if not isinstance(model, RecurrentModel):
            raise UsageError(f"--temperature and --prime need a recurrent network; {run.path} holds a {type(model).__name__}")
        if args.temperature is not None:
            options["temperature"] = args.temperature
        if args.prime is not None:
            if vocabulary is None:
                raise UsageError("--prime: the run directory has no vocabulary.json; priming takes text")
            options["prime"] = vocabulary.encode(args.prime).to(device)
    with torch.no_grad():
        batch = model.sample(args.num_sequences, args.length, generator=generator, **options)
    for n in range(batch.num_sequences):
        values = batch.values[n].cpu()
        if vocabulary is not None:
            print((args.prime or "") + vocabulary.decode(values.tolist()))
        else:
            for row in values.reshape(len(values), -1).tolist():
                print(",".join(f"{v:.6g}" for v in row))
            if n + 1 < batch.num_sequences:
                print()
    return 0


def _write_text_atomic(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cmd_diagnose(args) -> int:
    """Posterior diagnostics of a fitted run into RUN/diagnostics (see zoo.diagnostics.write_diagnostics)."""
    from inference.arviz import guide_is_point_mass, to_inference_data
    from zoo import diagnostics

    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    model = load_model(run)
    vocabulary = Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    same_data = args.data is None or args.data == config["data"]
    args.data = args.data or config["data"]
    args.kind = args.kind or config.get("kind")
    for option in ("time_column", "sequence_column"):
        if getattr(args, option) is None and same_data:
            setattr(args, option, config.get(option))
    if same_data and args.first is None:
        args.first = config.get("first")
    data = _load(args, vocabulary=vocabulary)
    if same_data:
        # The posterior is of the data the model was fitted to: the same training split.
        part = split_data(data, tuple(config.get("split", (0.8, 0.1, 0.1))), seed=config.get("seed", 0)).train
        where = f"the training split of {args.data}"
    else:
        part, where = data, f"all of {args.data}"
    out = RunDirectory.create(run.path / "diagnostics", force=args.force)
    batch = part.batch.to(next(model.parameters()).device)
    label = config.get("model", type(model).__name__)
    if args.nuts:
        result = fit(model, batch, method="nuts", num_samples=args.draws, warmup_steps=args.warmup,
                     num_chains=args.chains, seed=args.seed, progress=not args.no_progress, initialize=False,
                     max_tree_depth=args.max_tree_depth,
                     description=f"{label} nuts")
        posterior = result
    elif not guide_is_point_mass(model, batch):
        posterior = "guide"
    else:
        posterior = "point"
    idata = to_inference_data(model, batch, posterior, num_draws=args.guide_draws,
                              num_predictive_draws=args.predictive_draws, seed=args.seed)
    report = diagnostics.write_diagnostics(out, model, idata, title=label, num_symbols=getattr(model, "num_symbols", None))
    if args.nuts:
        out.save_model(model, "posterior_mean_model")
        report["files"].append("posterior_mean_model.safetensors")
    out.write_json("diagnose.json", {"run": str(run.path), "data": where, "posterior": report["posterior_kind"],
                                     **{k: v for k, v in report.items() if k not in ("files",)}})
    print(f"posterior: {report['posterior_kind']} ({report['num_chains']} chain(s) x {report['num_draws']} draw(s)) on {where}")
    if report["max_r_hat"] is not None:
        print(f"max r_hat {report['max_r_hat']:.4f}, min bulk ESS {report['min_ess_bulk']:.0f}"
              + (f", divergences {report['divergences']}" if report["divergences"] is not None else ""))
    loo = report["loo"]
    print("LOO: " + (f"elpd_loo {loo['elpd_loo']:.2f} ± {loo['se']:.2f} over {loo['n_sequences']} sequences"
                     if "elpd_loo" in loo else f"skipped ({loo['skipped']})"))
    print(f"diagnostics: {out.path}")
    return 0


# -- argument parsing --------------------------------------------------------
def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", help="torch device, e.g. cpu or cuda (default: where the data is, the CPU)")
    group.add_argument("--max-iterations", type=int, default=500, help="EM iterations (default 500)")
    group.add_argument("--tolerance", type=float, default=1e-8, help="EM convergence: nats per step gained per iteration")
    group.add_argument("--restarts", type=int, default=1, help="EM random restarts; the best is kept")
    group.add_argument("--epochs", type=int, default=200, help="SVI epochs (default 200)")
    group.add_argument("--lr", type=float, help="SVI learning rate (default 0.05; recurrent networks 0.002)")
    group.add_argument("--batch-size", type=int, help="SVI mini-batch size in sequences (default: all; recurrent networks 64)")
    group.add_argument("--chunk-length", type=int,
                       help="SVI: cut one long training sequence into pieces of this many steps "
                            "(truncated backpropagation through time; default 2000, recurrent networks 128)")
    group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                                                   "for small recurrent networks on a busy machine)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--force", action="store_true", help="replace an existing run directory")


def _add_hmm_arguments(group) -> None:
    group.add_argument("--states", type=int, required=True, help="number of hidden states K")
    group.add_argument("--emission", choices=["categorical", "gaussian", "poisson"])
    group.add_argument("--covariance", choices=["diag", "full"], default="diag")
    group.add_argument("--guide", choices=["map", "meanfield"], default="map")
    group.add_argument("--marginalize", choices=["kernel", "enumerate"], default="kernel")


def _hmm_settings(args) -> tuple[dict[str, str], str]:
    settings = {"states": str(args.states), "covariance": args.covariance, "guide": args.guide, "marginalize": args.marginalize}
    if args.emission:
        settings["emission"] = args.emission
    return settings, f"hmm-states{args.states}"


def _add_lgssm_arguments(group) -> None:
    group.add_argument("--state-dim", type=int, required=True, metavar="D", help="dimension d of the latent state")
    group.add_argument("--transition", choices=["learned", "identity"], default="learned",
                       help="state transition matrix A: learned, or fixed to I (random walk)")
    group.add_argument("--observation", choices=["learned", "identity"], default="learned",
                       help="observation matrix B: learned, or fixed to I (needs --state-dim = number of series)")
    group.add_argument("--covariance", choices=["diag", "full"], default="diag", help="form of the noise covariances Γ and Σ")
    group.add_argument("--initial", choices=["diffuse", "prior"], default="diffuse",
                       help="initial state: exact diffuse initialisation, or a learned Gaussian prior")
    group.add_argument("--prior", choices=["weak", "none"], default="weak", help="weak priors on the parameters (MAP), or none (MLE)")
    group.add_argument("--guide", choices=["map", "meanfield"], default="map")
    group.add_argument("--latent", choices=["marginal", "sampled"], default="marginal",
                       help="svi: states integrated out by the Kalman filter, or sampled with a structured guide")


def _lgssm_settings(args) -> tuple[dict[str, str], str]:
    names = ("transition", "observation", "covariance", "initial", "prior", "guide", "latent")
    settings = {"state_dim": str(args.state_dim), **{name: getattr(args, name) for name in names}}
    return settings, f"lgssm-d{args.state_dim}"


def _add_rnn_arguments(group) -> None:
    group.add_argument("--hidden", type=int, default=256, help="units per layer (default 256)")
    group.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    group.add_argument("--embedding", type=int, default=64, help="input embedding width, 0 = one-hot/raw input (default 64)")
    group.add_argument("--dropout", type=float, default=0.0, help="dropout between layers and before the output (default 0)")
    group.add_argument("--scale", choices=["learned", "predicted"], help="real data: per-dimension or predicted noise scale")


def _rnn_settings(cell: str):
    def settings(args) -> tuple[dict[str, str], str]:
        values = {key: str(getattr(args, key)) for key in _RNN_SETTINGS if getattr(args, key, None) is not None}
        return values, f"{cell}-hidden{args.hidden}" + (f"-layers{args.layers}" if args.layers != 1 else "")
    return settings


#: ``seqzoo fit FAMILY``: family -> (adds its own flags, reads them into builder settings and a label, help).
#: Each family owns its flags, so argparse names the flag that is missing or wrong for that family.
FIT_FAMILIES = {
    "hmm": (_add_hmm_arguments, _hmm_settings, "hidden Markov model (discrete states)"),
    "lgssm": (_add_lgssm_arguments, _lgssm_settings, "linear-Gaussian state-space model (Kalman filter)"),
    "rnn": (_add_rnn_arguments, _rnn_settings("rnn"), "Elman recurrent network (deterministic state)"),
    "gru": (_add_rnn_arguments, _rnn_settings("gru"), "gated recurrent unit network (deterministic state)"),
    "lstm": (_add_rnn_arguments, _rnn_settings("lstm"), "long short-term memory network (deterministic state)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqzoo", description="Fit, compare, decode and sample latent-state sequence models.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit_parser = sub.add_parser("fit", help="fit one model into a run directory")
    families = fit_parser.add_subparsers(dest="family", required=True, metavar="FAMILY", help=", ".join(FIT_FAMILIES))
    for family, (add_arguments, _settings, help_text) in FIT_FAMILIES.items():
        family_parser = families.add_parser(family, help=help_text)
        _add_data_arguments(family_parser)
        add_arguments(family_parser.add_argument_group(f"{family} model"))
        family_parser.add_argument("--method", choices=["em", "svi"], help="default: em where the model has it")
        family_parser.add_argument("--out", required=True, help="run directory to create")
        family_parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
        family_parser.add_argument("--time-budget", type=float, metavar="MINUTES")
        _add_training_arguments(family_parser)
        family_parser.set_defaults(handler=cmd_fit)

    compare_parser = sub.add_parser("compare", help="fit several models on one split and compare held-out likelihoods")
    _add_data_arguments(compare_parser)
    compare_parser.add_argument("--models", nargs="+", required=True, metavar="SPEC", help="e.g. hmm:states=64 lstm:hidden=256,layers=2 gru:hidden=256,lr=0.002 lgssm:state_dim=2,transition=identity "
                                     "(training settings lr, batch_size, chunk_length, epochs may be given per model)")
    compare_parser.add_argument("--out", required=True)
    compare_parser.add_argument("--budget-minutes", type=float, help="training time budget per model")
    _add_training_arguments(compare_parser)
    compare_parser.set_defaults(handler=cmd_compare, method=None)

    decode_parser = sub.add_parser("decode", help="Viterbi paths of data under a fitted model")
    decode_parser.add_argument("run", help="run directory of a fitted model")
    _add_data_arguments(decode_parser, required=False)
    decode_parser.add_argument("--output", help="CSV to write (default RUN/decoded.csv)")
    decode_parser.add_argument("--force", action="store_true", help="overwrite the output file")
    decode_parser.set_defaults(handler=cmd_decode)

    diagnose_parser = sub.add_parser("diagnose", help="posterior summary, trace/rank/PPC/state plots and LOO of a fitted run")
    diagnose_parser.add_argument("run", help="run directory of a fitted model")
    _add_data_arguments(diagnose_parser, required=False)
    diagnose_parser.add_argument("--nuts", action="store_true", help="sample the posterior by NUTS (started at the fitted parameters)")
    diagnose_parser.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    diagnose_parser.add_argument("--draws", type=int, default=500, help="NUTS draws per chain (default 500)")
    diagnose_parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up iterations per chain (default 500)")
    diagnose_parser.add_argument("--max-tree-depth", type=int, default=10, help="NUTS maximum tree depth (default 10)")
    diagnose_parser.add_argument("--guide-draws", type=int, default=500, help="draws from a variational guide (default 500)")
    diagnose_parser.add_argument("--predictive-draws", type=int, default=100, help="replicated data sets for the PPC (default 100)")
    diagnose_parser.add_argument("--seed", type=int, default=0)
    diagnose_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    diagnose_parser.add_argument("--force", action="store_true", help="replace RUN/diagnostics if it exists")
    diagnose_parser.set_defaults(handler=cmd_diagnose)

    sample_parser = sub.add_parser("sample", help="synthesise sequences from a fitted model")
    sample_parser.add_argument("run", help="run directory of a fitted model")
    sample_parser.add_argument("--length", type=int, required=True)
    sample_parser.add_argument("--num-sequences", type=int, default=1)
    sample_parser.add_argument("--seed", type=int, default=0)
    sample_parser.add_argument("--prime", help="recurrent networks: text the samples continue (printed before them)")
    sample_parser.add_argument("--temperature", type=float, help="recurrent networks: q_i ∝ exp(z_i / T); 0 = greedy (default 1)")
    sample_parser.set_defaults(handler=cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"seqzoo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
