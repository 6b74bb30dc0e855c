"""``seqzoo compare``: several models (and the count baselines) fitted on one split, scored on
the same held-out parts, and reported in ``comparison.md``/``comparison.json`` with learning
curves, forecasts and samples."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

import torch

from inference.fit import fit
from inference.scoring import ratio_standard_error
from zoo import baselines, compare_timeseries, parallel, plots
from zoo.data import SequenceData, Splits
from zoo.registry import REGISTRY, Family, UsageError

from .data_args import (
    _check_minutes,
    _data_and_splits,
    _data_description,
    _data_fingerprint,
    _data_paths,
    _describe_split,
)
from .specs import ModelSpec, build_model, spec_settings
from .training import (
    NO_HELD_OUT,
    _block_stderr,
    _check_fit_memory,
    _empty_parts,
    _fit_options,
    _print_summary,
    train_into,
)


def cmd_compare(args) -> int:
    specs = [ModelSpec.parse(text) for text in args.models]
    _check_minutes("--budget-minutes", args.budget_minutes)
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UsageError(
            f"--models: {', '.join(repeated)} given more than once; each model needs its own settings "
            "(it is written to OUT/<its name>)"
        )
    compare_timeseries.check_arguments(args)
    data, splits, how = _data_and_splits(args)
    print(_describe_split(data, splits, how))
    timeline = compare_timeseries.timeline(data, splits, how)
    # Every spec is checked, by fit's rules and for memory, before any model trains or any file is written,
    # so a bad setting in the last one costs no training time.
    settings_of = {}
    for spec in specs:
        settings_of[spec.label] = spec_settings(spec, splits.train)
        family = REGISTRY[spec.family]
        model_settings, fit_settings = settings_of[spec.label]
        _check_fit_memory(
            family,
            splits.train,
            model_settings,
            fit_settings.get("method", args.method),
            args.device,
            what=f"compare {spec.label}",
        )
    description = {**_data_description(args, data, how), "data_fingerprint": _data_fingerprint(args, data)}
    root = parallel.create_run(args.out, force=args.force, data_paths=_data_paths(args), manifest=True)
    rows, curves, samples, temperatures, exports, fans = [], {}, {}, {}, {}, {}
    if data.kind == "categorical":
        rows.extend(_baseline_rows(splits, data, timeline if args.score_from == "history" else None))
    started = time.perf_counter()
    for index, spec in enumerate(specs):
        label = spec.label
        family = REGISTRY[spec.family]
        model_settings, fit_settings = settings_of[label]
        model = build_model(family, splits.train, model_settings)
        model_args = argparse.Namespace(**{**vars(args), **fit_settings})
        model_args.time_budget = args.budget_minutes
        model_args.progress_label = f"[{index + 1}/{len(specs)}] {label}"
        print(
            f"[{index + 1}/{len(specs)}] training {label}{_time_left(args.budget_minutes, len(specs) - index, started)}",
            file=sys.stderr,
        )
        run = parallel.create_run(root.path / label, manifest=True)  # inside the fresh root: always new
        args.interrupted_run = root  # for main's Ctrl-C line
        summary = train_into(run, model, family, splits, data, model_args, label, description)
        curves[label] = summary["history"]
        rows.append({k: v for k, v in summary.items() if k != "history"})
        rows[-1].update(compare_timeseries.forecast_columns(model, timeline, args, data.kind))
        rows[-1].update(
            compare_timeseries.lfo_columns(
                model, family, timeline, args, refit=_refitter(family, model_settings, model_args, splits)
            )
        )
        fans[label] = compare_timeseries.fan_forecast(model, timeline, args)
        temperatures[label] = SAMPLE_TEMPERATURE if model.supports("sample_temperature") else 1.0
        samples[label] = _sample_text(model, data, length=200, seed=args.seed, temperature=temperatures[label])
        exports[label] = _guide_export(model, splits.train.batch)
    print(f"compared {len(specs)} model(s) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    comparison = {
        "data": args.data,
        **how,
        "split_description": _describe_split(data, splits, how),
        "unit": "nats per time step",
        "stderr": "over held-out sequences, or over 20 contiguous blocks of a single held-out sequence",
        "sample_temperature": temperatures,
        "models": rows,
        "samples": samples,
        "score_from": args.score_from if timeline is not None else "start",
        "score_note": compare_timeseries.score_from_note(args.score_from, timeline, rows),
    }
    markdown = _comparison_markdown(
        {**comparison, "models": compare_timeseries.display_rows(rows, args.score_from)}, data
    )
    markdown += compare_timeseries.forecast_markdown(rows)
    if compare_timeseries.write_forecast_fan(root, fans, timeline, args.data):
        markdown += "\nForecast fans of every model from the start of the held-out part: forecast_fan.png\n"
    if exports and all(idata is not None for idata in exports.values()) and len(exports) > 1:
        from inference.arviz import compare

        # Every model has posterior draws (a mean-field guide): PSIS-LOO over training sequences.
        table = compare(exports, warn=False)
        comparison["loo_compare"] = json.loads(table.to_json(orient="index"))
        root.write_text("loo_compare.csv", table.to_csv())
        markdown += (
            "\n## PSIS-LOO over training sequences (az.compare, guide draws with the importance-sampling "
            "correction)\n\n```\n" + table.to_string() + "\n```\n"
        )
    root.write_json("comparison.json", comparison)
    root.write_text("comparison.md", markdown)
    if any(record.get("valid_log_prob_per_step") is not None for history in curves.values() for record in history):
        # Without a validation part (--split 1,0,0) there is no curve to draw.
        root.save_figure(
            "learning_curves.png", plots.learning_curves(curves, title=f"{args.data}: validation log-likelihood")
        )
    _print_summary(compare_timeseries.display_rows(rows, args.score_from))
    print(comparison["score_note"])
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


def _time_left(budget_minutes: float | None, models_left: int, started: float) -> str:
    """A status note: elapsed time and, with a per-model budget, at most how much is left."""
    elapsed = time.perf_counter() - started
    note = f" ({elapsed / 60:.1f} min elapsed"
    if budget_minutes:
        note += f", at most about {models_left * budget_minutes:.1f} min of training left"
    return note + ")"


def _refitter(family: Family, settings: dict[str, str], model_args, splits: Splits):
    """``history -> a model of the spec fit on it`` (leave-future-out refits)."""

    def refit(history):
        model = build_model(family, splits.train, settings)
        fit(model, history, **{**_fit_options(model_args, model), "progress": False, "time_budget": None})
        return model.eval()

    return refit


def _baseline_rows(splits, data: SequenceData, timeline=None) -> list[dict]:
    v = data.num_symbols
    unigram = baselines.unigram_log_probs(splits.train.batch, v)
    initial, transition = baselines.bigram_log_probs(splits.train.batch, v)
    rows = []
    for name, scorer, num_parameters in (
        ("unigram", lambda b: baselines.unigram_score(unigram, b), v - 1),
        ("bigram", lambda b: baselines.bigram_score(initial, transition, b), (v - 1) * (v + 1)),
    ):
        row = {
            "model": name,
            "class": "count table",
            "num_parameters": num_parameters,
            "seconds": 0.0,
            "likelihood": "exact",
        }
        for part_name in ("train", "valid", "test"):
            part = getattr(splits, part_name)
            if part is not None and part.batch.num_steps:
                per_sequence = scorer(part.batch)
                row[f"{part_name}_log_likelihood"] = float(per_sequence.sum()) / part.batch.num_steps
                row[f"{part_name}_bits_per_symbol"] = -row[f"{part_name}_log_likelihood"] / math.log(2)
                row[f"{part_name}_stderr"] = ratio_standard_error(per_sequence, part.batch.lengths)
                if row[f"{part_name}_stderr"] is None and part_name != "train":
                    row[f"{part_name}_stderr"] = _block_stderr(
                        lambda b, name=name: _baseline_per_step(name, unigram, initial, transition, b), part.batch
                    )
        row.update(
            compare_timeseries.baseline_held_out_scores(
                lambda b, name=name: _baseline_per_step(name, unigram, initial, transition, b), timeline
            )
        )
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


def _likelihood_note(rows: Sequence[dict]) -> str:
    """What the 'likelihood' column means for these rows: exact log-likelihoods, or which rows are bounds."""
    kinds = {row["model"]: row.get("likelihood", "exact") for row in rows}
    bounds = {model: kind for model, kind in kinds.items() if kind != "exact"}
    if not bounds:
        return "Every likelihood here is exact (column 'likelihood')."
    exact = [model for model, kind in kinds.items() if kind == "exact"]
    note = (
        "Column 'likelihood' says what each score is. Lower bounds on the log-likelihood, not its exact value: "
        + "; ".join(f"{model} ({kind})" for model, kind in bounds.items())
        + ". A bound understates its model: a bound that beats an exact score wins by at least the gap, "
        "one that falls short may not truly lose."
    )
    return note + (f" Exact: {', '.join(exact)}." if exact else "")


def _comparison_markdown(comparison: dict, data: SequenceData) -> str:
    symbols = data.kind == "categorical"
    held = f" ({compare_timeseries.LABEL_GIVEN_HISTORY})" if comparison.get("score_from") == "history" else ""
    header = f"| model | likelihood | parameters | seconds | train | valid{held} | test{held} |" + (
        " test bits/symbol |" if symbols else ""
    )
    lines = [f"# Comparison on {comparison['data']}", ""]
    if comparison.get("split_description"):
        lines += [comparison["split_description"][0].upper() + comparison["split_description"][1:] + ".", ""]
    lines += [
        "Held-out log-likelihood in nats per time step (higher is better), ± one standard error over held-out "
        "sequences, or over 20 contiguous blocks of a single held-out sequence. "
        + (comparison["score_note"] + " " if comparison.get("score_note") else "")
        + _likelihood_note(comparison["models"])
        + " Bits per symbol = -nats / ln 2.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for row in comparison["models"]:

        def cell(part):
            value = row.get(f"{part}_log_likelihood")
            if value is None:
                return "—"
            stderr = row.get(f"{part}_stderr")
            return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr else "")

        line = (
            f"| {row['model']} | {row.get('likelihood', 'exact')} | {row['num_parameters']} | {row['seconds']:.1f} | "
            f"{cell('train')} | {cell('valid')} | {cell('test')} |"
        )
        if symbols:
            bits = row.get("test_bits_per_symbol")
            line += f" {bits:.3f} |" if bits is not None else " — |"
        lines.append(line)
    empty = _empty_parts(comparison["models"])
    if empty:
        lines += [
            "",
            f"{' and '.join(empty).capitalize()}: {NO_HELD_OUT} (the split gives {'them' if len(empty) > 1 else 'it'} no steps).",
        ]
    if any(text is not None for text in comparison.get("samples", {}).values()):
        temperatures = comparison.get("sample_temperature", {})
        cooled = [name for name, temperature in temperatures.items() if temperature != 1.0]
        lines += [
            "",
            f"## Samples (at temperature {SAMPLE_TEMPERATURE}: {', '.join(cooled)}; others at temperature 1)"
            if cooled
            else "## Samples (at temperature 1)",
            "",
        ]
        for name, text in comparison["samples"].items():
            if text is not None:
                lines += [f"**{name}**", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"
