"""Operation counts of a model, measured on data: what an energy model turns into picojoules.

``count_ops(model, x, cue)`` runs the model once (no gradient) with a forward hook on every module
and dispatches on module type through ``COUNT_RULES``. Each module type registers one rule
(``@count_rule(Cls)``) in the file that defines it, and the rule counts the module's *own* work: the
operations its ``forward`` performs itself, not those of its child modules (which count their own).
A module type without a rule is an error naming the module, before anything runs, so nothing is
skipped silently.

What is counted (per call, summed over the batch and the time steps):

``macs``
    multiply-accumulates: a weight layer whose input is not binary (the analog encoding layer, every
    layer of a dense model), and products of two real values (softmax attention, a gate times a
    current, a per-step gain on a population's input). An analog input that repeats at every time
    step (direct encoding) is multiplied once and its current reused, so it costs one step's MACs.
``acs``
    synaptic accumulates: a weight layer whose input is binary spikes costs one add of a weight per
    spike and per fan-out target (``nnz(input) * out_features``; zeros cost nothing). Spike-count
    products of SSA count one add per coincident pair, as spikingjelly's counter does.
``masks``
    events into coincidence (AND) units: ``a AND b`` of two spike trains costs ``nnz(a) + nnz(b)``
    after broadcasting, each spike being delivered once to each unit it reaches. This is how the Lava
    backend maps masks (two synapses into a logic neuron).
``adds``
    other additions: residual adds, sums over tokens, means, a bias or threshold shift added per step.
``neuron_updates`` / ``spikes``
    one state update per neuron per step of every LIF population; the spikes it emits.
``weight_reads``
    one weight read per synaptic accumulate and per MAC of a weight layer (no reuse is assumed).
``state_accesses``
    a membrane read and a write per neuron per step (2 per update).
``activation_accesses``
    analog activations read and written by weight layers (input and output, once each).

Folded, hence not counted (both twins alike): BatchNorm in eval mode (into the preceding weights), the
bias of a weight layer (into the accumulator's start or the neuron's bias current), a constant scale
of a linear map (SSA's scale, the integrated block's mixture weights), a gain or threshold shift that
does not change over time or samples (into the synapses or the threshold), a fixed offset added to a
weight layer's output (learned positions, a poised population's offset). Readouts that compute
exposed signals only (``MechanismSpec.readouts``) are not counted. Elementwise
nonlinearities (ReLU, GELU) cost nothing; a transcendental function (exp, sigmoid, tanh) counts as
one MAC per value, a floor rather than a price.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .errors import DTypeError, SpikingAttnError, check_int

OPS = ("macs", "acs", "masks", "adds", "neuron_updates", "spikes", "weight_reads", "state_accesses",
       "activation_accesses")

COUNT_RULES: Dict[type, Callable] = {}


class UncountedModuleError(SpikingAttnError):
    """A module type has no count rule."""


def count_rule(*classes: type):
    """Register the decorated function ``rule(module, call)`` as the count rule of each of ``classes``."""
    def register(fn):
        for cls in classes:
            COUNT_RULES[cls] = fn
        return fn
    return register


def no_own_ops(module, call) -> None:
    """The rule of a module whose work is all in its children (or folded away)."""


def readout_modules(model: nn.Module) -> set:
    """Modules that compute exposed signals only (the mechanism's ``MechanismSpec.readouts``: predictive
    coding's reconstruction, the basal forebrain's plasticity). They run in ``forward`` for the losses
    and figures that read them, but no output depends on them, so an inference does not need them and
    they are not counted."""
    config = getattr(model, "config", None)
    name = getattr(config, "mechanism", None)
    if not isinstance(name, str):
        return set()
    from .mechanisms import MECHANISMS

    if name not in MECHANISMS:
        return set()
    fragments = MECHANISMS.get(name).readouts
    return {m for n, m in model.named_modules() if any(f in n for f in fragments)}


def rule_for(module: nn.Module) -> Optional[Callable]:
    for cls in type(module).__mro__:
        if cls in COUNT_RULES:
            return COUNT_RULES[cls]
    return None


def is_binary(t: torch.Tensor) -> bool:
    """Every value is 0 or 1 (spikes)."""
    return bool(((t == 0) | (t == 1)).all())


def nnz(t: torch.Tensor) -> float:
    return float(torch.count_nonzero(t))


def mask_events(a: torch.Tensor, b: torch.Tensor) -> float:
    """Events into the coincidence units of ``a AND b`` (broadcast): ``nnz(a) + nnz(b)``, each spike counted
    once per unit it reaches."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return nnz(a.expand(shape)) + nnz(b.expand(shape))


