"""ANN-to-SNN conversion of plain torch models: ``convert_torch_model(model, calibration_data, method, timesteps)``.

Methods (as ``convert`` for the library's own twins):

* ``rate`` and ``qcfs``: an ``nn.Sequential`` (nested ones are flattened) of ``nn.Linear``, ``nn.Conv2d``,
  ``nn.BatchNorm1d/2d``, ``nn.ReLU`` or ``QCFS``, ``nn.AvgPool2d``, ``nn.Flatten``, ``nn.Dropout`` and
  ``nn.Identity`` becomes a ``SpikingSequential``:

  - every ReLU/QCFS becomes an integrate-and-fire population (``LIFPopulation(dv=0, vth=lambda,
    reset='subtract', v_init=0.5)``), ``lambda`` being the activation's calibrated scale (rate) or its
    learned clip (qcfs; a ReLU kept beside QCFS activations is calibrated, as ``convert`` does); the
    layer that reads its spikes has its weights multiplied by ``lambda``;
  - a BatchNorm is folded into the Linear/Conv2d before it; Dropout and Identity go (eval mode);
  - an ``nn.AvgPool2d`` between a population and the next weight layer is *folded into that layer*, so
    that the layer reads the binary spikes themselves: before a Linear (through a Flatten), the pooling
    and the flattening compose with the weights into one Linear over the unpooled spikes; before a
    Conv2d, a pooling of non-overlapping windows (``kernel <= stride``, no padding) and the convolution
    compose into one convolution with kernel ``(k_c - 1) d_c s + k`` and stride ``s_c s`` (the input is
    first cropped, or padded with zeros, to the rows and columns the pooling reads). Both are exact
    rewrites of the dense layers. A pooling that cannot be folded (overlapping or padded windows before
    a Conv2d) stays, and an integrate-and-fire population of threshold 1 re-binarises its output (a
    spiking average pool: its spikes stand for the same ``lambda`` as those it pools). A pooling with
    no weight layer after it (before a population, or at the output) stays as it is.

  The result is spike-driven: every weight layer reads binary spikes, except the first, which reads the
  analog input (direct encoding: the input is repeated at every step). A weight layer that reads
  another one's output with no activation between would read a current: an error.
  GELU, LayerNorm, softmax and ``nn.MultiheadAttention`` have no binary form and stop the conversion,
  with each such module named; so does every module whose own ``forward`` calls a nonlinear torch
  function (``functional.functional_calls``), and every other module type.
* ``td``: any model converts exactly (``TorchTDModel``): the input is spread as ``x / T`` per step and
  every unit emits ``f(S_t) - f(S_{t-1})`` of its running input ``S_t`` (``td.TDRun``); summed over the
  steps, the outputs are the dense ones. ``nn.Sequential`` containers are walked; Flatten, Unflatten,
  Identity, AvgPool and (eval) Dropout pass changes straight through (linear, no constant); every other
  module, a custom container included, runs as one unit. A custom container is never walked: its own
  ``forward`` may hold functional nonlinearities, products, or constants (``x + self.pos``) that a
  change passed through it would get wrong; as a unit it is exact whatever it does.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from spiking_attn.errors import DTypeError, ShapeError, SpikingAttnError, check_choice, check_int, check_tensor
from spiking_attn.neuron import LIFPopulation

from .calibration import MODES, activation_scales
from .conversion import DEFAULT_TIMESTEPS, METHODS, Conversion, _check_timesteps, evaluate_conversion
from .functional import functional_calls
from .qcfs import QCFS
from .rules import VALUE_FLOOR, ConversionError
from .td import TDRun

__all__ = ["SpikingSequential", "TorchTDModel", "convert_torch_model"]

WEIGHT_TYPES = (nn.Linear, nn.Conv2d)
ACTIVATION_TYPES = (nn.ReLU, QCFS)
PASSIVE_TYPES = (nn.AvgPool2d, nn.Flatten)
DROPOUT = nn.modules.dropout._DropoutNd  # Dropout, Dropout1d/2d/3d, AlphaDropout: the identity in eval mode
DROPPED_TYPES = (nn.Identity, DROPOUT)
RATE_TYPES = (*WEIGHT_TYPES, nn.BatchNorm1d, nn.BatchNorm2d, *ACTIVATION_TYPES, *PASSIVE_TYPES, nn.Identity)
TD_PASS_THROUGH = (nn.Flatten, nn.Unflatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)

TD_HINT = "--method td converts it exactly (not binary)"
NO_BINARY_FORM = {
    nn.GELU: f"GELU has no binary-spike form: use nn.ReLU (or QCFS) and retrain or fine-tune, or {TD_HINT}",
    nn.LayerNorm: (f"LayerNorm divides by a statistic of the activations, which spikes cannot do: use "
                   f"BatchNorm after a Linear/Conv2d (folded into it), or {TD_HINT}"),
    nn.MultiheadAttention: (f"softmax attention normalises every score by all the others at once and multiplies "
                            f"activations: it has no binary-spike form; use the library's spike-driven attention "
                            f"(SDSA/SSA), or {TD_HINT}"),
    nn.Softmax: f"softmax has no binary-spike form; {TD_HINT}",
}


def _name(name: str) -> str:
    return name or "<root>"


def _plain_sequential(module: nn.Module) -> bool:
    """An ``nn.Sequential`` that runs its children in order and nothing else (its forward is not overridden)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _kind(module: nn.Module) -> Optional[type]:
    """The supported type ``module`` is an instance of, if its forward is that type's own (a subclass with
    its own forward could do anything)."""
    if isinstance(module, DROPOUT) and type(module).__module__.startswith("torch.nn."):
        return DROPOUT
    for base in RATE_TYPES:
        if isinstance(module, base) and type(module).forward is base.forward:
            return base
    return None


