"""The ``seqzoo`` argument parser and :func:`main`: every subcommand's flags, and the exit
codes (2 for a usage error, 130 after Ctrl-C with a line saying what was kept)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inference.checkpoint import CHECKPOINT_NAME
from inference.rundir import StagedRunDirectory, interrupted_message
from zoo import compare_timeseries, parallel
from zoo.registry import REGISTRY, UsageError

from .compare import cmd_compare
from .data_args import _add_data_arguments
from .runs import cmd_decode, cmd_diagnose, cmd_sample
from .score import add_score_command
from .training import _add_training_arguments, cmd_fit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqzoo", description="Fit, compare, decode and sample latent-state sequence models."
    )
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
    compare_parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="SPEC",
        help="FAMILY:key=value,... with FAMILY one of " + ", ".join(REGISTRY) + " and the keys its "
        "`seqzoo fit FAMILY` flags without dashes (--state-dim 2 -> state_dim=2); the training "
        "settings lr, batch_size, chunk_length, epochs, method may be given per model",
    )
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

    diagnose_parser = sub.add_parser(
        "diagnose", help="posterior summary, trace/rank/PPC/state plots and LOO of a fitted run"
    )
    diagnose_parser.add_argument("run", help="run directory of a fitted model")
    _add_data_arguments(diagnose_parser, required=False)
    diagnose_parser.add_argument(
        "--nuts", action="store_true", help="sample the posterior by NUTS (started at the fitted parameters)"
    )
    diagnose_parser.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    diagnose_parser.add_argument("--draws", type=int, default=500, help="NUTS draws per chain (default 500)")
    diagnose_parser.add_argument(
        "--warmup", type=int, default=500, help="NUTS warm-up iterations per chain (default 500)"
    )
    diagnose_parser.add_argument("--max-tree-depth", type=int, default=10, help="NUTS maximum tree depth (default 10)")
    diagnose_parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="NUTS chains run at once, in this many processes (default: chains, at most the cores; 1 = one after another)",
    )
    diagnose_parser.add_argument(
        "--guide-draws", type=int, default=500, help="draws from a variational guide (default 500)"
    )
    diagnose_parser.add_argument(
        "--predictive-draws", type=int, default=100, help="replicated data sets for the PPC (default 100)"
    )
    diagnose_parser.add_argument("--seed", type=int, default=0)
    diagnose_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    diagnose_parser.add_argument("--force", action="store_true", help="replace RUN/diagnostics if it exists")
    diagnose_parser.set_defaults(handler=cmd_diagnose)

    add_score_command(sub)

    sample_parser = sub.add_parser("sample", help="synthesise sequences from a fitted model")
    sample_parser.add_argument("run", help="run directory of a fitted model")
    sample_parser.add_argument("--length", type=int, required=True)
    sample_parser.add_argument("--num-sequences", type=int, default=1)
    sample_parser.add_argument("--seed", type=int, default=0)
    sample_parser.add_argument("--prime", help="recurrent networks: text the samples continue (printed before them)")
    sample_parser.add_argument(
        "--temperature", type=float, help="recurrent networks: q_i ∝ exp(z_i / T); 0 = greedy (default 1)"
    )
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