@dataclass
class Call:
    """One call of a module, as its rule sees it: the arguments, the output, and the counter (for the
    outputs of child modules during this forward pass)."""

    module: nn.Module
    name: str
    args: tuple
    kwargs: dict
    output: object
    counter: "OpCounter"

    def add(self, **ops: float) -> None:
        """Add ``ops`` to the entry of this module."""
        self.counter.add(self.name, type(self.module).__name__, **ops)

    def add_to(self, module: nn.Module, **ops: float) -> None:
        """Add ``ops`` to the entry of ``module`` (a child that does work its parent's forward runs, such as
        attention whose ``route`` a mechanism calls)."""
        self.counter.add(self.counter.names[module], type(module).__name__, **ops)

    def output_of(self, module: nn.Module):
        """The last output of a child module in this forward pass."""
        return self.counter.output_of(module)


@dataclass
class OpReport:
    """Counts per module (entries in the order they were first counted), summed over ``samples``."""

    per_layer: "OrderedDict[str, Dict[str, float]]" = field(default_factory=OrderedDict)
    types: Dict[str, str] = field(default_factory=dict)
    samples: int = 0
    firing: Dict[str, List[float]] = field(default_factory=dict)  # population -> [spikes, neuron-steps] (SpikeRecorder)
    outputs: Optional[torch.Tensor] = None  # what the model returned for every sample, in order

    def totals(self) -> Dict[str, float]:
        out = {op: 0.0 for op in OPS}
        for ops in self.per_layer.values():
            for op, value in ops.items():
                out[op] += value
        return out

    def per_sample(self) -> "OpReport":
        """The same report divided by the number of samples."""
        n = max(self.samples, 1)
        return OpReport(OrderedDict((k, {op: v / n for op, v in ops.items()}) for k, ops in self.per_layer.items()),
                        dict(self.types), 1, {k: list(v) for k, v in self.firing.items()}, self.outputs)

    def firing_rates(self) -> Dict[str, float]:
        return {k: s / n for k, (s, n) in self.firing.items() if n}


