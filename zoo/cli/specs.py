"""Models named on the command line: ``FAMILY:key=value,...`` specs checked against the
family's own flags, a model built from settings, and a fitted run directory's model loaded
back (only through the registry, so a run directory cannot make the command line import
arbitrary code)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from inference.rundir import RunDirectory
from zoo.data import SequenceData
from zoo.registry import REGISTRY, Family, UsageError


# -- models ----------------------------------------------------------------
@dataclass
class ModelSpec:
    """A model named on the command line: ``FAMILY:key=value,...`` (the keys are the family's fit flags)."""

    family: str
    settings: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        family, _, rest = text.partition(":")
        settings = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"model spec {text!r}: expected key=value settings after ':', got {item!r}")
            key = key.strip().replace("-", "_")
            if key in settings:
                raise UsageError(
                    f"model spec {text!r}: {key} is given twice ({key}={settings[key]}, {key}={value.strip()}); "
                    "give each setting once"
                )
            settings[key] = value.strip()
        if family not in REGISTRY:
            raise UsageError(f"model spec {text!r}: unknown model {family!r}; available: {', '.join(REGISTRY)}")
        return cls(family, settings)

    @property
    def label(self) -> str:
        return self.family + "".join(f"-{k}{v}" for k, v in self.settings.items())


#: Training settings any model spec may carry (``FAMILY:...,lr=0.002,batch_size=32``) -> type.
FIT_SETTINGS = {
    "lr": float,
    "final_lr": float,
    "warmup_epochs": int,
    "batch_size": int,
    "chunk_length": int,
    "epochs": int,
    "patience": int,
    "eval_every": int,
    "method": str,
}


def check_spec(family: Family, data: SequenceData, settings: dict[str, str]) -> None:
    """The one check of a model's settings, for ``fit`` and ``compare`` alike: the family
    must model the data's kind and every setting must be one of its flags."""
    family.check_data_kind(data)
    allowed = family.settings_names()
    unknown = set(settings) - set(allowed)
    if unknown:
        raise UsageError(
            f"{family.name}: unknown settings {sorted(unknown)}; allowed: {sorted(allowed)} "
            f"(and the training settings {sorted(FIT_SETTINGS)})"
        )


class _SpecArgumentParser(argparse.ArgumentParser):
    """Parses a compare spec's settings as the family's fit flags; errors are UsageErrors."""

    def error(self, message: str):
        raise UsageError(message)


def spec_settings(spec: ModelSpec, data: SequenceData) -> tuple[dict[str, str], dict[str, Any]]:
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
        hint = (
            f" (as `seqzoo fit {spec.family}` requires them; a spec names --state-dim as state_dim=...)"
            if "required" in str(error)
            else ""
        )
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
        config = {
            **config,
            "fixed": {
                name: torch.as_tensor(value, dtype=torch.get_default_dtype())
                if not isinstance(value, torch.Tensor)
                else value
                for name, value in fixed.items()
            },
        }
    return config


def _model_classes() -> dict[str, type]:
    """Every model class a run directory may name: those of the registered families.
    Loading looks the class up here and nowhere else, so a run directory can never
    make us import arbitrary code."""
    return {cls.__name__: cls for family in REGISTRY.values() for cls in family.model_classes}


def load_model(run: RunDirectory):
    """Rebuilds the model saved in a run directory (weights via safetensors)."""
    description = run.read_json("model.json")
    expected = '{"class": ..., "config": {...}} as seqzoo writes it'
    if not isinstance(description, dict) or not isinstance(description.get("config"), dict):
        raise UsageError(
            f"{run.file('model.json')}: not a model description (run {str(run.path)!r}; expected {expected})"
        )
    classes = _model_classes()
    cls = classes.get(str(description.get("class", "")).rsplit(".", 1)[-1])
    if cls is None:
        raise UsageError(
            f"{run.file('model.json')}: unknown model class {description.get('class')!r}; known: {', '.join(classes)}"
        )
    try:
        model = cls(**_config_from_json(description["config"]))
    except (TypeError, ValueError, RuntimeError) as error:
        # Settings edited by hand or from another version: name the file, not the constructor's internals.
        raise UsageError(
            f"{run.file('model.json')}: its settings do not make a {cls.__name__} ({error}); "
            f"the file is damaged or from another seqzoo version (run {str(run.path)!r})"
        ) from None
    tensors, _ = run.load_tensors("model")
    first = next(iter(tensors.values()), None)
    if first is not None and first.is_floating_point():
        model = model.to(dtype=first.dtype)  # a model fitted in float64 reloads in float64
    run.load_state_dict_into(model)
    return model.eval()


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
