"""``seqzoo score RUN``: a fitted run's parts re-scored, the held-out parts of a series split in
time given the steps before them unless ``--score-from start``."""

from __future__ import annotations

import argparse
from typing import Any

from inference.rundir import RunDirectory
from inference.scoring import score
from zoo.compare_timeseries import (
    LABEL_FROM_START,
    LABEL_GIVEN_HISTORY,
    SCORE_FROM,
    conditional_score,
    score_from_note,
    timeline,
)
from zoo.data import Vocabulary, split_data
from zoo.registry import UsageError, family_of

from .data_args import DEFAULT_SPLIT, _add_data_arguments, _load, _own_splits
from .specs import load_model


def add_score_command(subparsers) -> None:
    """Registers ``seqzoo score RUN``: a fitted run's parts re-scored, by default given
    their history (the handler is :func:`cmd_score`)."""
    parser = subparsers.add_parser("score", help="held-out scores of a fitted run (given their history by default)")
    parser.add_argument("run", help="run directory of a fitted model")
    _add_data_arguments(parser, required=False)
    parser.add_argument(
        "--score-from",
        choices=list(SCORE_FROM),
        default="history",
        help="history (default): parts of a series split in time scored given the steps before them; "
        "start: from the initial state",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a stochastic bound's samples")
    parser.set_defaults(handler=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    """``seqzoo score RUN``: re-splits the run's data as its config.json records and
    prints (and writes ``RUN/score.json``) every part's nats per step, the held-out
    parts of a split in time given their history unless ``--score-from start``."""
    run = RunDirectory.open(args.run)
    config = run.read_json("config.json")
    if args.data is not None and args.data != config["data"]:
        raise UsageError("--data: score re-splits the data the run was fitted on; give no --data or the run's own")
    for option in ("data", "kind", "first", "time_column", "sequence_column"):
        if getattr(args, option, None) is None:
            setattr(args, option, config.get(option))
    model = load_model(run)
    family = family_of(model)
    how = {"split": config.get("split", list(DEFAULT_SPLIT)), "split_by": config.get("split_by") or "shuffle"}
    if how["split"] == "own":
        splits = _own_splits(args)
        data = splits.combined()
    else:
        vocabulary = (
            Vocabulary.from_json(run.read_json("vocabulary.json")) if run.file("vocabulary.json").exists() else None
        )
        data = _load(args, vocabulary=vocabulary)
        splits = split_data(data, tuple(how["split"]), seed=config.get("seed", 0), by=how["split_by"])
    in_time = timeline(data, splits, how)
    line = in_time if args.score_from == "history" else None
    device = next(model.parameters()).device
    result: dict[str, Any] = {
        "run": str(run.path),
        "score_from": "history" if line is not None else "start",
        "unit": "nats per time step",
        "note": score_from_note(args.score_from, in_time),
    }
    for name, part in zip(("train", "valid", "test"), splits):
        if part is None or not part.batch.num_steps:
            continue
        dtype = next(model.parameters()).dtype
        batch = part.batch.to(device, dtype=dtype) if part.batch.values.is_floating_point() else part.batch.to(device)
        if line is not None and name != "train":
            history, future = line.history_and_future(name)
            if history.values.is_floating_point():
                history, future = history.to(dtype=dtype), future.to(dtype=dtype)
            scored = conditional_score(model, history, future, seed=args.seed, per_step=family.per_step_log_probs)
        else:
            scored = score(model, batch, seed=args.seed)
        result[name] = {
            "log_likelihood": scored.per_step,
            "stderr": scored.stderr,
            "steps": scored.num_steps,
            "kind": scored.kind,
            "given_history": line is not None and name != "train",
        }
    run.write_json("score.json", result)
    for name in ("train", "valid", "test"):
        if name in result:
            entry = result[name]
            label = LABEL_GIVEN_HISTORY if entry["given_history"] else LABEL_FROM_START
            stderr = f" ± {entry['stderr']:.4f}" if entry["stderr"] else ""
            print(f"{name:<6} {entry['log_likelihood']:.4f}{stderr} {label} ({entry['steps']} steps, {entry['kind']})")
    print(result["note"])
    return 0
