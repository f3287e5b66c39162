"""Mechanisms: the registry of model builders, keyed by name.

A mechanism is one file in this package holding its dense twin and its spiking version side by side,
and one ``register_mechanism(MechanismSpec(...))`` call. ``build_model``, the CLI (``--mechanism``,
``--list-mechanisms``), the tests, and later the converter, the energy counter and the exporters all
find it here; nothing else changes when one is added.

The plain transformer is the first entry, ``none`` (``plain.py``).

A spec names two block builders, ``spiking_block(config, options)`` and ``dense_block(config, options)``.
The classifier (``models.py``) stacks ``config.depth`` such blocks between its embedding and its head
and calls each as ``block(h, cue=cue)``:

* spiking: ``h`` is the membrane stream ``[T, B, N, D]``; ``cue`` the cue as spikes ``[T, B, C]`` or None;
* dense: ``h`` is ``[B, N, D]``; ``cue`` is ``[B, C]`` (one-hot for an index cue) or None;

and each returns the new stream, same shape. A mechanism that needs another scaffold than the
classifier subclasses ``MechanismSpec`` and overrides ``model_type``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from torch import nn

from ..errors import DTypeError, SpikingAttnError
from ..registry import Registry

MECHANISMS: Registry["MechanismSpec"] = Registry("mechanism")

_PLAIN_TYPES = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class NoOptions:
    """A mechanism without options of its own."""


@dataclass(frozen=True)
class MechanismSpec:
    """How to build one mechanism.

    Attributes:
        name: the registry key (``--mechanism NAME``).
        summary: one line for ``--list-mechanisms``.
        spiking_block: ``(config, options) -> nn.Module``, one spiking block.
        dense_block: ``(config, options) -> nn.Module``, its dense twin (same parameter names).
        options: a frozen dataclass of the mechanism's own options; its fields hold plain data
            (numbers, strings, booleans, lists of them), stored in checkpoints by value.
        cue_token: the classifier gives the cue a token of its own (for mechanisms that do not read
            the cue themselves, such as the plain transformer).
        readouts: name fragments of parameters that compute exposed signals only (returned with the
            mechanism's components, not used in its output); they learn only if a loss uses them.
        conversion_options: the mechanism options a spiking model converted from the dense twin takes
            (``spiking_attn.converters``), when its trained form differs from its converted one.
        scaffold: 'classifier' (blocks inside the token classifier of ``models.py``: tasks labelled with a
            class per sample) or 'sequence' (a model of its own that ``build`` returns, mapping ``[B, L, V]``
            inputs to ``[B, L, V']`` logits: tasks labelled with a sequence per sample).
    """

    name: str
    summary: str
    spiking_block: Callable[[Any, Any], nn.Module]
    dense_block: Callable[[Any, Any], nn.Module]
    options: type = NoOptions
    cue_token: bool = False
    readouts: tuple = ()
    conversion_options: Mapping = dataclasses.field(default_factory=dict, hash=False, compare=False)
    scaffold: str = "classifier"

    def parse_options(self, data: Optional[Mapping] = None):
        """The options object for ``data`` (a dict of option values; missing ones take their defaults)."""
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise DTypeError(f"mechanism_options must be a dict, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(self.options)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            allowed = ", ".join(known) if known else "none"
            raise SpikingAttnError(f"mechanism_options: unknown option(s) {', '.join(map(str, unknown))} for "
                                   f"mechanism {self.name!r} (its options: {allowed})")
        for key, value in data.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            if not all(isinstance(v, _PLAIN_TYPES) for v in items):
                raise DTypeError(f"mechanism_options: option {key!r} of mechanism {self.name!r} must be plain data "
                                 f"(numbers, strings, booleans or lists of them), got {type(value).__name__}")
        try:
            return self.options(**data)
        except TypeError as exc:
            raise SpikingAttnError(f"mechanism_options: bad options for mechanism {self.name!r}: {exc}") from None

    def options_dict(self, data: Optional[Mapping] = None) -> dict:
        """``data`` validated and completed with the defaults, as plain data."""
        return dataclasses.asdict(self.parse_options(data))

    def model_type(self, kind: str) -> type:
        """The class of the model this mechanism builds as ``kind`` ('spiking' or 'dense'): the classifier
        of ``models.py``; a mechanism of another scaffold overrides this."""
        from ..models import MODEL_CLASSES

        return MODEL_CLASSES[kind]

    def build(self, config) -> nn.Module:
        """The model ``config.model`` names ('spiking' or 'dense'), with this mechanism's blocks."""
        return self.model_type(config.model)(config, self)


SCAFFOLDS = ("classifier", "sequence")


def register_mechanism(spec: MechanismSpec, *, replace: bool = False) -> MechanismSpec:
    """Add ``spec`` to the registry under ``spec.name``; returns it."""
    if not isinstance(spec, MechanismSpec):
        raise DTypeError(f"register_mechanism takes a MechanismSpec, got {type(spec).__name__}")
    if spec.scaffold not in SCAFFOLDS:
        raise SpikingAttnError(f"scaffold of mechanism {spec.name!r} must be one of {', '.join(SCAFFOLDS)}, "
                               f"got {spec.scaffold!r}")
    if not (dataclasses.is_dataclass(spec.options) and isinstance(spec.options, type)):
        raise DTypeError(f"options of mechanism {spec.name!r} must be a dataclass type")
    return MECHANISMS.register(spec.name, spec, replace=replace)


def mechanism_names(scaffold: str = "classifier") -> tuple:
    """The registered mechanisms of one scaffold ('classifier' or 'sequence'), in registration order."""
    return tuple(name for name, spec in MECHANISMS.items() if spec.scaffold == scaffold)


def get_mechanism(name: str) -> MechanismSpec:
    """The spec registered under ``name`` (an unknown name lists the known ones)."""
    return MECHANISMS.get(name)


from . import (plain, thalamic_gating, pulvinar, basal_forebrain, predictive, integrated,  # noqa: E402,F401
               cortico_thalamic, saliency, synthetic_thalamus, seq2seq)
