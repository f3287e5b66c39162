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

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .errors import CheckpointError, SpikingAttnError
from .models import ModelConfig, build_model

FORMAT = "spiking-attn"
VERSION = 2


def _migrate_v1(payload: dict) -> dict:
    config = dict(payload["config"])
    config.setdefault("learn_bias", bool(config.get("learn_threshold", False)))
    return {**payload, "config": config, "version": 2}


MIGRATIONS = {1: _migrate_v1}  # version -> function returning the payload one version up


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` to ``path``; remove it on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, write)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, training: Optional[dict] = None) -> None:
    """Save ``model.config``, its state_dict and optional training state, atomically."""
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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, pickled objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a spiking-attn checkpoint ({reason[:200]})") from None
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


def load_state(model: nn.Module, state_dict: dict) -> None:
    """``model.load_state_dict(strict=True)`` with mismatches reported as ``CheckpointError``."""
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
        raise CheckpointError("checkpoint does not fit the model (" + "; ".join(parts) + ")")
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
    load_state(model, payload["state_dict"])
    return model.eval()
