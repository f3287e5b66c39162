"""Time-difference (td) conversion: a dense twin run over T steps whose outputs sum exactly to the dense output.

The input is spread evenly over the steps (``x / T`` at each step, so the running sum of the input
after step ``t`` is ``S_t = x (t + 1) / T``). Every node of the network emits, at each step, the change
of its dense output: ``f(S_t) - f(S_{t-1})`` of its own running input, with ``f(S_{-1}) = 0``. By
induction every node's running output is then the dense value at ``S_t``, and after the last step the
model's summed output is the dense output itself (to float rounding; the tests check 1e-4).

How each node produces its change:

* weight layers (``nn.Linear``, ``LinearBN``) and activations (ReLU, GELU, QCFS, LayerNorm, softmax, ...)
  are *units*: they keep their running input and emit the difference of their output;
* sums, residual additions, token sums and reshapes pass changes straight through (they are linear);
  a constant (the learned positions) enters once, at the first step;
* a product of two changing tensors is ``A_t b_t + a_t B_t - a_t b_t`` (``a, b`` the changes and
  ``A, B`` the running sums), which sums to ``A B``;
* a module type with its own rule (``@td_rule``) is taken apart as above; any other module (each
  brain-inspired mechanism's attention, for now) runs as one unit: exact, but coarser.

This is equivalence, not deployability: the changes are real numbers, not binary spikes.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from spiking_attn.errors import check_int

TD_RULES: Dict[type, Callable] = {}


def td_rule(*types: type):
    """Register ``rule(module, run, *changes, **kw)`` as the td form of every type in ``types``."""
    def register(rule: Callable) -> Callable:
        for t in types:
            TD_RULES[t] = rule
        return rule
    return register


def _accumulate(stored, change):
    if change is None:
        return stored
    return change.clone() if stored is None else stored + change


class TDRun:
    """The state of one td pass: running inputs and previous outputs of every unit and product."""

    def __init__(self, timesteps: int) -> None:
        self.timesteps = timesteps
        self.t = 0
        self._state: Dict[tuple, list] = {}
        self._calls: Dict[int, int] = {}

    def next_step(self) -> None:
        self.t += 1
        self._calls = {}

    def _key(self, owner) -> tuple:
        n = self._calls.get(id(owner), 0)
        self._calls[id(owner)] = n + 1
        return (id(owner), n)

    def function(self, owner, f: Callable, *changes, **kw_changes):
        """The change of ``f`` of the running sums of ``changes`` (tensors, or None for an absent input)."""
        key = self._key(owner)
        state = self._state.setdefault(key, [[None] * len(changes), {}, None])
        sums, kw_sums, previous = state
        for i, c in enumerate(changes):
            sums[i] = _accumulate(sums[i], c)
        for name, c in kw_changes.items():
            kw_sums[name] = _accumulate(kw_sums.get(name), c)
        current = f(*sums, **kw_sums)
        state[2] = current
        return current if previous is None else current - previous

    def unit(self, module: nn.Module, *changes, **kw_changes):
        """A module as one unit: the change of its output."""
        return self.function(module, module, *changes, **kw_changes)

    def product(self, owner, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The change of ``A * B`` from the changes ``a`` and ``b``: ``A_t b + a B_t - a b``."""
        key = self._key(owner)
        sums = self._state.setdefault(key, [None, None])
        sums[0], sums[1] = _accumulate(sums[0], a), _accumulate(sums[1], b)
        return sums[0] * b + a * sums[1] - a * b

    def call(self, module: nn.Module, *changes, **kw_changes):
        """The td form of ``module``: its rule if its type has one, else the module as one unit."""
        rule = TD_RULES.get(type(module))
        if rule is None:
            return self.unit(module, *changes, **kw_changes)
        return rule(module, self, *changes, **kw_changes)

    def once(self, value: torch.Tensor) -> torch.Tensor:
        """A constant: all of it at the first step, nothing after."""
        return value if self.t == 0 else torch.zeros_like(value)


class TimeDifferenceModel(nn.Module):
    """The td form of a dense model: ``forward(x, cue)`` runs ``timesteps`` steps and returns the summed
    output (equal to ``dense(x, cue)``); ``steps(x, cue)`` returns the change at every step ``[T, ...]``.

    The dense model is shared, not copied: the td model holds no weights of its own.
    """

    def __init__(self, dense: nn.Module, timesteps: int) -> None:
        super().__init__()
        self.dense = dense
        self.timesteps = check_int(timesteps, "timesteps", low=1, high=100000)
        self.config = getattr(dense, "config", None)

    def steps(self, x: torch.Tensor, cue: Optional[torch.Tensor] = None, generator=None) -> torch.Tensor:
        from spiking_attn.models import cue_vector

        if cue is not None and self.config is not None:
            cue = cue_vector(cue, x.shape[0], self.config.num_cues, x.dtype)  # an index becomes one-hot
        run = TDRun(self.timesteps)
        outputs = []
        x_t = x / self.timesteps  # the same share of the input at every step
        cue_t = None if cue is None else cue / self.timesteps
        for t in range(self.timesteps):
            if t:
                run.next_step()
            outputs.append(run.call(self.dense, x_t, cue=cue_t))
        return torch.stack(outputs)

    def forward(self, x: torch.Tensor, cue: Optional[torch.Tensor] = None, generator=None) -> torch.Tensor:
        return self.steps(x, cue).sum(0)