class OpCounter:
    """Hooks on every module of ``model`` that apply its count rule after each call.

    Use ``with OpCounter(model) as counter: model(x)``; ``counter.report`` holds the counts.
    """

    def __init__(self, model: nn.Module, event_driven: Optional[bool] = None) -> None:
        if not isinstance(model, nn.Module):
            raise DTypeError(f"operation counting needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.names = {m: (n or "model") for n, m in model.named_modules()}  # twins share every name
        missing = [(n, m) for m, n in self.names.items() if rule_for(m) is None]
        if missing:
            name, module = missing[0]
            raise UncountedModuleError(
                f"module {name!r} of type {type(module).__qualname__} has no operation count rule, so its cost "
                f"would be skipped; register one in the file that defines it: "
                f"@spiking_attn.opcount.count_rule({type(module).__name__})")
        if event_driven is None:  # a model with populations runs on events; a dense one on every value
            from .neuron import populations

            event_driven = bool(populations(model))
        self.event_driven = bool(event_driven)
        config = getattr(model, "config", None)
        self.timesteps = int(getattr(config, "timesteps", 1) or 1) if self.event_driven else 1
        self.readouts = readout_modules(model)
        self.report = OpReport()
        self._outputs: Dict[nn.Module, object] = {}
        self._handles: list = []

    def add(self, name: str, type_name: Optional[str] = None, **ops: float) -> None:
        unknown = set(ops) - set(OPS)
        if unknown:
            raise SpikingAttnError(f"unknown operation kind(s) {sorted(unknown)}; known: {', '.join(OPS)}")
        entry = self.report.per_layer.setdefault(name, {op: 0.0 for op in OPS})
        if type_name is not None:
            self.report.types.setdefault(name, type_name)
        for op, value in ops.items():
            entry[op] += float(value)

    def output_of(self, module: nn.Module):
        if module not in self._outputs:
            raise SpikingAttnError(f"module {self.names.get(module, type(module).__name__)!r} did not run in this "
                                   f"forward pass, so its output cannot be counted")
        return self._outputs[module]

    def _hook(self, module: nn.Module, args, kwargs, output) -> None:
        self._outputs[module] = output
        rule_for(module)(module, Call(module, self.names[module], args, kwargs, output, self))

    def _start(self, module, args) -> None:
        self._outputs = {}  # a new forward pass of the whole model: outputs of earlier calls do not count

    def __enter__(self) -> "OpCounter":
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.names
                         if m not in self.readouts]
        self._handles.append(self.model.register_forward_pre_hook(self._start))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._outputs = {}

    def end_call(self, samples: int) -> None:
        """Close one forward pass over ``samples`` samples (forget the outputs it kept)."""
        self.report.samples += samples
        self._outputs = {}


def eval_batches(model: nn.Module, x: torch.Tensor, cue: Optional[torch.Tensor], batch_size: int):
    """Yield ``(rows, model(x[rows][, cue[rows]]))`` over ``x`` in ``batch_size`` pieces, in eval mode; the
    model's training mode is restored afterwards (also on error)."""
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, x.shape[0], batch_size):
            rows = slice(lo, lo + batch_size)
            yield rows, (model(x[rows], cue[rows]) if cue is not None else model(x[rows]))
    finally:
        model.train(was_training)


@torch.no_grad()
def count_ops(model: nn.Module, x: torch.Tensor, cue: Optional[torch.Tensor] = None, *,
              batch_size: int = 64, event_driven: Optional[bool] = None) -> OpReport:
    """Run ``model(x[, cue])`` in eval mode, ``batch_size`` samples at a time, and count its operations.
    Returns the totals over all samples (``report.per_sample()`` divides by their number), with the model's
    outputs for every sample (``report.outputs``).

    ``event_driven`` (default: whether the model has LIF populations): binary inputs of weight layers
    cost accumulates per spike. A dense model runs on hardware that computes every value, so its weight
    layers count MACs whatever their input holds (a one-hot cue, a row of zeros after a ReLU)."""
    from .recorder import SpikeRecorder

    check_int(batch_size, "batch_size", low=1)
    outputs = []
    with OpCounter(model, event_driven) as counter, SpikeRecorder(model, keep="counts") as recorder:
        for rows, out in eval_batches(model, x, cue, batch_size):
            outputs.append(out)
            counter.end_call(x[rows].shape[0])
    counter.report.firing = {name: [float(s), float(n)] for name, (s, n) in recorder.counts.items() if n}
    if all(isinstance(o, torch.Tensor) for o in outputs):
        counter.report.outputs = torch.cat(outputs)
    return counter.report


# ---------------------------------------------------------------------------------------------------
# Rules of torch's own modules and of the neuron


@count_rule(nn.Linear)
def count_linear(layer: nn.Linear, call: Call) -> None:
    """Binary input: an add of a weight per spike and target. Analog input: a MAC per input value and target,
    plus the input read and the output written."""
    x = call.args[0]
    if call.counter.event_driven and is_binary(x):
        acs = nnz(x) * layer.out_features
        call.add(acs=acs, weight_reads=acs)
    else:
        values = x.numel() / repeats_over_time(x, call.counter.timesteps)  # a repeated step is computed once
        macs = values * layer.out_features
        call.add(macs=macs, weight_reads=macs, activation_accesses=values * (1 + layer.out_features / layer.in_features))


