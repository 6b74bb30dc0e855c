"""The data flags of every subcommand (``--data``, ``--kind``, ``--split`` ...) and what they
load: a user's file or a built-in set, split into train/valid/test, described for the report;
and the data options a run directory recorded, for the commands that reopen it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from inference.rundir import RunDirectory, fingerprint_file, fingerprint_tensor
from zoo.data import KINDS, SPLIT_METHODS, SequenceData, Splits, Vocabulary, load_data, load_splits, split_data
from zoo.registry import UsageError

#: The train, valid, test fractions when the data ships no split and --split is not given.
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


# -- data ------------------------------------------------------------------
def _add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        required=required,
        help="a file (.txt, .csv, .csv.gz, .npz, .json) or builtin:letters|nile|sunspots|sotu",
    )
    parser.add_argument(
        "--kind",
        choices=list(KINDS),
        help="how to read the data (default: from the file type; binary = multi-hot frames, e.g. polyphonic music)",
    )
    parser.add_argument("--first", type=int, metavar="N", help="keep only the first N time steps of each sequence")
    parser.add_argument(
        "--split",
        help="train,valid,test fractions (default 0.8,0.1,0.1); refused for a file that "
        "ships its own split (JSB chorales .json), whose parts are used as they are",
    )
    parser.add_argument(
        "--split-by",
        choices=list(SPLIT_METHODS),
        default="shuffle",
        help="shuffle: whole sequences, shuffled (default; one sequence is cut in time); "
        "time: hold out the last steps of every sequence",
    )
    parser.add_argument("--time-column", help="CSV: a column of dates/times to drop (a corpus: each document's time)")
    parser.add_argument("--sequence-column", help="CSV: a column of sequence ids, to read many sequences from one file")
    parser.add_argument("--text-column", help="corpus CSV: the column of each document's text (reads kind 'corpus')")
    parser.add_argument("--slice", type=float, dest="slice_width", help="corpus: time slice width (default 10)")
    parser.add_argument(
        "--min-df",
        type=int,
        dest="min_document_frequency",
        help="corpus: keep words in at least this many documents (default 5)",
    )
    parser.add_argument(
        "--max-vocab", type=int, dest="max_vocabulary_size", help="corpus: keep at most this many words"
    )


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
    for option in (
        "time_column",
        "sequence_column",
        "text_column",
        "slice_width",
        "min_document_frequency",
        "max_vocabulary_size",
    ):
        if getattr(args, option, None):
            options[option] = getattr(args, option)
    data = load_data(args.data, **options)
    if vocabulary is not None and data.vocabulary is not None and data.vocabulary.symbols != vocabulary.symbols:
        raise UsageError(
            f"--data: {args.data} has other symbols than the model's vocabulary.json "
            f"({len(data.vocabulary.symbols)} vs {len(vocabulary.symbols)})"
        )
    if args.first:
        data = data.head(args.first)
    return data


def _own_splits(args) -> Splits | None:
    """The parts the data file ships (JSB chorales), or None when it ships none."""
    return load_splits(
        args.data,
        kind=args.kind,
        first_n=args.first,
        time_column=getattr(args, "time_column", None),
        sequence_column=getattr(args, "sequence_column", None),
    )


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
            raise UsageError(
                f"--split/--split-by: {args.data} ships its own train/valid/test split; "
                "drop the option to use the file's parts"
            )
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


# -- subcommands -------------------------------------------------------------
def _data_description(args, data: SequenceData, how: dict) -> dict:
    description = {
        "data": args.data,
        "kind": data.kind,
        "first": args.first,
        **how,
        "seed": args.seed,
        "time_column": args.time_column,
        "sequence_column": args.sequence_column,
    }
    if data.kind == "corpus":
        description.update(
            {
                option: getattr(args, option, None)
                for option in ("text_column", "slice_width", "min_document_frequency", "max_vocabulary_size")
            }
        )
    return description


def _reuse_run_data_options(run: RunDirectory, config: dict, args) -> tuple[Vocabulary | None, bool]:
    """Fills ``args``' data options a fitted run recorded (data, kind, columns, first steps) when
    the command reads the run's own data, and returns the run's vocabulary (or ``None``) and
    whether the data is the run's own."""
    vocabulary = (
        Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
    )
    same_data = args.data is None or args.data == config["data"]
    args.data = args.data or config["data"]
    args.kind = args.kind or config.get("kind")
    for option in ("time_column", "sequence_column"):
        if getattr(args, option) is None and same_data:
            setattr(args, option, config.get(option))
    if same_data and args.first is None:
        args.first = config.get("first")  # the steps the model was fitted on, e.g. of a built-in text
    return vocabulary, same_data
