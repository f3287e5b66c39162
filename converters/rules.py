"""Conversion rules: how each spiking module type takes over the weights of its dense twin.

The converter builds the spiking twin of a dense model from the same config (integrate-and-fire
populations with reset by subtraction, membranes starting at half the threshold), copies every weight
across by name, and then walks the two trees together from the root. At each spiking module it calls
the rule registered for that module's type (``@conversion_rule(SpikingX)``, written in the file that
defines ``SpikingX``, next to its count and export rules), which

* gives each of its populations the threshold of the dense activation it replaces
  (``ctx.threshold(population, activation, unit)``): the activation's scale ``lambda`` from the
  calibration set (rate) or its learned clip (QCFS), divided by the unit of the population's input;
* scales the weights that read spikes (``ctx.scale_input(layer, unit)``): a spike of a population
  with threshold ``lambda`` stands for the value ``lambda``, so its readers multiply it back in;
* hands its children on (``ctx.convert(spiking_child, dense_child, unit)``).

``unit`` is the value one unit of a module's input stands for: ``None`` for a current stream (the
residual stream, whose values are the dense values themselves), a population's ``lambda`` for its
spikes, and ``lambda_a * lambda_b`` for the coincidence (AND) of two spike trains.

A module type without a rule, met anywhere in the model, stops the conversion before any work with an
error that lists every such module (``missing_rules``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from spiking_attn.errors import SpikingAttnError

CONVERSION_RULES: Dict[type, Callable] = {}

# Modules a parent's rule handles itself (weights scaled, populations given thresholds); they need no
# rule of their own.
PASSIVE_TYPES: Tuple[type, ...] = (nn.Linear, nn.BatchNorm1d, nn.ModuleList, nn.Identity)

VALUE_FLOOR = 1e-4  # an activation that never rose above zero on the calibration set gets this scale


class ConversionError(SpikingAttnError):
    """The model (or one of its modules) cannot be converted by the chosen method."""


def conversion_rule(*types: type):
    """Register the decorated ``rule(spiking, dense, ctx, unit)`` for every spiking type in ``types``."""
    def register(rule: Callable) -> Callable:
        for t in types:
            CONVERSION_RULES[t] = rule
        return rule
    return register


def passive(*types: type) -> None:
    """Declare module types that their parents' rules convert (no rule of their own)."""
    global PASSIVE_TYPES
    PASSIVE_TYPES = tuple(dict.fromkeys((*PASSIVE_TYPES, *types)))


REFUSALS: Dict[type, str] = {}

HARD_SIGMOID_SLOPE = 0.25  # sigmoid(y) ~ clip(y / 4 + 1/2, 0, 1): the rate of an IF neuron of threshold 1


def refuse(module_type: type, reason: str) -> None:
    """Declare that ``module_type`` has no binary conversion, and why (named in the converter's error)."""
    REFUSALS[module_type] = reason


def missing_rules(model: nn.Module) -> List[str]:
    """``'name (Type)'`` for every module of ``model`` that neither has a rule nor is passive; a type
    refused on purpose (``refuse``) comes with its reason."""
    from spiking_attn.neuron import LIFPopulation

    out = []
    for name, module in model.named_modules():
        t = type(module)
        if t in REFUSALS:
            out.append(f"{name or '<root>'} ({t.__name__}: {REFUSALS[t]})")
        elif t in CONVERSION_RULES or isinstance(module, (LIFPopulation, *PASSIVE_TYPES)):
            continue
        else:
            out.append(f"{name or '<root>'} ({t.__name__})")
    return out


