"""The table of model families the command line offers.

Each family module registers what ``seqzoo`` needs to know about it at its
bottom, with one :func:`register` call per entry::

    register(Family(name="hmm", help="hidden Markov model (discrete states)",
                    add_arguments=_add_arguments, settings_from_args=_settings_from_args,
                    build=_build, label=_label, model_classes=(CategoricalHMM, GaussianHMM, PoissonHMM),
                    data_kinds=("categorical", "real", "count"), plots=_plots, decode=_decode))

:mod:`zoo.families` imports the family modules (the only place that names them
all) and :mod:`zoo.cli` iterates :data:`REGISTRY`; it names no family. This
module sits below both and imports no family, so nothing here can form an
import circle. See ``docs/families.md`` for a worked example.

**Settings.** A family's settings are strings keyed by the destinations of its
own ``seqzoo fit FAMILY`` flags (``--state-dim`` -> ``state_dim``). The same
settings come from a ``seqzoo compare`` spec (``lgssm:state_dim=2``), so
``build(data, settings)`` is the one constructor both commands use, and the
command line checks a spec's keys against the family's flags once, before
``build`` sees them. A flag the user leaves out is simply absent from a spec's
settings: ``build`` supplies the default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # annotations only: this module imports no torch and no family
    from torch import Tensor

    from inference.batch import SequenceBatch
    from inference.contract import SequenceModel
    from inference.rundir import RunDirectory
    from zoo.data import SequenceData, Splits

__all__ = ["DATA_KIND_WORDS", "Decoding", "Family", "REGISTRY", "UsageError", "family_of", "register"]


class UsageError(Exception):
    """A mistake in the command line or its inputs, reported without a traceback."""


#: How an error message names each kind of data (:data:`Family.data_kinds`).
DATA_KIND_WORDS = {
    "categorical": "categorical (symbol)",
    "real": "real-valued",
    "count": "count",
    "binary": "binary (multi-hot)",
    "corpus": "corpus (bag-of-words documents)",
}


class Decoding(NamedTuple):
    """What a family's ``decode`` returns for ``seqzoo decode``: a discrete state path, per-step
    continuous values (e.g. a guide's means and scales), or both; one ``decoded.csv`` column
    ``state`` for the path and ``NAME_k`` for each entry of each value."""

    paths: Tensor | None = None  # (N, T) long state of each step, -1 past each sequence's length
    num_states: int = 0  # the states a path may visit, for the occupancy count
    values: Mapping[str, Tensor] = {}  # name -> (N, T, ...) per-step values (read only)


@dataclass(frozen=True)
class Family:
    """What the command line needs to offer one model family.

    Attributes:
        name: the word on the command line (``seqzoo fit NAME``, ``NAME:key=value``
            in ``seqzoo compare``); no ``:``, ``,`` or spaces.
        help: one line for ``seqzoo fit --help``.
        add_arguments: adds the family's own ``seqzoo fit`` flags to an argument group.
            Their destinations are the keys a ``compare`` spec may set.
        settings_from_args: the parsed flags -> the family's settings (strings, as a
            ``compare`` spec gives them).
        build: ``(training data, settings) -> untrained model``; raises
            :class:`UsageError` naming a bad setting. Settings the user did not
            give are absent: ``build`` applies the defaults.
        label: settings -> the name of a ``seqzoo fit`` run in reports (``hmm-states8``).
        model_classes: the classes a run directory of this family may name; loading
            looks a saved class up here and nowhere else, so a run directory cannot
            make the command line import arbitrary code.
        data_kinds: the kinds of data it models (``"categorical"``, ``"real"``,
            ``"count"``, ``"binary"``, ``"corpus"``); the command line refuses others
            before ``build``.
        plots: ``(run, fitted model, splits, all data) -> None``: writes the family's
            own figures into the run directory (through ``run.save_figure``).
        per_step_log_probs: ``(model, batch) -> (N, T)`` log p(x_t | x_<t) (0 on padding),
            or None when the model cannot say; gives a standard error over blocks of
            one long held-out sequence.
        decode: ``(model, batch) -> Decoding``: what ``seqzoo decode`` writes; None when
            the family has no discrete states.
        memory_estimate: ``(training data, settings, method) -> MemoryEstimate``
            (:mod:`inference.memory`): the fit's peak memory from the settings
            alone, checked BEFORE ``build`` (whose parameters may not fit, e.g. an
            HMM's K² transitions). None: the command line builds the model and
            estimates from its parameter count (``generic_fit_memory``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    settings_from_args: Callable[[argparse.Namespace], dict[str, str]]
    build: Callable[[SequenceData, dict[str, str]], SequenceModel]
    label: Callable[[dict[str, str]], str]
    model_classes: tuple[type, ...]
    data_kinds: tuple[str, ...]
    plots: Callable[[RunDirectory, SequenceModel, Splits, SequenceData], None] | None = None
    per_step_log_probs: Callable[[SequenceModel, SequenceBatch], Tensor | None] | None = None
    decode: Callable[[SequenceModel, SequenceBatch], Decoding] | None = None
    memory_estimate: Callable[[SequenceData, dict[str, str], str], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in ":, \t"):
            raise ValueError(f"Family.name: expected a non-empty word without ':', ',' or spaces, got {self.name!r}")
        if not self.model_classes or not all(isinstance(cls, type) for cls in self.model_classes):
            raise ValueError(
                f"Family {self.name!r}: model_classes must be a non-empty tuple of classes, got {self.model_classes!r}"
            )
        unknown = set(self.data_kinds) - set(DATA_KIND_WORDS)
        if not self.data_kinds or unknown:
            raise ValueError(
                f"Family {self.name!r}: data_kinds must be some of {sorted(DATA_KIND_WORDS)}, got {self.data_kinds!r}"
            )

    def settings_names(self) -> tuple[str, ...]:
        """The keys a model spec of this family may set: the destinations of its flags."""
        recorder = _RecordingGroup(argparse.ArgumentParser(add_help=False).add_argument_group())
        self.add_arguments(recorder)  # type: ignore[arg-type]
        return tuple(recorder.destinations)

    def check_data_kind(self, data: SequenceData) -> None:
        """Raises :class:`UsageError` when the family does not model ``data``'s kind."""
        if data.kind not in self.data_kinds:
            wanted = " or ".join(DATA_KIND_WORDS[kind] for kind in self.data_kinds)
            raise UsageError(
                f"{self.name}: models {wanted} data, but {data.source or 'the data'} holds "
                f"{DATA_KIND_WORDS.get(data.kind, data.kind)} data (--kind chooses how a file is read)"
            )


class _RecordingGroup:
    """An argument group that remembers the destination of every flag added to it."""

    def __init__(self, group: argparse._ArgumentGroup, destinations: list[str] | None = None) -> None:
        self._group = group
        self.destinations: list[str] = [] if destinations is None else destinations

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._group.add_argument(*args, **kwargs)
        self.destinations.append(action.dest)
        return action

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _RecordingGroup:
        return _RecordingGroup(self._group.add_mutually_exclusive_group(**kwargs), self.destinations)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)


#: Every registered family, by name, in registration order (the order of ``seqzoo fit --help``).
REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds ``family`` to :data:`REGISTRY` and returns it.

    Raises:
        TypeError: ``family`` is not a :class:`Family`.
        ValueError: another family already has its name.
    """
    if not isinstance(family, Family):
        raise TypeError(f"register: expected a Family, got {type(family).__name__}")
    if family.name in REGISTRY:
        raise ValueError(f"register: a family named {family.name!r} is already registered")
    REGISTRY[family.name] = family
    return family


def family_of(model: Any) -> Family | None:
    """The registered family of a model: the entry named by its ``family`` (when that
    entry lists the model's class), else the first entry listing its class; None if none does."""
    cls = type(model)
    named = REGISTRY.get(model.family)
    if named is not None and cls in named.model_classes:
        return named
    return next((family for family in REGISTRY.values() if cls in family.model_classes), None)
