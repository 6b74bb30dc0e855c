"""The ``seqzoo`` command line (also ``python -m zoo``).

Subcommands::

    seqzoo fit FAMILY --data DATA [the family's flags] [--method em|svi] --out DIR
    seqzoo decode DIR --data DATA
    seqzoo score DIR [--score-from history|start]
    seqzoo sample DIR --length N [--prime "ROMEO:" --temperature 0.8]
    seqzoo compare --data DATA --models FAMILY:key=value,... FAMILY:key=value,... --out DIR
    seqzoo diagnose DIR [--data DATA] [--nuts --chains 4 --draws 500 --warmup 500]

This is the only module that parses arguments or prints for a person. It names
no model family: the families register themselves in :data:`zoo.registry.REGISTRY`
(:mod:`zoo.families` imports them all), and every subcommand iterates that table
(``docs/families.md``). ``seqzoo fit --help`` lists the families,
``seqzoo fit FAMILY --help`` a family's flags, whose names are also the keys of
its ``compare`` spec (``--state-dim 2`` -> ``FAMILY:state_dim=2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from inference.checkpoint import CHECKPOINT_NAME
from inference.fit import fit, resolve_options
from inference.memory import check_memory, generic_fit_memory
from inference.rundir import RunDirectory, StagedRunDirectory, fingerprint_file, fingerprint_tensor, interrupted_message
from inference.scoring import ratio_standard_error, score
import zoo.families  # noqa: F401  (registers every family)
from zoo import baselines, compare_timeseries, parallel, plots
from zoo.data import KINDS, SPLIT_METHODS, SequenceData, Splits, Vocabulary, load_data, load_splits, split_data
from zoo.registry import REGISTRY, Decoding, Family, UsageError, family_of

__all__ = ["ModelSpec", "UsageError", "build_model", "check_spec", "build_parser", "load_model", "main", "train_into"]

#: The train, valid, test fractions when the data ships no split and --split is not given.
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


# -- data ------------------------------------------------------------------
def _add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, help="a file (.txt, .csv, .csv.gz, .npz, .json) or builtin:letters|nile|sunspots|sotu")
    parser.add_argument("--kind", choices=list(KINDS), help="how to read the data (default: from the file type; "
                                                            "binary = multi-hot frames, e.g. polyphonic music)")
    parser.add_argument("--first", type=int, metavar="N", help="keep only the first N time steps of each sequence")
    parser.add_argument("--split", help="train,valid,test fractions (default 0.8,0.1,0.1); refused for a file that "
                                        "ships its own split (JSB chorales .json), whose parts are used as they are")
    parser.add_argument("--split-by", choices=list(SPLIT_METHODS), default="shuffle",
                        help="shuffle: whole sequences, shuffled (default; one sequence is cut in time); "
                             "time: hold out the last steps of every sequence")
    parser.add_argument("--time-column", help="CSV: a column of dates/times to drop (a corpus: each document's time)")
    parser.add_argument("--sequence-column", help="CSV: a column of sequence ids, to read many sequences from one file")
    parser.add_argument("--text-column", help="corpus CSV: the column of each document's text (reads kind 'corpus')")
    parser.add_argument("--slice", type=float, dest="slice_width", help="corpus: time slice width (default 10)")
    parser.add_argument("--min-df", type=int, dest="min_document_frequency",
                        help="corpus: keep words in at least this many documents (default 5)")
    parser.add_argument("--max-vocab", type=int, dest="max_vocabulary_size", help="corpus: keep at most this many words")


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--split: expected three comma-separated fractions like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise UsageError(f"--split: expected three nonnegative fractions summing to 1, got {text!r}")
    return parts


def _check_first(args) -> None:
    """``--first 0`` (or less) would silently mean "all the data": refuse it by its flag."""
    first = getattr(args, "first", None)
    if first is not None and first < 1:
        raise UsageError(f"--first: expected a positive number of time steps, got {first}")


def _check_minutes(flag: str, minutes: float | None) -> None:
    """A time budget of 0 or less would silently mean "no budget": refuse it as typed."""
    if minutes is not None and not minutes > 0:
        raise UsageError(f"{flag}: expected a positive number of minutes, got {minutes:g}")


def _data_paths(args) -> list[str]:
    """The data file a run reads (never inside a directory ``--force`` replaces); none for built-in data."""
    return [args.data] if args.data and Path(args.data).is_file() else []


def _data_fingerprint(args, data: SequenceData) -> dict:
    """What ``--resume`` compares: the file's size and hash, or the built-in data's tensors."""
    if Path(args.data).is_file():
        return fingerprint_file(args.data)
    return fingerprint_tensor(data.batch.values, data.batch.lengths)


def _load(args, vocabulary: Vocabulary | None = None) -> SequenceData:
    _check_first(args)
    options: dict[str, Any] = {}
    if args.kind:
        options["kind"] = args.kind
    if vocabulary is not None and not str(args.data).startswith("builtin:"):
        # A built-in text has its own fixed symbols (checked against the run's below).
        options["vocabulary"] = vocabulary
    for option in ("time_column", "sequence_column", "text_column", "slice_width", "min_document_frequency",
                   "max_vocabulary_size"):
        if getattr(args, option, None):
            options[option] = getattr(args, option)
    data = load_data(args.data, **options)
    if vocabulary is not None and data.vocabulary is not None and data.vocabulary.symbols != vocabulary.symbols:
        raise UsageError(f"--data: {args.data} has other symbols than the model's vocabulary.json "
                         f"({len(data.vocabulary.symbols)} vs {len(vocabulary.symbols)})")
    if args.first:
        data = data.head(args.first)
    return data


def _own_splits(args) -> Splits | None:
    """The parts the data file ships (JSB chorales), or None when it ships none."""
    return load_splits(args.data, kind=args.kind, first_n=args.first,
                       time_column=getattr(args, "time_column", None), sequence_column=getattr(args, "sequence_column", None))


def _data_and_splits(args) -> tuple[SequenceData, Splits, dict]:
    """The data, its train/valid/test parts and how they were made (for config.json).

    A file that ships its own split is used as shipped: ``--split`` or
    ``--split-by`` with it is refused rather than silently ignored, since
    published results on such data use exactly those parts.
    """
    _check_first(args)
    own = _own_splits(args)
    if own is not None:
        if args.split is not None or args.split_by != "shuffle":
            raise UsageError(f"--split/--split-by: {args.data} ships its own train/valid/test split; "
                             "drop the option to use the file's parts")
        return own.combined(), own, {"split": "own", "split_by": None}
    fractions = _parse_split(args.split) if args.split is not None else DEFAULT_SPLIT
    data = _load(args)
    splits = split_data(data, fractions, seed=args.seed, by=args.split_by)
    return data, splits, {"split": list(fractions), "split_by": args.split_by}


def _describe_split(data: SequenceData, splits: Splits, how: dict) -> str:
    """One line for a person: which split, and how big each part is."""
    parts = [part for part in splits]
    sizes = "/".join(str(part.num_sequences) if part is not None else "0" for part in parts)
    steps = "/".join(str(part.num_steps) if part is not None else "0" for part in parts)
    if how["split"] == "own":
        return f"split: the data set's own train/valid/test parts ({sizes} sequences, {steps} steps)"
    fractions = "/".join(f"{f:g}" for f in how["split"])
    if how["split_by"] == "time":
        method = "the last steps of every sequence held out"
    else:
        method = "one sequence cut in time" if data.num_sequences == 1 else "shuffled whole sequences"
    return f"split: {fractions}, {method} ({sizes} sequences, {steps} steps)"


# -- models ----------------------------------------------------------------
@dataclass
class ModelSpec:
    """A model named on the command line: ``FAMILY:key=value,...`` (the keys are the family's fit flags)."""

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
            key = key.strip().replace("-", "_")
            if key in settings:
                raise UsageError(f"model spec {text!r}: {key} is given twice ({key}={settings[key]}, {key}={value.strip()}); "
                                 "give each setting once")
            settings[key] = value.strip()
        if family not in REGISTRY:
            raise UsageError(f"model spec {text!r}: unknown model {family!r}; available: {', '.join(REGISTRY)}")
        return cls(family, settings)

    @property
    def label(self) -> str:
        return self.family + "".join(f"-{k}{v}" for k, v in self.settings.items())


#: Training settings any model spec may carry (``FAMILY:...,lr=0.002,batch_size=32``) -> type.
FIT_SETTINGS = {"lr": float, "final_lr": float, "warmup_epochs": int, "batch_size": int, "chunk_length": int,
                "epochs": int, "patience": int, "eval_every": int, "method": str}


def check_spec(family: Family, data: SequenceData, settings: dict[str, str]) -> None:
    """The one check of a model's settings, for ``fit`` and ``compare`` alike: the family
    must model the data's kind and every setting must be one of its flags."""
    family.check_data_kind(data)
    allowed = family.settings_names()
    unknown = set(settings) - set(allowed)
    if unknown:
        raise UsageError(f"{family.name}: unknown settings {sorted(unknown)}; allowed: {sorted(allowed)} "
                         f"(and the training settings {sorted(FIT_SETTINGS)})")


class _SpecArgumentParser(argparse.ArgumentParser):
    """Parses a compare spec's settings as the family's fit flags; errors are UsageErrors."""

    def error(self, message: str):
        raise UsageError(message)


def spec_settings(spec: "ModelSpec", data: SequenceData) -> tuple[dict[str, str], dict[str, Any]]:
    """A compare spec's model settings, read exactly as ``seqzoo fit FAMILY`` reads its flags
    (required flags, choices and types are argparse's, so ``hmm`` without ``states`` is refused
    as ``fit hmm`` without ``--states`` is), and its training settings."""
    family = REGISTRY[spec.family]
    model_settings, fit_settings = _split_spec_settings(spec)
    check_spec(family, data, model_settings)
    parser = _SpecArgumentParser(prog=f"compare {spec.family}", add_help=False)
    family.add_arguments(parser.add_argument_group(spec.family))
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    argv: list[str] = []
    for key, value in model_settings.items():
        action = actions[key]
        if action.nargs == 0:  # a switch: key=true sets it
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise UsageError(f"{spec.label}: setting {key}={value!r}: expected true or false")
            argv += [action.option_strings[0]] if value.lower() in ("1", "true", "yes") else []
        else:
            argv += [action.option_strings[0], value]
    try:
        namespace = parser.parse_args(argv)
    except UsageError as error:
        hint = (f" (as `seqzoo fit {spec.family}` requires them; a spec names --state-dim as state_dim=...)"
                if "required" in str(error) else "")
        given = ",".join(f"{k}={v}" for k, v in spec.settings.items())
        raise UsageError(f"model spec {spec.family + (':' + given if given else '')!r}: {error}{hint}") from None
    return family.settings_from_args(namespace), fit_settings


def build_model(family: Family, data: SequenceData, settings: dict[str, str]):
    """The one way both ``fit`` and ``compare`` build a model: :func:`check_spec`, then ``family.build``."""
    check_spec(family, data, settings)
    return family.build(data, settings)


def _config_from_json(config: dict) -> dict:
    """Constructor keyword arguments from ``model.json``: fixed matrices saved as nested lists become tensors."""
    fixed = config.get("fixed")
    if isinstance(fixed, dict):
        config = {**config, "fixed": {name: torch.as_tensor(value, dtype=torch.get_default_dtype()) if not isinstance(value, torch.Tensor) else value
                                      for name, value in fixed.items()}}
    return config


def _model_classes() -> dict[str, type]:
    """Every model class a run directory may name: those of the registered families.
    Loading looks the class up here and nowhere else, so a run directory can never
    make us import arbitrary code."""
    return {cls.__name__: cls for family in REGISTRY.values() for cls in family.model_classes}


def load_model(run: RunDirectory):
    """Rebuilds the model saved in a run directory (weights via safetensors)."""
    description = run.read_json("model.json")
    expected = "{\"class\": ..., \"config\": {...}} as seqzoo writes it"
    if not isinstance(description, dict) or not isinstance(description.get("config"), dict):
        raise UsageError(f"{run.file('model.json')}: not a model description (run {str(run.path)!r}; expected {expected})")
    classes = _model_classes()
    cls = classes.get(str(description.get("class", "")).rsplit(".", 1)[-1])
    if cls is None:
        raise UsageError(f"{run.file('model.json')}: unknown model class {description.get('class')!r}; known: {', '.join(classes)}")
    try:
        model = cls(**_config_from_json(description["config"]))
    except (TypeError, ValueError, RuntimeError) as error:
        # Settings edited by hand or from another version: name the file, not the constructor's internals.
        raise UsageError(f"{run.file('model.json')}: its settings do not make a {cls.__name__} ({error}); "
                         f"the file is damaged or from another seqzoo version (run {str(run.path)!r})") from None
    tensors, _ = run.load_tensors("model")
    first = next(iter(tensors.values()), None)
    if first is not None and first.is_floating_point():
        model = model.to(dtype=first.dtype)  # a model fitted in float64 reloads in float64
    run.load_state_dict_into(model)
    return model.eval()


def _check_fit_memory(family: Family, train: SequenceData, settings: dict[str, str], method: str | None,
                      device: str | None, what: str) -> None:
    """Refuses a fit whose estimated peak memory exceeds what is free, BEFORE its
    parameters are allocated (the family's ``memory_estimate``), or, for a family
    without one, from the built model's parameter count (``generic_fit_memory``)."""
    batch = train.batch
    if family.memory_estimate is not None:
        estimate = family.memory_estimate(train, settings, method or "em")
    else:
        model = family.build(train, settings)
        estimate = generic_fit_memory(int(model.num_parameters), batch_sequences=max(1, batch.num_sequences),
                                      batch_steps=int(batch.values.shape[1]), description=f"a {type(model).__name__}")
        del model
    check_memory(estimate, device=device or "cpu", what=what,
                 hint="choose a smaller model, or fewer or shorter sequences (--first)")


# -- training one model into a run directory ---------------------------------
#: ``seqzoo fit`` training flags (their destinations) -> the options field each sets, per method.
#: A flag the user leaves out sets nothing: the field keeps the family's recipe
#: (``model.fit_defaults(method)``), so ``seqzoo fit FAMILY`` trains as ``fit(model, train)`` does.
_FIT_FLAGS = {
    "svi": {"epochs": "max_epochs", "lr": "learning_rate", "final_lr": "final_learning_rate",
            "warmup_epochs": "warmup_epochs", "batch_size": "batch_size", "chunk_length": "chunk_length",
            "patience": "patience", "eval_every": "eval_every"},
    "em": {"max_iterations": "max_iterations", "tolerance": "tolerance", "restarts": "num_restarts",
           "patience": "patience", "eval_every": "eval_every"},
}


def _fit_options(args, model) -> dict[str, Any]:
    """The keywords of :func:`inference.fit.fit` this command passes: the run's own (method,
    seed, device, progress, time budget) and the training flags the user gave, nothing else."""
    method = _method(args, model)
    options = dict(method=method, seed=args.seed, progress=not args.no_progress, device=args.device,
                   time_budget=args.time_budget * 60 if getattr(args, "time_budget", None) else None)
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


def train_into(run: RunDirectory, model, family: Family, splits: Splits, data: SequenceData, args, label: str,
               description: dict) -> dict:
    """Fits ``model`` (of ``family``) on the train split, scores every split, writes the run directory."""
    train, valid, test = splits.train, splits.valid, splits.test
    options = _fit_options(args, model)
    # A series split in time: held-out parts (and early stopping) scored given their history.
    timeline = compare_timeseries.timeline(data, splits, description) if getattr(args, "score_from", "history") == "history" else None
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    train_batch = train.batch  # fit cuts one long sequence into chunk_length pieces (SVI)
    device = parallel.device_for(args.device, train_batch.device)  # under torchrun with NCCL: cuda:LOCAL_RANK
    model.to(device)
    run.write_json("config.json", {**description, "family": family.name, "model": label, "model_config": model.config(),
                                   "fit": _fit_record(model, options),
                                   "device": str(device)})
    if data.vocabulary is not None:
        run.write_json("vocabulary.json", json.loads(data.vocabulary.to_json()))
    started = time.perf_counter()
    has_valid = valid is not None and valid.batch.num_steps > 0
    result = (parallel.fit if parallel.current() else fit)(model, train_batch.to(device), valid=valid.batch.to(device) if has_valid else None,
                 checkpoint=run, resume=getattr(args, "resume", False),
                 description=getattr(args, "progress_label", None) or label, **options,
                 **compare_timeseries.validation_options(timeline, options["method"], has_valid))
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
                summary[f"{name}_stderr"] = _block_stderr(lambda b: _per_step_log_probs(family, model, b), part.batch.to(device))
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


# -- subcommands -------------------------------------------------------------
def _data_description(args, data: SequenceData, how: dict) -> dict:
    description = {"data": args.data, "kind": data.kind, "first": args.first, **how, "seed": args.seed,
                   "time_column": args.time_column, "sequence_column": args.sequence_column}
    if data.kind == "corpus":
        description.update({option: getattr(args, option, None) for option in (
            "text_column", "slice_width", "min_document_frequency", "max_vocabulary_size")})
    return description


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
            return (f"the run in {run.path} already reached its limit: checkpoint at iteration {iteration}, "
                    f"--max-iterations {record.max_iterations}; nothing to train (raise --max-iterations to continue)")
    elif state.get("step", 0) >= record.max_epochs:
        return (f"the run in {run.path} already reached its limit: checkpoint at epoch {state['step']}, "
                f"--epochs {record.max_epochs}; nothing to train (raise --epochs to continue)")
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
        run.check_resume({**description, "family": family.name, "class": type(model).__name__,
                          "model_config": model.config(), "fit": {"method": _method(args, model)}})
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


def cmd_compare(args) -> int:
    specs = [ModelSpec.parse(text) for text in args.models]
    _check_minutes("--budget-minutes", args.budget_minutes)
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UsageError(f"--models: {', '.join(repeated)} given more than once; each model needs its own settings "
                         "(it is written to OUT/<its name>)")
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
        _check_fit_memory(family, splits.train, model_settings, fit_settings.get("method", args.method), args.device,
                          what=f"compare {spec.label}")
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
        print(f"[{index + 1}/{len(specs)}] training {label}{_time_left(args.budget_minutes, len(specs) - index, started)}",
              file=sys.stderr)
        run = parallel.create_run(root.path / label, manifest=True)  # inside the fresh root: always new
        args.interrupted_run = root  # for main's Ctrl-C line
        summary = train_into(run, model, family, splits, data, model_args, label, description)
        curves[label] = summary["history"]
        rows.append({k: v for k, v in summary.items() if k != "history"})
        rows[-1].update(compare_timeseries.forecast_columns(model, timeline, args, data.kind))
        rows[-1].update(compare_timeseries.lfo_columns(model, family, timeline, args,
                                                       refit=_refitter(family, model_settings, model_args, splits)))
        fans[label] = compare_timeseries.fan_forecast(model, timeline, args)
        temperatures[label] = SAMPLE_TEMPERATURE if _sampler_takes(model, "temperature") else 1.0
        samples[label] = _sample_text(model, data, length=200, seed=args.seed, temperature=temperatures[label])
        exports[label] = _guide_export(model, splits.train.batch)
    print(f"compared {len(specs)} model(s) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    comparison = {"data": args.data, **how, "split_description": _describe_split(data, splits, how), "unit": "nats per time step",
                  "stderr": "over held-out sequences, or over 20 contiguous blocks of a single held-out sequence",
                  "sample_temperature": temperatures, "models": rows, "samples": samples,
                  "score_from": args.score_from if timeline is not None else "start",
                  "score_note": compare_timeseries.score_from_note(args.score_from, timeline, rows)}
    markdown = _comparison_markdown({**comparison, "models": compare_timeseries.display_rows(rows, args.score_from)}, data)
    markdown += compare_timeseries.forecast_markdown(rows)
    if compare_timeseries.write_forecast_fan(root, fans, timeline, args.data):
        markdown += "\nForecast fans of every model from the start of the held-out part: forecast_fan.png\n"
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
    if any(record.get("valid_log_prob_per_step") is not None for history in curves.values() for record in history):
        # Without a validation part (--split 1,0,0) there is no curve to draw.
        root.save_figure("learning_curves.png", plots.learning_curves(curves, title=f"{args.data}: validation log-likelihood"))
    _print_summary(compare_timeseries.display_rows(rows, args.score_from))
    print(comparison["score_note"])
    print(f"comparison: {root.file('comparison.md')}")
    return 0


def _sampler_takes(model, option: str) -> bool:
    """Whether the family declares that ``sample`` takes ``option`` (``temperature``, ``prime``)."""
    return model.supports(f"sample_{option}")


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
        row.update(compare_timeseries.baseline_held_out_scores(
            lambda b, name=name: _baseline_per_step(name, unigram, initial, transition, b), timeline))
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
    note = ("Column 'likelihood' says what each score is. Lower bounds on the log-likelihood, not its exact value: "
            + "; ".join(f"{model} ({kind})" for model, kind in bounds.items())
            + ". A bound understates its model: a bound that beats an exact score wins by at least the gap, "
              "one that falls short may not truly lose.")
    return note + (f" Exact: {', '.join(exact)}." if exact else "")


def _comparison_markdown(comparison: dict, data: SequenceData) -> str:
    symbols = data.kind == "categorical"
    held = f" ({compare_timeseries.LABEL_GIVEN_HISTORY})" if comparison.get("score_from") == "history" else ""
    header = (f"| model | likelihood | parameters | seconds | train | valid{held} | test{held} |"
              + (" test bits/symbol |" if symbols else ""))
    lines = [f"# Comparison on {comparison['data']}", ""]
    if comparison.get("split_description"):
        lines += [comparison["split_description"][0].upper() + comparison["split_description"][1:] + ".", ""]
    lines += ["Held-out log-likelihood in nats per time step (higher is better), ± one standard error over held-out "
              "sequences, or over 20 contiguous blocks of a single held-out sequence. "
              + (comparison["score_note"] + " " if comparison.get("score_note") else "")
              + _likelihood_note(comparison["models"]) + " Bits per symbol = -nats / ln 2.", "",
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
    empty = _empty_parts(comparison["models"])
    if empty:
        lines += ["", f"{' and '.join(empty).capitalize()}: {NO_HELD_OUT} (the split gives {'them' if len(empty) > 1 else 'it'} no steps)."]
    if any(text is not None for text in comparison.get("samples", {}).values()):
        temperatures = comparison.get("sample_temperature", {})
        cooled = [name for name, temperature in temperatures.items() if temperature != 1.0]
        lines += ["", f"## Samples (at temperature {SAMPLE_TEMPERATURE}: {', '.join(cooled)}; others at temperature 1)"
                  if cooled else "## Samples (at temperature 1)", ""]
        for name, text in comparison["samples"].items():
            if text is not None:
                lines += [f"**{name}**", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


#: What a table shows for a part of the split that holds no data (never NaN).
NO_HELD_OUT = "no held-out data"


def _empty_parts(rows: Sequence[dict]) -> list[str]:
    """The held-out parts no row has a score for (e.g. valid and test of --split 1,0,0)."""
    return [part for part in ("valid", "test") if rows and all(f"{part}_log_likelihood" not in row for row in rows)]


def _print_summary(rows: Sequence[dict]) -> None:
    print(f"{'model':<28} {'params':>8} {'seconds':>8} {'train':>9} {'valid':>9} {'test':>9}   (nats per step)")
    for row in rows:
        cells = [f"{row[f'{p}_log_likelihood']:9.4f}" if f"{p}_log_likelihood" in row else f"{'—':>9}"
                 for p in ("train", "valid", "test")]
        print(f"{row['model']:<28} {row['num_parameters']:>8} {row['seconds']:>8.1f} {' '.join(cells)}")
    empty = _empty_parts(rows)
    if empty:
        print(f"{' and '.join(empty)}: {NO_HELD_OUT} (the split gives {'them' if len(empty) > 1 else 'it'} no steps)")


def _reuse_run_data_options(run: RunDirectory, config: dict, args) -> tuple[Vocabulary | None, bool]:
    """Fills ``args``' data options a fitted run recorded (data, kind, columns, first steps) when
    the command reads the run's own data, and returns the run's vocabulary (or ``None``) and
    whether the data is the run's own."""
    vocabulary = Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    same_data = args.data is None or args.data == config["data"]
    args.data = args.data or config["data"]
    args.kind = args.kind or config.get("kind")
    for option in ("time_column", "sequence_column"):
        if getattr(args, option) is None and same_data:
            setattr(args, option, config.get(option))
    if same_data and args.first is None:
        args.first = config.get("first")  # the steps the model was fitted on, e.g. of a built-in text
    return vocabulary, same_data


def cmd_decode(args) -> int:
    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    model = load_model(run)
    family = family_of(model)
    if family is None or family.decode is None:
        decoders = ", ".join(name for name, entry in REGISTRY.items() if entry.decode is not None)
        raise UsageError(f"decode: {type(model).__name__} has no discrete states to decode (families that decode: {decoders})")
    vocabulary, _ = _reuse_run_data_options(run, config, args)
    data = _load(args, vocabulary=vocabulary)
    device = next(model.parameters()).device
    batch = data.batch.to(device)
    with torch.no_grad():
        decoding = family.decode(model, batch)
    out = Path(args.output) if args.output else run.file("decoded.csv")
    if not isinstance(decoding, Decoding) or (decoding.paths is None and not decoding.values):
        raise TypeError(f"{family.name}: its decode returned {type(decoding).__name__}, expected a "
                        f"zoo.registry.Decoding with a path or values")
    paths = decoding.paths.cpu() if decoding.paths is not None else None
    # name -> (N, T, K) per-step values, one column per entry.
    arrays = {name: value.detach().reshape(value.shape[0], value.shape[1], -1).cpu()
              for name, value in decoding.values.items()}
    columns = (["state"] if paths is not None else []) + [f"{name}_{k}" for name, value in arrays.items()
                                                           for k in range(value.shape[-1])]
    lines = ["sequence,time," + ",".join(columns)]
    for n, length in enumerate(batch.lengths.tolist()):
        for t in range(length):
            cells = [str(int(paths[n, t]))] if paths is not None else []
            cells += [f"{v:.6g}" for value in arrays.values() for v in value[n, t].tolist()]
            lines.append(f"{n},{t}," + ",".join(cells))
    _write_text_atomic(out, "\n".join(lines) + "\n", force=args.force)
    print(f"decoded {batch.num_steps} steps of {batch.num_sequences} sequence(s) into {out} "
          f"(columns: {', '.join((['state'] if paths is not None else []) + [f'{name}_0..{value.shape[-1] - 1}' for name, value in arrays.items()])})")
    if paths is not None:
        counts = torch.bincount(paths[paths >= 0], minlength=decoding.num_states)
        print("state occupancy: " + ", ".join(f"{k}: {int(c)}" for k, c in enumerate(counts)))
    return 0


def cmd_sample(args) -> int:
    run = RunDirectory.open(args.run)
    model = load_model(run)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    vocabulary = Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    options: dict[str, Any] = {}
    for option in ("temperature", "prime"):
        if getattr(args, option) is not None and not _sampler_takes(model, option):
            takers = [f"{name} ({entry.help})" for name, entry in REGISTRY.items()
                      if any(_sampler_takes(cls, option) for cls in entry.model_classes)]
            raise UsageError(f"--{option}: needs a model whose sampler takes it ({', '.join(takers) or 'none registered'}); "
                             f"{run.path} holds a {type(model).__name__}")
    if args.temperature is not None or args.prime is not None:
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
    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    model = load_model(run)
    vocabulary, same_data = _reuse_run_data_options(run, config, args)
    if same_data:
        # The posterior is of the data the model was fitted to: the same training split.
        if config.get("split") == "own":
            part = _own_splits(args).train
        else:
            part = split_data(_load(args, vocabulary=vocabulary), tuple(config.get("split", DEFAULT_SPLIT)),
                              seed=config.get("seed", 0), by=config.get("split_by") or "shuffle").train
        where = f"the training split of {args.data}"
    else:
        part, where = _load(args, vocabulary=vocabulary), f"all of {args.data}"
    # The new diagnostics are written beside the old ones and swapped in only when complete:
    # a failed or interrupted diagnosis leaves RUN/diagnostics as it was.
    with RunDirectory.stage(run.path / "diagnostics", force=args.force) as out:
        args.interrupted_diagnosis = out.target
        return _diagnose_into(out, run, model, config, part, where, args)


def _chain_line(num_chains: int, draws: int):
    """Without a progress bar, one line per NUTS chain as it ends (in chain order)."""
    def report(record: dict) -> None:
        print(f"chain {record['chain'] + 1}/{num_chains}: {draws} draws in {record['seconds']:.1f} s, "
              f"{record['divergences']} divergences, acceptance {record['mean_acceptance_rate']:.2f}, "
              f"mean tree depth {record['mean_tree_depth']:.1f}", file=sys.stderr, flush=True)
    return report


def _diagnose_into(out: RunDirectory, run: RunDirectory, model, config: dict, part: SequenceData, where: str, args) -> int:
    from inference.arviz import guide_is_point_mass, to_inference_data
    from zoo import diagnostics

    batch = part.batch.to(next(model.parameters()).device)
    label = config.get("model", type(model).__name__)
    if args.nuts:
        if args.no_progress:
            from inference.mcmc import default_num_workers

            workers = min(args.workers or default_num_workers(args.chains, batch.device), args.chains)
            print(f"NUTS: {args.chains} chain(s) of {args.warmup} warm-up + {args.draws} draws, "
                  + ("one after another" if workers == 1 else f"{workers} at a time in worker processes"),
                  file=sys.stderr, flush=True)
        result = fit(model, batch, method="nuts", num_samples=args.draws, warmup_steps=args.warmup,
                     num_chains=args.chains, seed=args.seed, progress=not args.no_progress, initialize=False,
                     max_tree_depth=args.max_tree_depth, description=f"{label} nuts", num_workers=args.workers,
                     callbacks=[_chain_line(args.chains, args.draws)] if args.no_progress else [])
        posterior = result
    elif not guide_is_point_mass(model, batch):
        posterior = "guide"
    else:
        posterior = "point"
    idata = to_inference_data(model, batch, posterior, num_draws=args.guide_draws,
                              num_predictive_draws=args.predictive_draws, seed=args.seed)
    report = diagnostics.write_diagnostics(out, model, idata, title=label, num_symbols=model.num_symbols)
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
    print(f"diagnostics: {out.target}")
    return 0


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
    group.add_argument("--final-lr", type=float,
                       help="SVI: the learning rate decays exponentially to this at --epochs (default: the "
                            "family's, else constant)")
    group.add_argument("--warmup-epochs", type=int, help="SVI: epochs of linear learning-rate warm-up (0)")
    group.add_argument("--batch-size", type=int, help="SVI mini-batch size in sequences (default: the family's, else all)")
    group.add_argument("--chunk-length", type=int,
                       help="SVI: cut one long training sequence into pieces of this many steps "
                            "(truncated backpropagation through time; default: the family's, else 2000)")
    group.add_argument("--patience", type=int,
                       help="SVI: stop after this many validations without a new best; EM: converged after this "
                            "many small gains in a row (default: the family's, else 10)")
    group.add_argument("--eval-every", type=int, help="validate every this many epochs or iterations (default: the "
                                                      "family's, else 1)")
    group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                                                   "for small recurrent networks on a busy machine)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--force", action="store_true", help="replace an existing run directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqzoo", description="Fit, compare, decode and sample latent-state sequence models.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit_parser = sub.add_parser("fit", help="fit one model into a run directory")
    families = fit_parser.add_subparsers(dest="family", required=True, metavar="FAMILY", help=", ".join(REGISTRY))
    for name, family in REGISTRY.items():
        # Each family owns its flags, so argparse names the flag that is missing or wrong for that family.
        family_parser = families.add_parser(name, help=family.help)
        _add_data_arguments(family_parser)
        family.add_arguments(family_parser.add_argument_group(f"{name} model"))
        family_parser.add_argument("--method", choices=["em", "svi"], help="default: em where the model has it")
        family_parser.add_argument("--out", required=True, help="run directory to create")
        family_parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
        family_parser.add_argument("--time-budget", type=float, metavar="MINUTES")
        compare_timeseries.add_arguments(family_parser, compare=False)
        _add_training_arguments(family_parser)
        family_parser.set_defaults(handler=cmd_fit)

    compare_parser = sub.add_parser("compare", help="fit several models on one split and compare held-out likelihoods")
    _add_data_arguments(compare_parser)
    compare_parser.add_argument("--models", nargs="+", required=True, metavar="SPEC", help="FAMILY:key=value,... with FAMILY one of " + ", ".join(REGISTRY) + " and the keys its "
                                     "`seqzoo fit FAMILY` flags without dashes (--state-dim 2 -> state_dim=2); the training "
                                     "settings lr, batch_size, chunk_length, epochs, method may be given per model")
    compare_parser.add_argument("--out", required=True)
    compare_parser.add_argument("--budget-minutes", type=float, help="training time budget per model")
    compare_timeseries.add_arguments(compare_parser, compare=True)
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
    diagnose_parser.add_argument("--workers", type=int, default=None,
                                 help="NUTS chains run at once, in this many processes (default: chains, at most the cores; 1 = one after another)")
    diagnose_parser.add_argument("--guide-draws", type=int, default=500, help="draws from a variational guide (default 500)")
    diagnose_parser.add_argument("--predictive-draws", type=int, default=100, help="replicated data sets for the PPC (default 100)")
    diagnose_parser.add_argument("--seed", type=int, default=0)
    diagnose_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    diagnose_parser.add_argument("--force", action="store_true", help="replace RUN/diagnostics if it exists")
    diagnose_parser.set_defaults(handler=cmd_diagnose)

    compare_timeseries.add_score_command(sub, _add_data_arguments)

    sample_parser = sub.add_parser("sample", help="synthesise sequences from a fitted model")
    sample_parser.add_argument("run", help="run directory of a fitted model")
    sample_parser.add_argument("--length", type=int, required=True)
    sample_parser.add_argument("--num-sequences", type=int, default=1)
    sample_parser.add_argument("--seed", type=int, default=0)
    sample_parser.add_argument("--prime", help="recurrent networks: text the samples continue (printed before them)")
    sample_parser.add_argument("--temperature", type=float, help="recurrent networks: q_i ∝ exp(z_i / T); 0 = greedy (default 1)")
    sample_parser.set_defaults(handler=cmd_sample)
    return parser


#: The exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130


def _interrupted_line(args, argv: Sequence[str]) -> str:
    """What to say on Ctrl-C: where the last checkpoint is and how to continue."""
    run = getattr(args, "interrupted_run", None)
    if args.command == "fit" and isinstance(run, StagedRunDirectory) and run.state != "committed":
        return f"interrupted; the run in {run.target} is left as it was (the replacement was discarded)"
    if args.command == "fit" and run is not None:
        return interrupted_message(run, ["seqzoo", *argv], checkpoint_name=CHECKPOINT_NAME)
    if args.command == "compare" and run is not None:
        return f"interrupted; the comparison in {run.path} is incomplete (the models trained so far are in it)"
    if args.command == "diagnose" and getattr(args, "interrupted_diagnosis", None) is not None:
        return f"interrupted; {args.interrupted_diagnosis} is left as it was"
    return "interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        # Under `torchrun --nproc-per-node N`, fit and compare run data-parallel (zoo/parallel.py).
        with parallel.session(args.command, getattr(args, "device", None)):
            return args.handler(args)
    except KeyboardInterrupt:
        print(f"seqzoo {args.command}: {_interrupted_line(args, argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"seqzoo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