class ConversionContext:
    """What a rule works with: the spiking and dense models, and the scale of every dense activation.

    ``scales`` maps a dense activation's qualified name to its ``lambda``. ``thresholds`` and
    ``sources`` record, per population, the threshold given and the dense activation it replaces.
    """

    def __init__(self, spiking: nn.Module, dense: nn.Module, scales: Dict[str, float], *, calibration=None,
                 mode: str = "percentile", percentile: float = 99.9, batch_size: int = 64) -> None:
        self.spiking, self.dense, self.scales = spiking, dense, scales
        self.calibration = calibration  # (x, cue) the dense model is observed on (``observe``)
        self.mode, self.percentile, self.batch_size = mode, percentile, batch_size
        self._spiking_names = {id(m): n for n, m in spiking.named_modules()}
        self._dense_names = {id(m): n for n, m in dense.named_modules()}
        self.thresholds: Dict[str, float] = {}
        self.sources: Dict[str, str] = {}

    def name(self, module: nn.Module) -> str:
        return self._spiking_names.get(id(module)) or self._dense_names.get(id(module)) or type(module).__name__

    def scale(self, activation: nn.Module) -> float:
        """``lambda`` of a dense activation: the value its population's spike will stand for."""
        name = self._dense_names.get(id(activation))
        if name not in self.scales:
            raise ConversionError(f"no calibrated scale for the dense activation {name or type(activation).__name__!r}")
        return max(float(self.scales[name]), VALUE_FLOOR)

    @torch.no_grad()
    def threshold(self, population: nn.Module, activation: nn.Module, unit: Optional[float] = None) -> float:
        """Give ``population`` the threshold that makes its rate code ``activation``'s output; returns
        ``lambda``, the value of one of its spikes. ``unit``: the value of one unit of its input current."""
        lam = self.scale(activation)
        self.set_threshold(population, lam / (1.0 if unit is None else unit), self._dense_names[id(activation)])
        return lam

    @torch.no_grad()
    def set_threshold(self, population: nn.Module, vth: float, source: str) -> None:
        """Give ``population`` the threshold ``vth`` directly (``source`` says what it stands for)."""
        population.vth.fill_(vth)
        name = self.name(population)
        self.thresholds[name] = float(vth)
        self.sources[name] = source

    @torch.no_grad()
    def scale_input(self, layer: nn.Module, unit) -> None:
        """Multiply the weights of ``layer`` (an ``nn.Linear`` or a ``LinearBN``) by ``unit``, the value of
        one of the spikes it reads: a number, or one value per input feature."""
        if unit is None:
            return
        linear = getattr(layer, "linear", layer)
        if not isinstance(linear, nn.Linear):
            raise ConversionError(f"{self.name(layer)}: cannot scale the input of a {type(layer).__name__}")
        linear.weight.mul_(torch.as_tensor(unit, dtype=linear.weight.dtype))

    @torch.no_grad()
    def scale_output(self, layer: nn.Module, factor: float, offset=0.0) -> None:
        """Make ``layer`` (``nn.Linear`` with a bias, or ``LinearBN``) compute ``factor * y + offset``."""
        if isinstance(getattr(layer, "bn", None), nn.BatchNorm1d):
            layer.bn.weight.mul_(factor)
            layer.bn.bias.mul_(factor).add_(torch.as_tensor(offset, dtype=layer.bn.bias.dtype))
        elif isinstance(layer, nn.Linear) and layer.bias is not None:
            layer.weight.mul_(factor)
            layer.bias.mul_(factor).add_(torch.as_tensor(offset, dtype=layer.bias.dtype))
        else:
            raise ConversionError(f"{self.name(layer)}: cannot scale the output of a {type(layer).__name__}")

    @torch.no_grad()
    def observe(self, module: nn.Module, value: Callable) -> torch.Tensor:
        """Run the dense model over the calibration set and return ``value(inputs, output)`` of every call
        of its ``module``, flattened and joined: statistics a rule needs beyond the activation scales."""
        from spiking_attn.opcount import eval_batches

        if self.calibration is None:
            raise ConversionError("this conversion has no calibration set to observe the dense model on")
        seen = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append(value(args, out).detach().reshape(-1)))
        try:
            for _ in eval_batches(self.dense, *self.calibration, self.batch_size):
                pass
        finally:
            handle.remove()
        if not seen:
            raise ConversionError(f"{self.name(module)} did not run on the calibration data")
        return torch.cat(seen)

    def value_scale(self, values: torch.Tensor) -> float:
        """The scale of observed values, read as the activation scales are (maximum or percentile)."""
        from .calibration import nearest_rank

        scale = float(values.max()) if self.mode == "max" else nearest_rank(values, self.percentile)
        return max(scale, VALUE_FLOOR)

    def convert(self, spiking: nn.Module, dense: nn.Module, unit: Optional[float] = None):
        """Apply the rule of ``type(spiking)``; returns what the rule returns."""
        rule = CONVERSION_RULES.get(type(spiking))
        if rule is None:
            raise ConversionError(f"{self.name(spiking)}: no conversion rule for {type(spiking).__name__}")
        return rule(spiking, dense, self, unit)
