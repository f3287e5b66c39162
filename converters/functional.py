"""Find the nonlinear torch calls each module of a model makes in its own ``forward``.

A converter that dispatches on module types sees ``nn.ReLU`` but not ``F.relu(x)``, ``torch.softmax`` or
``q @ k.transpose(-1, -2)`` written inside a custom ``forward``: left alone, such a call stays a real-valued
nonlinearity in the "spiking" model, silently (a known pitfall of module-swapping converters).
``functional_calls(model, *args, **kwargs)`` runs the model once and names them, module by module.

How: the model runs once (eval mode, no gradient) under a ``torch.overrides.TorchFunctionMode``, which sees
every torch function and tensor method called; forward pre-hooks and hooks on every module keep the stack
of modules whose ``forward`` is running, so each call is charged to the innermost one (a module's own
``forward``, not its children's). All hooks are removed afterwards, also on error.

What counts as nonlinear: only calls on tensors that depend on the model's inputs (activations) are
judged, so ``self.scale.exp()`` or a mask built with ``torch.ones`` is never reported. Then

* activations, normalisations, exponentials and logarithms, powers and roots, rounding, comparisons,
  max/min/clamp/abs/where, max pooling, sorting, softmax and attention (``NONLINEAR``);
* a product of two or more activations: ``a * b``, ``a @ b``, ``torch.matmul``, ``bmm``, ``einsum``, ...,
  and weight layers whose weight is itself an activation (``PRODUCTS``); a product with a constant
  (a Python number, a parameter, a buffer, or anything computed from them) is linear and not reported;
* a division by an activation (``a / b``, ``2 / a``; ``a / 4`` and ``a / self.temperature`` are linear);
* ``masked_fill`` with a mask computed from activations.

Linear functions (add, sub, reshape/view/permute/transpose, cat/stack, sum/mean/cumsum, indexing,
flatten/unsqueeze, linear layers and convolutions with constant weights, average pooling, batch norm in
eval mode) are not reported.

Limits: a child called through ``child.forward(x)`` (bypassing ``__call__``) runs no hooks, so its calls
are charged to its parent; a tensor made outside torch (through numpy, say) loses its dependence on the
inputs and is taken for a constant.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from spiking_attn.errors import DTypeError

__all__ = ["NONLINEAR", "PRODUCTS", "functional_calls", "nonlinear_call"]

NONLINEAR = frozenset({
    # activations
    "relu", "relu6", "gelu", "silu", "elu", "selu", "celu", "leaky_relu", "prelu", "rrelu", "glu", "mish",
    "hardswish", "hardsigmoid", "hardtanh", "hardshrink", "softshrink", "tanhshrink", "threshold", "softplus",
    "softsign", "logsigmoid", "sigmoid", "tanh", "erf", "erfc", "erfinv", "sin", "cos", "tan",
    # softmax and attention
    "softmax", "softmin", "log_softmax", "gumbel_softmax", "logsumexp", "scaled_dot_product_attention",
    "multi_head_attention_forward", "native_multi_head_attention",
    # normalisation (batch norm in eval mode is affine, and left out)
    "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm", "normalize", "norm",
    "var", "std", "var_mean", "std_mean", "cosine_similarity", "pairwise_distance", "cdist",
    # exponentials, powers, roots, rounding
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal", "square", "pow",
    "float_power", "prod", "cumprod", "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder",
    "floor_divide", "sign", "sgn", "heaviside",
    # selection: max, min, clamp, abs, where, comparisons, sorting, max pooling
    "max", "min", "amax", "amin", "aminmax", "maximum", "minimum", "fmax", "fmin", "clamp", "clamp_min",
    "clamp_max", "clip", "abs", "absolute", "where", "median", "nanmedian", "mode", "kthvalue", "topk", "sort",
    "argsort", "argmax", "argmin", "cummax", "cummin", "gt", "ge", "lt", "le", "eq", "ne", "greater",
    "greater_equal", "less", "less_equal", "logical_and", "logical_or", "logical_xor", "logical_not",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "lp_pool1d", "lp_pool2d", "fractional_max_pool2d", "fractional_max_pool3d",
})

# Products: reported when two or more factors are activations. The value says which arguments are
# factors: "all" tensors, "skip_first" (``addmm(input, a, b)`` adds ``input``), or "first_two" (a weight
# layer ``f(input, weight, bias)``: the bias is added).
PRODUCTS = {
    "mul": "all", "multiply": "all", "matmul": "all", "mm": "all", "bmm": "all", "einsum": "all",
    "tensordot": "all", "outer": "all", "ger": "all", "dot": "all", "vdot": "all", "inner": "all", "kron": "all",
    "mv": "all", "cross": "all", "chain_matmul": "all", "multi_dot": "all",
    "addmm": "skip_first", "addbmm": "skip_first", "baddbmm": "skip_first", "addmv": "skip_first",
    "addr": "skip_first", "addcmul": "skip_first",
    "linear": "first_two", "bilinear": "all_but_bias", "conv1d": "first_two", "conv2d": "first_two",
    "conv3d": "first_two", "conv_transpose1d": "first_two", "conv_transpose2d": "first_two",
    "conv_transpose3d": "first_two",
}
# Divisions: reported when the denominator (argument index, keyword) is an activation. ``__rdiv__`` is
# ``other / self``: its denominator is the tensor itself.
DIVISIONS = {"div": (1, "other"), "divide": (1, "other"), "true_divide": (1, "other"), "rdiv": (0, None),
             "addcdiv": (2, "tensor2")}
MASKS = {"masked_fill": (1, "mask"), "masked_scatter": (1, "mask")}

# Outputs that depend on the shape of their input, not on its values: constants.
VALUE_FREE = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                        "randint_like", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"})

# Python operators, as the tensor methods they stand for.
_OPERATORS = {"add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul", "matmul", "rmatmul", "imatmul",
              "div", "rdiv", "idiv", "truediv", "rtruediv", "itruediv", "floordiv", "rfloordiv", "ifloordiv",
              "mod", "rmod", "imod", "pow", "rpow", "ipow", "and", "rand", "iand", "or", "ror", "ior", "xor",
              "rxor", "ixor", "neg", "abs", "gt", "ge", "lt", "le", "eq", "ne", "invert", "getitem", "setitem"}
_OPERATOR_NAMES = {"truediv": "div", "floordiv": "floor_divide", "mod": "remainder", "and": "logical_and",
                   "or": "logical_or", "xor": "logical_xor", "invert": "logical_not"}
_FACTOR_KEYWORDS = ("input", "other", "mat1", "mat2", "batch1", "batch2", "vec", "vec1", "vec2", "tensor1",
                    "tensor2", "weight", "input1", "input2")


def _tensors(value) -> Iterable[torch.Tensor]:
    """Every tensor in ``value`` (nested lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def base_name(func) -> str:
    """The plain name of a torch function or method: ``F.relu`` -> 'relu', ``Tensor.relu_`` -> 'relu',
    ``Tensor.__rtruediv__`` -> 'rdiv', ``Tensor.__mul__`` -> 'mul'."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name in _OPERATORS:
            reflected = name[0] in "ri" and name[1:] in _OPERATORS
            stem = name[1:] if reflected else name
            stem = _OPERATOR_NAMES.get(stem, stem)
            if name.startswith("r") and reflected and stem == "div":
                return "rdiv"
            return stem
        return name
    return name.strip("_")


def display_name(func, base: str) -> str:
    """How a call is named in reports: ``torch.nn.functional.relu``, ``torch.softmax``, ``torch.matmul``
    (for ``a @ b`` too), ``torch.div``."""
    module = getattr(func, "__module__", None) or ""
    if module in ("torch.nn.functional", "torch._C._nn"):
        return f"torch.nn.functional.{base}"
    plain = "div" if base == "rdiv" else base
    if module.startswith("torch.") and module not in ("torch._tensor", "torch.functional"):
        return f"{module}.{plain}"
    return f"torch.{plain}" if hasattr(torch, plain) else f"Tensor.{plain}"


def _factors(rule: str, args: tuple, kwargs: dict) -> List[torch.Tensor]:
    if rule == "first_two":
        positional = list(args[:2])
        keyed = [kwargs[k] for k in ("input", "weight") if k in kwargs]
        return [t for t in _tensors(positional + keyed)]
    if rule == "all_but_bias":
        return [t for t in _tensors(list(args[:3]) + [kwargs[k] for k in ("input1", "input2", "weight")
                                                      if k in kwargs])]
    skip = 1 if rule == "skip_first" else 0
    keyed = [kwargs[k] for k in _FACTOR_KEYWORDS if k in kwargs and not (skip and k == "input")]
    return list(_tensors(list(args[skip:]) + keyed))


def _argument(args: tuple, kwargs: dict, index: int, keyword: Optional[str]):
    if keyword is not None and keyword in kwargs:
        return kwargs[keyword]
    return args[index] if len(args) > index else None


def nonlinear_call(func, args: tuple, kwargs: dict, is_activation) -> Optional[str]:
    """The name to report for a call of ``func`` that is nonlinear in the activations, else None.

    ``is_activation(tensor)`` says whether a tensor depends on the model's inputs.
    """
    base = base_name(func)
    if base in NONLINEAR:
        return display_name(func, base)
    if base in PRODUCTS:
        if sum(1 for t in _factors(PRODUCTS[base], args, kwargs) if is_activation(t)) >= 2:
            label = display_name(func, base)
            return f"{label} (activation * activation)" if base in ("mul", "multiply") else label
        return None
    if base in DIVISIONS:
        denominator = _argument(args, kwargs, *DIVISIONS[base])
        if isinstance(denominator, torch.Tensor) and is_activation(denominator):
            return f"{display_name(func, base)} (by an activation)"
        return None
    if base in MASKS:
        mask = _argument(args, kwargs, *MASKS[base])
        if isinstance(mask, torch.Tensor) and is_activation(mask):
            return f"{display_name(func, base)} (with an activation-dependent mask)"
    return None


class _CallLog(TorchFunctionMode):
    """Charge every nonlinear call on activations to the module on top of ``stack``."""

    def __init__(self, stack: List[str]) -> None:
        super().__init__()
        self.stack = stack
        # every tensor that depends on the inputs, by id; kept alive so that no id is reused in the pass
        self.activations: Dict[int, torch.Tensor] = {}
        self.calls: Dict[str, Dict[str, None]] = {}

    def mark(self, value) -> None:
        for t in _tensors(value):
            self.activations[id(t)] = t

    def is_activation(self, t: torch.Tensor) -> bool:
        return id(t) in self.activations

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside this handler: nested calls are not seen
        if any(self.is_activation(t) for t in _tensors((args, kwargs))):
            if self.stack:
                label = nonlinear_call(func, args, kwargs, self.is_activation)
                if label is not None:
                    self.calls.setdefault(self.stack[-1], {})[label] = None
            if base_name(func) not in VALUE_FREE:
                self.mark(out)
        return out


@torch.no_grad()
def functional_calls(model: nn.Module, *args, **kwargs) -> Dict[str, List[str]]:
    """Run ``model(*args, **kwargs)`` once (eval mode, no gradient) and return, for every module whose own
    ``forward`` calls a torch function that is nonlinear in the activations, the names of those calls.

    Returns ``{module name: [call, ...]}`` with the names of ``model.named_modules()`` (the root is ``''``)
    and the calls in the order first made, e.g. ``{'block': ['torch.nn.functional.relu', 'torch.matmul',
    'torch.softmax'], 'block.act': ['torch.nn.functional.gelu']}``. Modules with no such call are left out.
    Built-in modules report their own function too (``nn.ReLU`` calls ``torch.nn.functional.relu``).
    The model's training mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"functional_calls needs an nn.Module, got {type(model).__name__}")
    stack: List[str] = []
    log = _CallLog(stack)

    def enter(name: str):
        def hook(module, args) -> None:
            stack.append(name)
        return hook

    def leave(module, args, output) -> None:  # returns None: the output is left as it is
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave, always_call=True))
    was_training = model.training
    model.eval()
    try:
        log.mark((args, kwargs))
        with log:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: list(calls) for name, calls in log.calls.items()}
