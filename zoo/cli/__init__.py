"""The ``seqzoo`` command line (also ``python -m zoo``).

Subcommands::

    seqzoo fit FAMILY --data DATA [the family's flags] [--method em|svi] --out DIR
    seqzoo decode DIR --data DATA
    seqzoo score DIR [--score-from history|start]
    seqzoo sample DIR --length N [--prime "ROMEO:" --temperature 0.8]
    seqzoo compare --data DATA --models FAMILY:key=value,... FAMILY:key=value,... --out DIR
    seqzoo diagnose DIR [--data DATA] [--nuts --chains 4 --draws 500 --warmup 500]

This package is the only code that parses arguments or prints for a person. It names
no model family: the families register themselves in :data:`zoo.registry.REGISTRY`
(:mod:`zoo.families`, imported here, imports them all), and every subcommand iterates that
table (``docs/families.md``). ``seqzoo fit --help`` lists the families,
``seqzoo fit FAMILY --help`` a family's flags, whose names are also the keys of
its ``compare`` spec (``--state-dim 2`` -> ``FAMILY:state_dim=2``).

Modules, each importing only those before it:

* :mod:`~zoo.cli.data_args` — the data flags, loading and splitting a user's data, the
  data a run directory recorded;
* :mod:`~zoo.cli.specs` — ``FAMILY:key=value`` specs, building a model from settings,
  loading a run directory's model;
* :mod:`~zoo.cli.training` — the training flags, the options record they resolve to,
  ``train_into`` (fit one model into a run directory) and ``seqzoo fit``;
* :mod:`~zoo.cli.compare` — ``seqzoo compare`` and its report;
* :mod:`~zoo.cli.runs` — ``seqzoo decode``, ``sample`` and ``diagnose`` on a fitted run;
* :mod:`~zoo.cli.score` — ``seqzoo score``;
* :mod:`~zoo.cli.entry` — the parser and :func:`main`.
"""

import zoo.families  # noqa: F401  (registers every family before any subcommand reads the registry)
from zoo.registry import UsageError

from .entry import build_parser, main
from .specs import ModelSpec, build_model, check_spec, load_model
from .training import train_into

__all__ = ["ModelSpec", "UsageError", "build_model", "check_spec", "build_parser", "load_model", "main", "train_into"]
