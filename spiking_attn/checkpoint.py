"""Atomic file writing and checkpoints that are plain data.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts::

    {"format": "spiking-attn", "version": 2, "config": {...ModelConfig fields...},
     "state_dict": {...}, "training": {...optimizer, scheduler, epoch, history...}}

It is loaded with ``torch.load(weights_only=True)``, so loading can never run code.
Every write goes to a temporary file in the same folder and is renamed into place.

Versions: a checkpoint written by an earlier version is migrated when read (``MIGRATIONS``):
version 1 (the foundation) had no mechanism, cue or per-channel fields, and its ``learn_threshold``
also trained the bias, so it becomes ``learn_threshold`` + ``learn_bias``.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .errors import CheckpointError, DTypeError, SpikingAttnError, all_finite, check_path
from .models import ModelConfig, build_model
from .outputs import atomic_write, write_json  # noqa: F401  (write_json: part of this module's interface)

FORMAT = "spiking-attn"
VERSION = 2


def _migrate_v1(payload: dict) -> dict:
    config = dict(payload["config"])
    config.setdefault("learn_bias", bool(config.get("learn_threshold", False)))
    return {**payload, "config": config, "version": 2}


MIGRATIONS = {1: _migrate_v1}  # version -> function returning the payload one version up


def save_checkpoint(path: str | os.PathLike, model: nn.Module, training: Optional[dict] = None) -> None:
    """Save ``model.config``, its state_dict and optional training state, atomically."""
    path = check_path(path, "path")
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "config", None), ModelConfig):
        raise DTypeError(f"save_checkpoint needs a model built by build_model (an nn.Module with a ModelConfig "
                         f"as .config), got {type(model).__name__}")
    if training is not None and not isinstance(training, dict):
        raise DTypeError(f"training must be a dict of plain data, got {type(training).__name__}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "training": training or {},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check the structure of a checkpoint file; raise ``CheckpointError`` if it is bad."""
    path = Path(check_path(path, "checkpoint"))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{str(path)!r} is not a checkpoint of this library (not a torch file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated archive, or objects that are not plain data
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        reason = ("it holds objects other than plain data, and this library never unpickles those" if unsafe
                  else "the file is truncated or corrupt")
        raise CheckpointError(f"{str(path)!r} is not a checkpoint of this library: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a spiking-attn checkpoint")
    version = payload.get("version")
    if not (isinstance(version, int) and (version == VERSION or version in MIGRATIONS)):
        raise CheckpointError(f"checkpoint {str(path)!r} has version {version!r}; this release reads versions "
                              f"{', '.join(map(str, sorted({*MIGRATIONS, VERSION})))}")
    for key, kind in (("config", dict), ("state_dict", dict), ("training", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"checkpoint {str(path)!r} has no valid {key!r} entry")
    while payload["version"] != VERSION:
        payload = MIGRATIONS[payload["version"]](payload)
    return payload


def config_from_checkpoint(payload: dict) -> ModelConfig:
    try:
        return ModelConfig.from_dict(payload["config"])
    except (SpikingAttnError, TypeError) as exc:
        raise CheckpointError(f"checkpoint config is invalid: {exc}") from None


def spiking_checkpoint(path, purpose: str) -> tuple:
    """``(payload, config)`` of a spiking model's checkpoint; a dense twin's is refused, saying ``purpose``
    (why the command needs a spiking model)."""
    payload = read_checkpoint(path)
    config = config_from_checkpoint(payload)
    if config.model != "spiking":
        raise SpikingAttnError(f"checkpoint {str(path)!r} holds a dense model; {purpose} (train with --model "
                               f"spiking, or convert the dense twin first)")
    return payload, config


def load_state(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """``model.load_state_dict(strict=True)`` with mismatches and non-finite values reported as
    ``CheckpointError`` (``source`` names the checkpoint in the message)."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not all_finite(value):
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or Inf")
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict)
                   if not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        raise CheckpointError(f"{source} does not fit the model (" + "; ".join(parts) + ")")
    model.load_state_dict(state_dict)


def load_model(path: str | os.PathLike, expected_config: Optional[ModelConfig] = None,
               **overrides: Any) -> nn.Module:
    """Rebuild the model stored in a checkpoint, in eval mode.

    Args:
        path: checkpoint file.
        expected_config: if given, the checkpoint must hold exactly this config.
        overrides: config fields to change that do not alter the weights (e.g. ``engine``).
    """
    payload = read_checkpoint(path)
    config = config_from_checkpoint(payload)
    if expected_config is not None and expected_config != config:
        diff = [k for k, v in expected_config.to_dict().items() if config.to_dict().get(k) != v]
        raise CheckpointError(f"checkpoint {str(path)!r} was saved with another config (differs in: {', '.join(diff)})")
    if overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    model = build_model(config)
    load_state(model, payload["state_dict"], f"checkpoint {str(path)!r}")
    return model.eval()
