"""Training one model into a run directory: the training flags, the options record they
resolve to (the family's ``fit_defaults`` with only the flags the user gave replaced), the
memory check before anything is allocated, ``train_into`` (fit, score every part, write the
run) and ``seqzoo fit``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from inference.checkpoint import CHECKPOINT_NAME
from inference.fit import fit, resolve_options
from inference.memory import check_memory, generic_fit_memory
from inference.rundir import RunDirectory
from inference.scoring import ratio_standard_error, score
from zoo import compare_timeseries, parallel, plots
from zoo.data import SequenceData, Splits
from zoo.registry import REGISTRY, Family

from .data_args import (
    _check_minutes,
    _data_and_splits,
    _data_description,
    _data_fingerprint,
    _data_paths,
    _describe_split,
)
from .specs import build_model, check_spec


def _check_fit_memory(
    family: Family, train: SequenceData, settings: dict[str, str], method: str | None, device: str | None, what: str
) -> None:
    """Refuses a fit whose estimated peak memory exceeds what is free, BEFORE its
    parameters are allocated (the family's ``memory_estimate``), or, for a family
    without one, from the built model's parameter count (``generic_fit_memory``)."""
    batch = train.batch
    if family.memory_estimate is not None:
        estimate = family.memory_estimate(train, settings, method or "em")
    else:
        model = family.build(train, settings)
        estimate = generic_fit_memory(
            int(model.num_parameters),
            batch_sequences=max(1, batch.num_sequences),
            batch_steps=int(batch.values.shape[1]),
            description=f"a {type(model).__name__}",
        )
        del model
    check_memory(
        estimate,
        device=device or "cpu",
        what=what,
        hint="choose a smaller model, or fewer or shorter sequences (--first)",
    )


# -- training one model into a run directory ---------------------------------
#: ``seqzoo fit`` training flags (their destinations) -> the options field each sets, per method.
#: A flag the user leaves out sets nothing: the field keeps the family's recipe
#: (``model.fit_defaults(method)``), so ``seqzoo fit FAMILY`` trains as ``fit(model, train)`` does.
_FIT_FLAGS = {
    "svi": {
        "epochs": "max_epochs",
        "lr": "learning_rate",
        "final_lr": "final_learning_rate",
        "warmup_epochs": "warmup_epochs",
        "batch_size": "batch_size",
        "chunk_length": "chunk_length",
        "patience": "patience",
        "eval_every": "eval_every",
    },
    "em": {
        "max_iterations": "max_iterations",
        "tolerance": "tolerance",
        "restarts": "num_restarts",
        "patience": "patience",
        "eval_every": "eval_every",
    },
}


def _fit_options(args, model) -> dict[str, Any]:
    """The keywords of :func:`inference.fit.fit` this command passes: the run's own (method,
    seed, device, progress, time budget) and the training flags the user gave, nothing else."""
    method = _method(args, model)
    options = dict(
        method=method,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
        time_budget=args.time_budget * 60 if getattr(args, "time_budget", None) else None,
    )
    for flag, field_name in _FIT_FLAGS.get(method, {}).items():
        value = getattr(args, flag, None)
        if value is not None:
            options[field_name] = value
    return options


def _resolved_options(model, options: Mapping[str, Any]):
    """The options record ``fit(model, train, **options)`` trains with (the family's recipe plus the flags)."""
    return resolve_options(model, options["method"], **{k: v for k, v in options.items() if k != "method"})


def _json_safe(value: Any) -> Any:
    """A fit option as config.json can hold it: a schedule object or a function by its repr or name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return getattr(value, "__name__", None) or repr(value)


def _fit_record(model, options: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's ``fit``: the method, the seed and every field of the options record the fit
    trains with (callables by name), so a run says what it trained with."""
    record = _resolved_options(model, options)
    fields = {field.name: _json_safe(getattr(record, field.name)) for field in dataclasses.fields(record)}
    return {"method": options["method"], "seed": options["seed"], **fields}


def train_into(
    run: RunDirectory, model, family: Family, splits: Splits, data: SequenceData, args, label: str, description: dict
) -> dict:
    """Fits ``model`` (of ``family``) on the train split, scores every split, writes the run directory."""
    train, valid, test = splits.train, splits.valid, splits.test
    options = _fit_options(args, model)
    # A series split in time: held-out parts (and early stopping) scored given their history.
    timeline = (
        compare_timeseries.timeline(data, splits, description)
        if getattr(args, "score_from", "history") == "history"
        else None
    )
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    train_batch = train.batch  # fit cuts one long sequence into chunk_length pieces (SVI)
    device = parallel.device_for(args.device, train_batch.device)  # under torchrun with NCCL: cuda:LOCAL_RANK
    model.to(device)
    run.write_json(
        "config.json",
        {
            **description,
            "family": family.name,
            "model": label,
            "model_config": model.config(),
            "fit": _fit_record(model, options),
            "device": str(device),
        },
    )
    if data.vocabulary is not None:
        run.write_json("vocabulary.json", json.loads(data.vocabulary.to_json()))
    started = time.perf_counter()
    has_valid = valid is not None and valid.batch.num_steps > 0
    result = (parallel.fit if parallel.current() else fit)(
        model,
        train_batch.to(device),
        valid=valid.batch.to(device) if has_valid else None,
        checkpoint=run,
        resume=getattr(args, "resume", False),
        description=getattr(args, "progress_label", None) or label,
        **options,
        **compare_timeseries.validation_options(timeline, options["method"], has_valid),
    )
    seconds = time.perf_counter() - started
    run.save_model(model)
    # A stochastic bound's particles for the final scores (an IWAE bound), where the family sets them.
    num_particles = model.score_particles()
    summary = {
        "model": label,
        "class": type(model).__name__,
        "num_parameters": int(model.num_parameters),
        "seconds": round(seconds, 3),
        "method": result.method,
        "stopped": result.stopped,
        "likelihood": model.likelihood_label(num_particles) if num_particles > 1 else model.likelihood_kind,
        "unit": "nats per time step",
    }
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if part is not None and part.batch.num_steps:
            result_score = score(model, part.batch.to(device), num_particles=num_particles)
            summary[f"{name}_log_likelihood"] = result_score.per_step
            summary[f"{name}_stderr"] = result_score.stderr
            summary[f"{name}_steps"] = result_score.num_steps
            if result_score.stderr is None and part.batch.num_sequences == 1 and name != "train":
                summary[f"{name}_stderr"] = _block_stderr(
                    lambda b: _per_step_log_probs(family, model, b), part.batch.to(device)
                )
    summary.update(compare_timeseries.held_out_scores(model, family, timeline))
    summary["score_from"] = "history" if timeline is not None else "start"
    if data.kind == "categorical":
        for name in ("train", "valid", "test"):
            if f"{name}_log_likelihood" in summary:
                summary[f"{name}_bits_per_symbol"] = -summary[f"{name}_log_likelihood"] / math.log(2)
    summary["history"] = result.history
    run.write_json("summary.json", summary)
    run.save_figure("log_likelihood_trace.png", plots.log_likelihood_trace(result.history, title=label))
    if family.plots is not None:
        family.plots(run, model, splits, data)
    return summary


#: Contiguous blocks of one long held-out sequence over which a standard error is taken.
NUM_BLOCKS = 20


def _per_step_log_probs(family: Family, model, batch) -> torch.Tensor | None:
    """``(T,)`` log p(x_t | x_<t) of a one-sequence batch through the family's
    ``per_step_log_probs``, or None when the family cannot say."""
    if family.per_step_log_probs is None:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            log_probs = family.per_step_log_probs(model, batch)
    finally:
        model.train(was_training)
    return None if log_probs is None else log_probs[0].double().cpu()


def _block_stderr(per_step_scorer, batch, num_blocks: int = NUM_BLOCKS) -> float | None:
    """Standard error of the per-step log-likelihood of one long sequence over
    ``num_blocks`` contiguous blocks (each scored in its full left context)."""
    log_probs = per_step_scorer(batch)
    if log_probs is None or len(log_probs) < 2 * num_blocks:
        return None
    blocks = torch.tensor_split(log_probs[: int(batch.lengths[0])], num_blocks)
    return ratio_standard_error(torch.stack([b.sum() for b in blocks]), torch.tensor([len(b) for b in blocks]))


def _method(args, model) -> str:
    return getattr(args, "method", None) or ("em" if model.supports_em else "svi")


def _reached_limit(run: RunDirectory, record, method: str) -> str | None:
    """For ``--resume``: a line saying the checkpoint is already at this command's
    iteration limit (nothing to train), or None. ``record``: the options the fit would run with."""
    if not run.exists(CHECKPOINT_NAME + ".json"):
        return None
    state = run.read_json(CHECKPOINT_NAME)
    if not isinstance(state, dict) or state.get("method") != method:
        return None
    if method == "em":
        closed = len(state.get("restart_objectives") or [])
        if closed and not state.get("iteration"):
            # Every restart so far is closed: the last one's iterations are its history records.
            last = closed - 1
            iteration = sum(1 for record in state.get("history", []) if record.get("restart", 0) == last)
        else:
            last, iteration = state.get("restart", 0), state.get("iteration", 0)
        if last + 1 >= record.num_restarts and iteration >= record.max_iterations:
            return (
                f"the run in {run.path} already reached its limit: checkpoint at iteration {iteration}, "
                f"--max-iterations {record.max_iterations}; nothing to train (raise --max-iterations to continue)"
            )
    elif state.get("step", 0) >= record.max_epochs:
        return (
            f"the run in {run.path} already reached its limit: checkpoint at epoch {state['step']}, "
            f"--epochs {record.max_epochs}; nothing to train (raise --epochs to continue)"
        )
    return None


def cmd_fit(args) -> int:
    family = REGISTRY[args.family]
    _check_minutes("--time-budget", args.time_budget)
    data, splits, how = _data_and_splits(args)
    print(_describe_split(data, splits, how))
    settings = family.settings_from_args(args)
    label = family.label(settings)
    check_spec(family, splits.train, settings)
    _check_fit_memory(family, splits.train, settings, args.method, args.device, what=f"fit {label}")
    model = build_model(family, splits.train, settings)
    description = {**_data_description(args, data, how), "data_fingerprint": _data_fingerprint(args, data)}
    if args.resume:
        run = parallel.open_run(args.out)
        # Every setting and the data are compared before any file of the run is touched.
        run.check_resume(
            {
                **description,
                "family": family.name,
                "class": type(model).__name__,
                "model_config": model.config(),
                "fit": {"method": _method(args, model)},
            }
        )
        reached = _reached_limit(run, _resolved_options(model, _fit_options(args, model)), _method(args, model))
        if reached is not None:
            print(reached)
            return 0
    elif args.force and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        # Replacing a run: the new one is written beside it and swapped in only when complete,
        # so a failed or interrupted fit leaves the old run as it was.
        with parallel.stage_run(args.out, force=True, data_paths=_data_paths(args)) as run:
            args.interrupted_run = run
            summary = train_into(run, model, family, splits, data, args, label, description)
        _print_summary([summary])
        print(f"run directory: {run.path}")
        return 0
    else:
        run = parallel.create_run(args.out, force=args.force, data_paths=_data_paths(args), manifest=True)
    args.interrupted_run = run  # for main's Ctrl-C line
    summary = train_into(run, model, family, splits, data, args, label, description)
    _print_summary(compare_timeseries.display_rows([summary], args.score_from))
    print(f"run directory: {run.path}")
    return 0


#: What a table shows for a part of the split that holds no data (never NaN).
NO_HELD_OUT = "no held-out data"


def _empty_parts(rows: Sequence[dict]) -> list[str]:
    """The held-out parts no row has a score for (e.g. valid and test of --split 1,0,0)."""
    return [part for part in ("valid", "test") if rows and all(f"{part}_log_likelihood" not in row for row in rows)]


def _print_summary(rows: Sequence[dict]) -> None:
    print(f"{'model':<28} {'params':>8} {'seconds':>8} {'train':>9} {'valid':>9} {'test':>9}   (nats per step)")
    for row in rows:
        cells = [
            f"{row[f'{p}_log_likelihood']:9.4f}" if f"{p}_log_likelihood" in row else f"{'—':>9}"
            for p in ("train", "valid", "test")
        ]
        print(f"{row['model']:<28} {row['num_parameters']:>8} {row['seconds']:>8.1f} {' '.join(cells)}")
    empty = _empty_parts(rows)
    if empty:
        print(f"{' and '.join(empty)}: {NO_HELD_OUT} (the split gives {'them' if len(empty) > 1 else 'it'} no steps)")


# -- argument parsing --------------------------------------------------------
def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", help="torch device, e.g. cpu or cuda (default: where the data is, the CPU)")
    # No defaults here: a flag left out keeps the family's recipe (model.fit_defaults(method), what
    # fit(model, train) uses in Python); the numbers in the help are the general defaults.
    group.add_argument("--max-iterations", type=int, help="EM iterations (default: the family's, else 500)")
    group.add_argument("--tolerance", type=float, help="EM convergence: nats per step gained per iteration (1e-8)")
    group.add_argument("--restarts", type=int, help="EM random restarts; the best is kept (1)")
    group.add_argument("--epochs", type=int, help="SVI epochs (default: the family's, else 200)")
    group.add_argument("--lr", type=float, help="SVI learning rate (default: the family's, else 0.05)")
    group.add_argument(
        "--final-lr",
        type=float,
        help="SVI: the learning rate decays exponentially to this at --epochs (default: the family's, else constant)",
    )
    group.add_argument("--warmup-epochs", type=int, help="SVI: epochs of linear learning-rate warm-up (0)")
    group.add_argument(
        "--batch-size", type=int, help="SVI mini-batch size in sequences (default: the family's, else all)"
    )
    group.add_argument(
        "--chunk-length",
        type=int,
        help="SVI: cut one long training sequence into pieces of this many steps "
        "(truncated backpropagation through time; default: the family's, else 2000)",
    )
    group.add_argument(
        "--patience",
        type=int,
        help="SVI: stop after this many validations without a new best; EM: converged after this "
        "many small gains in a row (default: the family's, else 10)",
    )
    group.add_argument(
        "--eval-every", type=int, help="validate every this many epochs or iterations (default: the family's, else 1)"
    )
    group.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; 1 is often fastest "
        "for small recurrent networks on a busy machine)",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--force", action="store_true", help="replace an existing run directory")