def _leaves(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(qualified name, module)`` of the model in call order, nested plain ``nn.Sequential`` flattened."""
    out: List[Tuple[str, nn.Module]] = []

    def walk(name: str, module: nn.Module) -> None:
        if _plain_sequential(module):
            for child_name, child in module._modules.items():
                if child is not None:
                    walk(f"{name}.{child_name}" if name else child_name, child)
        else:
            out.append((name, module))

    walk("", model)
    return out


# ---------------------------------------------------------------------------------------------------
# Input checks


def _check_inputs(model, calibration_data, method, mode, batch_size, evaluation):
    if not isinstance(model, nn.Module):
        raise DTypeError(f"convert_torch_model takes an nn.Module, got {type(model).__name__}")
    check_choice(method, "method", METHODS)
    check_choice(mode, "mode", MODES)
    check_int(batch_size, "batch_size", low=1)
    if not isinstance(calibration_data, torch.Tensor):
        raise DTypeError(f"calibration_data must be a tensor [B, ...] of model inputs, got "
                         f"{type(calibration_data).__name__}")
    if calibration_data.dim() == 0 or calibration_data.shape[0] == 0:
        raise SpikingAttnError("the calibration set is empty (calibration_data holds no samples)")
    x = check_tensor(calibration_data, "calibration_data", ndim=range(2, 9))
    if evaluation is not None and not isinstance(evaluation, dict):
        raise DTypeError(f"evaluation must be a dict with 'x' (and 'y'), got {type(evaluation).__name__}")
    evaluation = dict(evaluation or {"x": x})
    unknown = sorted(set(evaluation) - {"x", "y"})
    if unknown or "x" not in evaluation:
        raise SpikingAttnError(f"evaluation holds 'x' (and 'y'), got keys {sorted(evaluation)}")
    ex = check_tensor(evaluation["x"], "evaluation['x']")
    if ex.shape[1:] != x.shape[1:]:
        raise ShapeError(f"evaluation['x'] has samples of shape {tuple(ex.shape[1:])}, the calibration data "
                         f"{tuple(x.shape[1:])}")
    y = evaluation.get("y")
    if y is not None and (not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.shape != ex.shape[:1]):
        raise ShapeError("evaluation['y'] must be an integer tensor with one label per evaluation sample")
    return x, ex, y


def _probe(model: nn.Module, x: torch.Tensor) -> Dict[str, List[str]]:
    """The functional calls of every module on the first calibration samples; a calibration set the model
    cannot run on is a ShapeError."""
    try:
        calls = functional_calls(model, x[:2])
    except (RuntimeError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ShapeError(f"calibration_data of shape {tuple(x.shape)} does not fit the model: {first}") from None
    return calls


# ---------------------------------------------------------------------------------------------------
# rate and qcfs: structure


def _rate_problems(leaves, calls: Dict[str, List[str]], method: str) -> List[str]:
    """One line per module the binary conversion cannot take."""
    problems, seen = [], {}
    for name, leaf in leaves:
        if id(leaf) in seen:
            problems.append(f"{_name(name)} ({type(leaf).__name__}) is the same module as {_name(seen[id(leaf)])}: "
                            f"give each place its own module (each becomes its own population or layer)")
            continue
        seen[id(leaf)] = name
        if _kind(leaf) is not None:
            continue
        inside = [(f"{name}.{n}" if name and n else (n or name), m) for n, m in leaf.named_modules()]
        described = False
        for sub_name, sub in inside:
            hint = next((h for t, h in NO_BINARY_FORM.items() if isinstance(sub, t)), None)
            if hint is not None:
                problems.append(f"{_name(sub_name)} ({type(sub).__name__}): {hint}")
                described = True
            elif sub_name in calls and (sub is leaf or _kind(sub) is None):
                problems.append(f"{_name(sub_name)} ({type(sub).__name__}) calls {', '.join(calls[sub_name])} inside "
                                f"forward; the converter sees modules only: use nn.ReLU modules (and no products "
                                f"of activations) in an nn.Sequential, or {TD_HINT}")
                described = True
        if not described:
            problems.append(f"{_name(name)} ({type(leaf).__name__}): no {method} rule for this module type "
                            f"(convertible: an nn.Sequential of {', '.join(t.__name__ for t in RATE_TYPES)}, "
                            f"Dropout); {TD_HINT}")
    return problems


@torch.no_grad()
def _fold_batchnorm(layer: nn.Module, bn: nn.Module, name: str) -> nn.Module:
    """A copy of the Linear/Conv2d ``layer`` that computes ``bn(layer(x))`` (eval-mode statistics)."""
    if bn.running_mean is None:
        raise ConversionError(f"{name} ({type(bn).__name__}) keeps no running statistics (track_running_stats="
                              f"False): it normalises by batch statistics even in eval mode and cannot be folded")
    if bn.num_features != layer.weight.shape[0]:
        raise ConversionError(f"{name} ({type(bn).__name__}) has {bn.num_features} features, the layer before it "
                              f"{layer.weight.shape[0]}")
    folded = copy.deepcopy(layer)
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
    folded.weight.mul_(scale.reshape(-1, *([1] * (folded.weight.dim() - 1))))
    bias = folded.bias if folded.bias is not None else torch.zeros_like(shift)
    folded.bias = nn.Parameter(bias * scale + shift)
    return folded


def _prepare(leaves, shapes: Dict[str, tuple]) -> List[Tuple[str, nn.Module]]:
    """Drop Dropout/Identity, fold each BatchNorm into the weight layer before it; copies, the dense model is
    left untouched."""
    out: List[Tuple[str, nn.Module]] = []
    for name, leaf in leaves:
        kind = _kind(leaf)
        if kind in DROPPED_TYPES:
            continue
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            before = out[-1] if out else None
            wanted = nn.Linear if kind is nn.BatchNorm1d else nn.Conv2d
            flat = kind is nn.BatchNorm2d or len(shapes[name]) == 1  # BatchNorm1d on [B, features]
            if before is None or not isinstance(before[1], wanted) or not flat:
                raise ConversionError(
                    f"{_name(name)} ({kind.__name__}) must come right after the {wanted.__name__} it normalises "
                    f"(on [B, features] for BatchNorm1d), to be folded into its weights")
            out[-1] = (before[0], _fold_batchnorm(before[1], leaf, _name(name)))
            continue
        out.append((name, copy.deepcopy(leaf)))  # the spiking model shares nothing with the dense one
    return out


def _input_shapes(model: nn.Module, leaves, x: torch.Tensor) -> Dict[str, tuple]:
    """The per-sample input shape of every leaf, from one forward pass on one sample."""
    shapes: Dict[str, tuple] = {}

    def record(name: str):
        def hook(module, args) -> None:  # returns None: the input is left as it is
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    handles = [leaf.register_forward_pre_hook(record(name)) for name, leaf in leaves]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return shapes


# ---------------------------------------------------------------------------------------------------
# rate and qcfs: average pooling folded into the weight layer after it


class FitSize2d(nn.Module):
    """Crop, or pad with zeros at the bottom and right, the last two axes to ``(height, width)``: the rows
    and columns a folded pooling reads. Binary stays binary."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :self.height, :self.width]
        return nn.functional.pad(x, (0, self.width - x.shape[-1], 0, self.height - x.shape[-2]))


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@torch.no_grad()
def fold_pool_into_conv(pool: nn.AvgPool2d, conv: nn.Conv2d, in_shape: Sequence[int]):
    """``[FitSize2d or nothing, conv']`` computing ``conv(pool(x))`` for inputs of per-sample shape
    ``in_shape`` ``(C, H, W)``, or None when the two do not compose into one convolution.

    Composes when the pooling windows do not overlap (``kernel <= stride``), have no padding, and the
    convolution pads with zeros: pooled row ``m`` reads input rows ``m s .. m s + k - 1``, so a kernel tap
    ``a`` of the convolution (dilation ``d_c``) becomes taps ``a d_c s .. a d_c s + k - 1`` of a kernel of
    size ``(k_c - 1) d_c s + k``, stride ``s_c s`` and padding ``p_c s``, each weighing ``w / divisor``.
    The input is fitted to ``H_p s`` rows (``H_p`` the pooled height) so that the rows outside the pooled
    grid are zeros, as the pooled padding is.
    """
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    padding = conv.padding
    if isinstance(padding, str):
        if padding != "valid":
            return None
        padding = (0, 0)
    if any(p) or any(ki > si for ki, si in zip(k, s)) or conv.padding_mode != "zeros" or len(in_shape) != 3:
        return None
    size = tuple(in_shape[-2:])
    if pool.ceil_mode and any((n - ki) % si for n, ki, si in zip(size, k, s)):
        return None  # ceil mode adds a partial window at the edge
    pooled = [(n - ki) // si + 1 for n, ki, si in zip(size, k, s)]
    used = tuple(m * si for m, si in zip(pooled, s))
    divisor = pool.divisor_override or k[0] * k[1]
    kc, sc, dc = conv.kernel_size, conv.stride, conv.dilation
    kernel = [(kci - 1) * dci * si + ki for kci, dci, si, ki in zip(kc, dc, s, k)]
    weight = conv.weight.new_zeros(conv.out_channels, conv.in_channels // conv.groups, *kernel)
    for a in range(kc[0]):
        for b in range(kc[1]):
            r, c = a * dc[0] * s[0], b * dc[1] * s[1]
            weight[:, :, r:r + k[0], c:c + k[1]] += conv.weight[:, :, a, b, None, None] / divisor
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(kernel), stride=(sc[0] * s[0], sc[1] * s[1]),
                       padding=(padding[0] * s[0], padding[1] * s[1]), groups=conv.groups,
                       bias=conv.bias is not None).to(conv.weight)
    folded.weight.copy_(weight)
    if conv.bias is not None:
        folded.bias.copy_(conv.bias)
    return ([] if used == size else [FitSize2d(*used)]) + [folded]


@torch.no_grad()
def fold_into_linear(chain: Sequence[nn.Module], linear: nn.Linear, in_shape: Sequence[int]) -> List[nn.Module]:
    """``[Flatten, linear']`` computing ``linear(chain(x))`` for inputs of per-sample shape ``in_shape``,
    where ``chain`` (poolings and a final flatten) is linear: ``linear'`` holds the weights pulled back
    through the chain, ``W' = J_chain^T W`` (one vector-Jacobian product, the output rows as a batch)."""
    rows = linear.weight.shape[0]
    with torch.enable_grad():
        probe = linear.weight.new_zeros(rows, *in_shape, requires_grad=True)
        out = probe
        for module in chain:
            out = module(out)
        if out.shape != linear.weight.shape:
            raise ConversionError(f"the layers before a Linear give [{', '.join(map(str, out.shape[1:]))}] per sample, "
                                  f"it takes {linear.in_features}")
        (weight,) = torch.autograd.grad(out, probe, grad_outputs=linear.weight.detach())
    folded = nn.Linear(weight[0].numel(), rows, bias=linear.bias is not None).to(linear.weight)
    folded.weight.copy_(weight.reshape(rows, -1))
    if linear.bias is not None:
        folded.bias.copy_(linear.bias)
    return [nn.Flatten(), folded]


# ---------------------------------------------------------------------------------------------------
# rate and qcfs: the spiking model


def _population(vth: float) -> LIFPopulation:
    return LIFPopulation(dv=0.0, vth=vth, reset="subtract", v_init=0.5)


class _Builder:
    """Turns the prepared layers into stages, tracking what the stream between them holds: the analog
    input ('input'), a current ('current') or spikes each standing for ``unit`` ('spikes')."""

    def __init__(self, scales: Dict[str, float], shapes: Dict[str, tuple]) -> None:
        self.scales, self.shapes = scales, shapes
        self.stages: List[nn.Module] = []
        self.names: List[str] = []
        self.thresholds: Dict[str, float] = {}
        self.sources: Dict[str, str] = {}
        self.stream, self.unit, self.last_layer = "input", 1.0, None
        self.pending: List[Tuple[str, nn.Module]] = []

    def emit(self, module: nn.Module, name: str) -> None:
        self.stages.append(module)
        self.names.append(name)

    def add_population(self, vth: float, lam: float, source: str) -> None:
        key = f"stages.{len(self.stages)}"
        self.emit(_population(vth), source)
        self.thresholds[key], self.sources[key] = vth, source
        self.stream, self.unit = "spikes", lam

    def flush(self, rebinarise: bool) -> None:
        """Emit the pending poolings and flattens as they are; with ``rebinarise`` on a spike stream, each
        pooling is followed by a population of threshold 1 (its spikes stand for the same value)."""
        for name, module in self.pending:
            self.emit(module, name)
            if rebinarise and self.stream == "spikes" and isinstance(module, nn.AvgPool2d):
                self.add_population(1.0, self.unit, f"{name} (pooling)")
        self.pending = []

    def activation(self, name: str) -> None:
        self.flush(rebinarise=False)  # a population may read averaged spikes: its input is a current anyway
        lam = max(float(self.scales[name]), VALUE_FLOOR)
        self.add_population(lam / self.unit, lam, name)

    def weight_layer(self, name: str, layer: nn.Module) -> None:
        if self.stream == "current":
            raise ConversionError(f"{_name(name)} ({type(layer).__name__}) reads the output of "
                                  f"{_name(self.last_layer)} with no activation between: its input would be a "
                                  f"current, not spikes; put a ReLU between the two, or merge them into one layer")
        folded = self.fold(layer)
        if folded is None:
            self.flush(rebinarise=True)
            folded = [layer]
        with torch.no_grad():
            folded[-1].weight.mul_(self.unit)  # a spike stands for `unit`
        for module in folded:
            self.emit(module, name)
        self.pending, self.stream, self.unit, self.last_layer = [], "current", 1.0, name

    def fold(self, layer: nn.Module) -> Optional[List[nn.Module]]:
        pools = [m for _, m in self.pending if isinstance(m, nn.AvgPool2d)]
        if not pools:
            return None
        start = self.shapes[self.pending[0][0]]
        if isinstance(layer, nn.Linear):
            last = self.pending[-1][1]
            if isinstance(last, nn.Flatten) and last.start_dim == 1 and last.end_dim == -1:
                return fold_into_linear([m for _, m in self.pending], layer, start)
            return None
        if len(self.pending) == 1:
            return fold_pool_into_conv(pools[0], layer, start)
        return None

    def finish(self) -> float:
        self.flush(rebinarise=False)
        return self.unit


class SpikingSequential(nn.Module):
    """A rate-coded spiking chain made by ``convert_torch_model``: weight layers, integrate-and-fire
    populations and the linear reshapes between them, run over ``timesteps`` steps.

    Call ``model(x)`` with the dense model's input ``[B, ...]`` (repeated at every step: direct encoding)
    or a time-first input ``[T, B, ...]``; it returns the mean over the steps of the last stage's output
    (times the value of a spike, if the last stage is a population). ``steps(x)`` gives every step's
    output ``[T, B, ...]``. Stateless stages fold T into the batch; every population starts from rest at
    each call. The stages before the first population see the same input at every step and run once.

    Attributes:
        stages: the stages in order (``nn.ModuleList``); ``sources[i]`` names the dense module stage ``i``
            comes from.
        input_shape: the shape of one input sample.
        output_unit: the value of one unit of the last stage's output.
    """

    def __init__(self, stages: Sequence[nn.Module], timesteps: int, input_shape: Sequence[int],
                 output_unit: float = 1.0, sources: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.stages = stages if isinstance(stages, nn.ModuleList) else nn.ModuleList(stages)
        self.timesteps = check_int(timesteps, "timesteps", low=1, high=100000)
        self.input_shape = tuple(input_shape)
        self.output_unit = float(output_unit)
        self.sources = list(sources) if sources is not None else [""] * len(self.stages)
        self._first_population = next((i for i, s in enumerate(self.stages) if isinstance(s, LIFPopulation)),
                                      len(self.stages))

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}, input_shape={self.input_shape}, output_unit={self.output_unit:g}"

    def with_timesteps(self, timesteps: int) -> "SpikingSequential":
        """The same model (the stages are shared, not copied) run for ``timesteps`` steps."""
        if timesteps == self.timesteps:
            return self
        return SpikingSequential(self.stages, timesteps, self.input_shape, self.output_unit,
                                 self.sources).train(self.training)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x")
        rank = len(self.input_shape)
        if x.dim() == rank + 1 and tuple(x.shape[1:]) == self.input_shape:
            t, b, start = self.timesteps, x.shape[0], self._first_population
            h = x
            for stage in self.stages[:start]:  # the same at every step
                h = stage(h)
            h = h.unsqueeze(0).expand(t, *h.shape).reshape(t * b, *h.shape[1:])  # [T*B, ...]
        elif x.dim() == rank + 2 and tuple(x.shape[2:]) == self.input_shape:
            t, b, start = x.shape[0], x.shape[1], 0
            h = x.reshape(t * b, *x.shape[2:])  # [T*B, ...]
        else:
            raise ShapeError(f"x must be [B, {', '.join(map(str, self.input_shape))}] (repeated over "
                             f"{self.timesteps} steps) or [T, B, ...] with samples of that shape, got {tuple(x.shape)}")
        for stage in self.stages[start:]:
            if isinstance(stage, LIFPopulation):
                h = stage(h.reshape(t, b, *h.shape[1:])).reshape(t * b, *h.shape[1:])  # [T, B, ...] -> [T*B, ...]
            else:
                h = stage(h)
        return (h * self.output_unit).reshape(t, b, *h.shape[1:])  # [T, B, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x).mean(0)


def _binary_conversion(model, leaves, x, calls, method, steps, mode, percentile, batch_size):
    problems = _rate_problems(leaves, calls, method)
    if problems:
        raise ConversionError(f"--method {method} cannot convert {len(problems)} module(s): " + "; ".join(problems))
    shapes = _input_shapes(model, leaves, x)
    silent = [_name(n) for n, _ in leaves if n not in shapes]
    if silent:
        raise ConversionError(f"module(s) {', '.join(silent)} did not run on the calibration data")
    activations = [n for n, leaf in leaves if _kind(leaf) in ACTIVATION_TYPES]
    clips = {n: float(leaf.clip.detach()) for n, leaf in leaves if _kind(leaf) is QCFS} if method == "qcfs" else {}
    if method == "qcfs" and not clips:
        raise ConversionError("--method qcfs takes its thresholds from the learned clips of QCFS activations, and this "
                              "model has none: use --method rate, or replace its ReLUs by QCFS and fine-tune")
    calibrated = [n for n in activations if n not in clips]  # under qcfs, a ReLU the model keeps is calibrated
    scales = activation_scales(model, x, modules=calibrated, mode=mode, percentile=percentile,
                               batch_size=batch_size) if calibrated else {}
    scales.update(clips)
    builder = _Builder(scales, shapes)
    for name, layer in _prepare(leaves, shapes):
        if isinstance(layer, PASSIVE_TYPES):
            if isinstance(layer, nn.Flatten) and layer.start_dim == 0:
                raise ConversionError(f"{_name(name)} (Flatten) flattens the batch axis (start_dim=0)")
            builder.pending.append((name, layer))
        elif isinstance(layer, ACTIVATION_TYPES):
            builder.activation(name)
        else:
            builder.weight_layer(name, layer)
    unit = builder.finish()
    spiking = SpikingSequential(builder.stages, steps[-1], x.shape[1:], unit, builder.names).eval()
    return spiking, builder.thresholds, builder.sources


# ---------------------------------------------------------------------------------------------------
# td


class TorchTDModel(nn.Module):
    """The exact time-difference form of a plain torch model: ``forward(x)`` runs ``timesteps`` steps and
    returns the summed output (equal to ``dense(x)``); ``steps(x)`` gives each step's change ``[T, ...]``.

    ``nn.Sequential`` containers are walked, linear reshapes and poolings pass the changes through, and
    every other module is one unit (module docstring). The dense model is shared, not copied; it runs in
    eval mode (exact only there) and gets its own mode back afterwards. ``units`` names each unit, with
    what it is.
    """

    def __init__(self, dense: nn.Module, timesteps: int, units: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.dense = dense
        self.timesteps = check_int(timesteps, "timesteps", low=1, high=100000)
        self.units = dict(units) if units is not None else td_units(dense)
        self._names = {id(m): n for n, m in dense.named_modules()}

    def with_timesteps(self, timesteps: int) -> "TorchTDModel":
        """The same td form (the dense model is shared) run for ``timesteps`` steps."""
        if timesteps == self.timesteps:
            return self
        return TorchTDModel(self.dense, timesteps, self.units).train(self.training)

    def _unit(self, module: nn.Module, run: TDRun, change):
        def output(*args):
            out = module(*args)
            if not isinstance(out, torch.Tensor):
                raise ConversionError(f"{_name(self._names.get(id(module), ''))} ({type(module).__name__}) returns a "
                                      f"{type(out).__name__}; td runs units with one tensor output")
            return out
        return run.function(module, output, change)

    def _call(self, module: nn.Module, run: TDRun, change: torch.Tensor) -> torch.Tensor:
        if _plain_sequential(module):
            for child in module:
                change = self._call(child, run, change)
            return change
        if isinstance(module, TD_PASS_THROUGH) or (isinstance(module, DROPOUT) and not module.training):
            return module(change)  # linear with no constant: the change of the output is the output of the change
        return self._unit(module, run, change)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x")
        was_training = self.dense.training
        self.dense.eval()  # exact only with eval-mode Dropout and BatchNorm; the mode is restored after
        try:
            run = TDRun(self.timesteps)
            outputs = []
            for t in range(self.timesteps):
                if t:
                    run.next_step()
                outputs.append(self._call(self.dense, run, x / self.timesteps))
        finally:
            self.dense.train(was_training)
        return torch.stack(outputs)  # [T, B, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x).sum(0)


def td_units(model: nn.Module, calls: Optional[Dict[str, List[str]]] = None) -> Dict[str, str]:
    """Every module ``TorchTDModel`` runs as one unit, with what it is: a built-in or custom module type,
    and, for a custom one, the nonlinear calls of its own forward (``calls``, from ``functional_calls``)."""
    calls = calls or {}
    units: Dict[str, str] = {}

    def walk(name: str, module: nn.Module) -> None:
        if _plain_sequential(module):
            for child_name, child in module._modules.items():
                if child is not None:
                    walk(f"{name}.{child_name}" if name else child_name, child)
        elif not isinstance(module, (*TD_PASS_THROUGH, DROPOUT)):
            custom = not type(module).__module__.startswith("torch.")
            why = f"{'custom' if custom else 'built-in'} {type(module).__name__}"
            if custom and calls.get(name):
                why += f", calls {', '.join(calls[name])} in forward"
            units[_name(name)] = why

    walk("", model)
    return units


# ---------------------------------------------------------------------------------------------------
# The entry point


def convert_torch_model(model: nn.Module, calibration_data: torch.Tensor, method: str = "rate",
                        timesteps=DEFAULT_TIMESTEPS, *, evaluation: Optional[dict] = None, mode: str = "percentile",
                        percentile: float = 99.9, batch_size: int = 64, progress: bool = False) -> Conversion:
    """Convert a plain torch model into a spiking (rate, qcfs) or time-difference (td) one.

    Args:
        model: an ``nn.Module``. rate and qcfs take an ``nn.Sequential`` (nested allowed) of Linear,
            Conv2d, BatchNorm1d/2d, ReLU (rate) or QCFS, AvgPool2d, Flatten, Dropout and Identity; td any
            model whose forward takes one tensor and returns one tensor.
        calibration_data: model inputs ``[B, ...]``: the activation scales (rate) are measured on them.
        method: 'rate', 'qcfs' or 'td' (module docstring).
        timesteps: the T (or list of T) to evaluate; the returned model runs the largest.
        evaluation: ``{'x', 'y'}`` for the accuracy-vs-T table (default: the calibration inputs, no labels).
        mode, percentile: how rate conversion reads an activation's scale (``calibration.activation_scales``).
        batch_size: samples per forward pass.
        progress: show a progress bar over T.

    Returns a ``Conversion``: ``model`` (``SpikingSequential`` or ``TorchTDModel``), ``results`` (one row
    per T: ``timesteps``, ``accuracy``, ``mean_abs_output_error``, ``firing_rate``), and, for rate and
    qcfs, ``thresholds`` and ``sources`` per population. The dense model is put in eval mode; its
    weights are not changed.
    """
    x, ex, y = _check_inputs(model, calibration_data, method, mode, batch_size, evaluation)
    steps = _check_timesteps(timesteps)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise SpikingAttnError(f"percentile must be a number in (0, 100], got {percentile!r}")
    dense = model.eval()
    calls = _probe(dense, x)
    if method == "td":
        spiking = TorchTDModel(dense, steps[-1], td_units(dense, calls)).eval()
        dense_accuracy, results = evaluate_conversion(dense, spiking, steps, ex, y, batch_size=batch_size,
                                                  progress=progress)
        return Conversion(spiking, method, dense_accuracy, results)
    spiking, thresholds, sources = _binary_conversion(dense, _leaves(dense), x, calls, method, steps, mode,
                                                      percentile, batch_size)
    dense_accuracy, results = evaluate_conversion(dense, spiking, steps, ex, y, batch_size=batch_size,
                                                  progress=progress)
    return Conversion(spiking, method, dense_accuracy, results, thresholds, sources)


# --- export to the network graph (``spiking_attn.graph``), and so to Lava ------------------------------

def _affine_tail(stages: Sequence[nn.Module], shape: Sequence[int]):
    """``(A, c)`` with ``tail(s) = A s + c`` for the stages after the last population (weight layers and
    reshapes: affine), on flattened inputs of per-sample ``shape``."""
    n = int(np.prod(shape))
    with torch.no_grad():
        def run(t):
            for stage in stages:
                t = stage(t)
            return t.reshape(t.shape[0], -1)

        zero = run(torch.zeros(1, *shape, dtype=torch.float64))  # [1, out]
        basis = run(torch.eye(n, dtype=torch.float64).reshape(n, *shape)) - zero  # [n, out]
    return basis.T.numpy(), zero[0].numpy()


def _export_sequential(model: "SpikingSequential", graph, x, cue=None):
    """The stages before the first population read the analog input: they run on the host. Every
    population after them is a graph population; weight layers between populations are static
    synapses (a convolution or any reshape through ``linear_map``, its bias added as the current's
    bias); the stages after the last population are the host's affine readout."""
    from spiking_attn.graph import ExportError, Readout

    if cue is not None:
        raise ExportError("a converted torch model takes no cue")
    stages = list(model.stages)
    start = model._first_population
    last = max((i for i, s in enumerate(stages) if isinstance(s, LIFPopulation)), default=None)
    if last is None:
        raise ExportError("the converted model has no population: nothing to run on neuromorphic hardware")
    def encode_step(given: dict) -> torch.Tensor:  # the stages before the first population, per step
        h = given["input"]
        for stage in stages[:start]:
            h = stage(h)
        return h

    x = x.to(torch.float64)  # the graph is built in float64
    h = encode_step({"input": x})
    t = graph.timesteps
    handle = graph.host_current(h.unsqueeze(0).expand(t, *h.shape),  # [T, B, *shape], the same each step
                                encoding=(encode_step, {"input": x.unsqueeze(0).expand(t, *x.shape)}))
    for stage in stages[start:last + 1]:
        if isinstance(stage, LIFPopulation):
            handle = graph.population(stage, handle)
        elif isinstance(stage, nn.Linear) and len(handle.shape) == 1:
            handle = graph.dense(stage, handle)
        else:
            bias = getattr(stage, "bias", None)
            current = graph.linear_map(handle, lambda b, s=stage: _without_bias(s, b))
            if bias is not None:
                out = _without_bias(stage, torch.zeros(1, *handle.shape, dtype=torch.float64))
                per_channel = bias.detach().to(torch.float64).reshape(-1, *([1] * (out.dim() - 2)))
                current.bias = current.bias + (torch.zeros_like(out[0]) + per_channel).reshape(-1).numpy()
            handle = current
    weight, offset = _affine_tail(stages[last + 1:], handle.shape)
    graph.readout = Readout(handle.name, weight * model.output_unit, offset * model.output_unit)
    return handle


def _without_bias(stage: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``stage`` applied to ``t`` (``[K, *shape]``) without its bias: the linear part of an affine stage."""
    import torch.nn.functional as F

    if isinstance(stage, nn.Conv2d):
        return F.conv2d(t, stage.weight.to(t.dtype), None, stage.stride, stage.padding, stage.dilation, stage.groups)
    if isinstance(stage, nn.Linear):
        return t @ stage.weight.to(t.dtype).T
    return stage(t)  # reshapes, pooling, crops: linear already


def _count_sequential(model: "SpikingSequential", call) -> None:
    """The mean over the steps of the last stage's output (its stages count themselves)."""
    call.add(adds=call.output.numel() * model.timesteps)


def _register_rules() -> None:
    from spiking_attn.graph import export_rule
    from spiking_attn.opcount import count_rule, no_own_ops

    export_rule(SpikingSequential)(_export_sequential)
    count_rule(SpikingSequential)(_count_sequential)
    count_rule(FitSize2d)(no_own_ops)  # a crop or zero padding: no arithmetic


_register_rules()
