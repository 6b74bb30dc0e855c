"""Command-line registration of the ``dmm`` family (importing it registers the family)."""

from __future__ import annotations

from typing import Any

from inference.batch import SequenceBatch
from zoo.registry import Decoding, Family, UsageError, register

from .model import EMISSIONS, GUIDES, RNN_PRECISIONS, TRANSITIONS, DeepMarkovModel


# ----------------------------------------------------------------------------
# Registry entry (zoo/registry.py, docs/families.md).
# ----------------------------------------------------------------------------
def _add_arguments(group) -> None:
    group.add_argument("--z-dim", type=int, default=100, help="latent state width (default 100)")
    group.add_argument("--transition-dim", type=int, default=200, help="gated transition hidden width (200)")
    group.add_argument("--emitter-dim", type=int, default=100, help="emitter hidden width (100)")
    group.add_argument("--rnn-dim", type=int, default=600, help="guide RNN width (600)")
    group.add_argument(
        "--guide",
        choices=GUIDES,
        default="st-r",
        help="st-r: backward RNN + z_{t-1} (paper's ST-R); st-lr: bidirectional; mf: mean field",
    )
    group.add_argument("--iafs", type=int, default=0, help="inverse autoregressive flows per step (0)")
    group.add_argument("--transition", choices=TRANSITIONS, default="gated", help="gated (default) or linear")
    group.add_argument("--emission", choices=EMISSIONS, default="mlp", help="mlp (default) or linear")
    group.add_argument(
        "--rnn-precision",
        choices=RNN_PRECISIONS,
        default="float32",
        help="guide RNN matrix products: float32 (default) or bfloat16 (faster on CPUs with "
        "bfloat16 instructions; float32 sums; not exact)",
    )
    group.add_argument(
        "--guide-dropout",
        type=float,
        default=0.0,
        help="dropout on the guide RNN's summary in the training loss (0: none)",
    )
    group.add_argument("--annealing-epochs", type=int, default=10, help="epochs of linear KL annealing (10)")
    group.add_argument("--min-annealing", type=float, default=0.2, help="initial KL annealing factor (0.2)")
    group.add_argument("--particles", type=int, default=1, help="IWAE particles for scoring (1 = ELBO)")
    group.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 prior precision on the weights against the full-data loss (0: none)",
    )
    group.add_argument(
        "--average",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="end with a moving average of the weights, DECAY per optimiser step (e.g. 0.9995 "
        "for long runs; 0: the last iterate)",
    )


def _settings_from_args(args) -> dict[str, str]:
    return {
        "z_dim": str(args.z_dim),
        "transition_dim": str(args.transition_dim),
        "emitter_dim": str(args.emitter_dim),
        "rnn_dim": str(args.rnn_dim),
        "guide": args.guide,
        "iafs": str(args.iafs),
        "transition": args.transition,
        "emission": args.emission,
        "rnn_precision": args.rnn_precision,
        "guide_dropout": str(args.guide_dropout),
        "annealing_epochs": str(args.annealing_epochs),
        "min_annealing": str(args.min_annealing),
        "particles": str(args.particles),
        "weight_decay": str(args.weight_decay),
        "average": str(args.average),
    }


# spec setting -> (keyword, type): the model's numbers, and the training settings, which go to
# configure_fit and reach the trainer/scorer through fit_defaults (not the constructor).
_MODEL_NUMBERS = {
    "z_dim": ("z_dim", int),
    "transition_dim": ("transition_dim", int),
    "emitter_dim": ("emitter_dim", int),
    "rnn_dim": ("rnn_dim", int),
    "iafs": ("num_iafs", int),
    "guide_dropout": ("guide_dropout", float),
}
_MODEL_CHOICES = ("guide", "transition", "emission", "rnn_precision")
_TRAINING_SETTINGS = {
    "annealing_epochs": ("annealing_epochs", int),
    "min_annealing": ("min_annealing", float),
    "particles": ("num_particles", int),
    "weight_decay": ("weight_decay", float),
    "average": ("average_decay", float),
}


def _converted(settings: dict[str, str], table: dict[str, tuple[str, type]]) -> dict[str, Any]:
    """``{keyword: value}`` of the ``settings`` that ``table`` names, each converted to its type."""
    converted: dict[str, Any] = {}
    for key, (name, convert) in table.items():
        if key in settings:
            try:
                converted[name] = convert(settings[key])
            except ValueError:
                raise UsageError(
                    f"dmm: {key} must be a{'n int' if convert is int else ' number'}, got {settings[key]!r}"
                ) from None
    return converted


def build_dmm(data, settings: dict[str, str]) -> DeepMarkovModel:
    """A :class:`DeepMarkovModel` for ``data`` (a ``zoo.data.SequenceData``) from spec settings."""
    allowed = set(_MODEL_NUMBERS) | set(_MODEL_CHOICES) | set(_TRAINING_SETTINGS)
    unknown = set(settings) - allowed
    if unknown:
        raise UsageError(f"dmm: unknown settings {sorted(unknown)}; allowed: {sorted(allowed)}")
    observation = {"binary": "bernoulli", "count": "bernoulli", "categorical": "categorical", "real": "gaussian"}.get(
        data.kind
    )
    if observation is None:
        raise UsageError(f"dmm: cannot model {data.kind!r} data")
    options = _converted(settings, _MODEL_NUMBERS)
    options.update({key: settings[key] for key in _MODEL_CHOICES if key in settings})
    if observation == "categorical":
        options["num_symbols"] = data.num_symbols
    else:
        options["dim"] = data.dim
    training = _converted(settings, _TRAINING_SETTINGS)
    try:
        return DeepMarkovModel(observation, **options).configure_fit(**training)
    except ValueError as error:
        raise UsageError(f"dmm: {error}") from None


def _label(settings: dict[str, str]) -> str:
    label = f"dmm(z={settings.get('z_dim', 100)}, {settings.get('guide', 'st-r')}"
    if int(settings.get("iafs", 0) or 0):
        label += f", {settings['iafs']} IAF"
    return label + ")"


def _decode(model: DeepMarkovModel, batch: SequenceBatch) -> Decoding:
    """What ``seqzoo decode`` writes: the guide's means and scales along its mean path."""
    post = model.posterior(batch)
    return Decoding(values={"loc": post.loc, "scale": post.scale})


register(
    Family(
        name="dmm",
        help="deep Markov model (neural transition and emission, RNN guide)",
        add_arguments=_add_arguments,
        settings_from_args=_settings_from_args,
        build=build_dmm,
        label=_label,
        model_classes=(DeepMarkovModel,),
        data_kinds=("binary", "categorical", "real"),
        decode=_decode,
    )
)
