"""Checkpoint helpers of the trainer: model, best and optimizer states and
every RNG state, split into safetensors tensors and JSON (nothing pickled).

:class:`~inference.training.RunWriter` writes and reads what these build; they
never import the fit entry.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .rundir import RunDirectory

#: Base name of the checkpoint files in a run directory (``checkpoint.safetensors`` + ``checkpoint.json``).
CHECKPOINT_NAME = "checkpoint"


def clone_state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Global RNG states (torch, CUDA, Python, NumPy) as (tensors, JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=True)  # the default: the global MT19937's tuple
    if not isinstance(numpy_state, tuple):
        raise TypeError(f"numpy's global random state: expected the legacy tuple, got {type(numpy_state).__name__}")
    kind, keys, position, has_gauss, cached = numpy_state
    state_json = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    return tensors, state_json


def set_rng_state(tensors: dict[str, Tensor], state_json: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].cpu())
    num_cuda_states = sum(name.startswith("rng.cuda.") for name in tensors)
    cuda_states = [tensors[f"rng.cuda.{index}"].cpu() for index in range(num_cuda_states)]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = state_json["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state_json["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Splits ``optimizer.state_dict()`` into safetensors-able tensors and JSON."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        plain = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain[key] = value
        state_json[str(index)] = plain
    return tensors, {"state": state_json, "param_groups": state_dict["param_groups"]}


def join_optimizer_state(tensors: dict[str, Tensor], state_json: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(index): dict(plain) for index, plain in state_json["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    groups = [dict(group) for group in state_json["param_groups"]]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{name}": value for name, value in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def checkpoint_payload(
    *,
    model: torch.nn.Module,
    best_state: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    loop_state: dict[str, Any],
    generator: torch.Generator,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, state)`` of a checkpoint: the model, best and optimizer
    tensors and RNG states, and the JSON-able loop state (its ``step`` is
    written into both files so a crash between the two writes is detected)."""
    tensors = prefixed("model", model.state_dict())
    if best_state is not None:
        tensors.update(prefixed("best", best_state))
    rng_tensors, rng_json = rng_state()
    tensors.update(rng_tensors)
    tensors["rng.shuffle"] = generator.get_state()
    optimizer_json = None
    if optimizer is not None:
        optimizer_tensors, optimizer_json = split_optimizer_state(optimizer)
        tensors.update(optimizer_tensors)
    return tensors, {
        **loop_state,
        "has_best_state": best_state is not None,
        "optimizer": optimizer_json,
        "rng": rng_json,
    }


def save_checkpoint(run: RunDirectory, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Writes ``checkpoint.safetensors`` then ``checkpoint.json``; both carry the step."""
    run.save_tensors(CHECKPOINT_NAME, tensors, metadata={"step": state["step"]})
    run.write_json(CHECKPOINT_NAME, state)


def load_checkpoint(run: RunDirectory, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not (run.exists(CHECKPOINT_NAME + ".safetensors") and run.exists(CHECKPOINT_NAME + ".json")):
        raise FileNotFoundError(f"resume: no checkpoint in {str(run.path)!r}")
    tensors, metadata = run.load_tensors(CHECKPOINT_NAME, device=device)
    state = run.read_json(CHECKPOINT_NAME)
    if metadata.get("step") != state["step"]:
        raise RuntimeError(
            f"checkpoint in {str(run.path)!r} is inconsistent: tensors at step {metadata.get('step')}, "
            f"JSON at step {state['step']} (a write was interrupted); delete it to start afresh"
        )
    return tensors, state