def repeats_over_time(x: torch.Tensor, timesteps: int) -> int:
    """``timesteps`` if ``x`` (time first, possibly flattened with the batch) holds the same values at every
    step, as the direct encoding gives the first layer; else 1. The layer then computes one step and its
    output current is reused."""
    if timesteps <= 1 or x.shape[0] % timesteps:
        return 1
    steps = x.reshape(timesteps, -1)
    return timesteps if bool((steps == steps[:1]).all()) else 1


@count_rule(nn.Conv2d)
def count_conv2d(layer: nn.Conv2d, call: Call) -> None:
    """As ``count_linear``, per connection the convolution makes: binary input, an add of a weight per spike
    and output it reaches (counted exactly, padding and stride included); analog input, a MAC per output
    value and kernel entry."""
    import torch.nn.functional as F

    x = call.args[0]
    per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
    if call.counter.event_driven and is_binary(x):
        ones = x.new_ones(layer.groups, layer.in_channels // layer.groups, *layer.kernel_size)
        reached = F.conv2d(x, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        acs = float(reached.sum()) * (layer.out_channels // layer.groups)
        call.add(acs=acs, weight_reads=acs)
    else:
        outputs = call.output.numel() / repeats_over_time(x, call.counter.timesteps)
        macs = outputs * per_output
        call.add(macs=macs, weight_reads=macs,
                 activation_accesses=x.numel() / repeats_over_time(x, call.counter.timesteps) + outputs)


@count_rule(nn.AvgPool2d)
def count_avg_pool(pool: nn.AvgPool2d, call: Call) -> None:
    """Each output sums its window (the division by the window size folds into the next weights)."""
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0] * pool.kernel_size[1]
    window = k * k if isinstance(pool.kernel_size, int) else k
    call.add(adds=call.output.numel() * (window - 1))


# BatchNorm folds into the preceding weights in eval mode; ReLU/GELU compare or look up; containers,
# Identity, Dropout (eval) and Flatten do nothing.
count_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.GELU, nn.Identity, nn.Dropout, nn.ModuleList,
           nn.Sequential, nn.Flatten)(no_own_ops)


def varies_per_step_or_sample(mod: Optional[torch.Tensor], x: torch.Tensor) -> bool:
    """Whether a modulation tensor broadcast to ``x`` (``[T, B, ...]``) is given per step or per sample: it has
    axes that line up with T or B (whatever their size in this call: one step or one sample still changes
    from call to call). A gain over the neurons alone is static and folds into the synapses."""
    if mod is None or not isinstance(mod, torch.Tensor):
        return False
    return mod.dim() > x.dim() - 2


def count_population(pop: nn.Module, call: Call) -> None:
    """One update per neuron per step (a membrane read and write); the spikes. A gain or threshold shift that
    changes per step or sample costs a MAC or an add per neuron-step; a static one folds away."""
    x = call.args[0]
    spikes = call.output.spikes if hasattr(call.output, "spikes") else call.output
    updates, fired = float(x.numel()), nnz(spikes)
    gain = call.kwargs.get("gain", call.args[1] if len(call.args) > 1 else None)
    shift = call.kwargs.get("threshold_shift", call.args[2] if len(call.args) > 2 else None)
    call.add(neuron_updates=updates, spikes=fired, state_accesses=2 * updates,
             macs=updates if varies_per_step_or_sample(gain, x) else 0.0,
             adds=updates if varies_per_step_or_sample(shift, x) else 0.0)


def _register_population() -> None:
    from .neuron import LIFPopulation

    count_rule(LIFPopulation)(count_population)


_register_population()
