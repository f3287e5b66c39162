"""Auxiliary signals a model reports while it runs (arousal, prediction error, head outputs), for the
regularisers and figures that need them.

A mechanism calls ``report(name, tensor)`` during its forward pass. Outside a ``collect()`` block this
does nothing; inside, the tensors (with their autograd graph) are gathered by name::

    with collect() as aux:
        logits = model(x, cue=cue)
    aux["arousal"]  # list of tensors, one per module that reported it

The collector lives in a context variable, not in any module, so modules keep no state between calls
and two models running at once do not see each other's signals.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Dict, Iterator, List, Optional

import torch

_ACTIVE: ContextVar[Optional[Dict[str, List[torch.Tensor]]]] = ContextVar("spiking_attn_auxiliary", default=None)
# How many collect() blocks are open, in any thread: while none is, report() returns before reading the
# context variable, which torch.compile cannot trace (it would split the graph at every report). The
# count changes under a lock, so that blocks opened at once in several threads are all counted.
_OPEN = [0]
_OPEN_LOCK = threading.Lock()


@contextmanager
def collect() -> Iterator[Dict[str, List[torch.Tensor]]]:
    """Gather every ``report`` made inside the block, by name."""
    store: Dict[str, List[torch.Tensor]] = defaultdict(list)
    token = _ACTIVE.set(store)
    with _OPEN_LOCK:
        _OPEN[0] += 1
    try:
        yield store
    finally:
        with _OPEN_LOCK:
            _OPEN[0] -= 1
        _ACTIVE.reset(token)


def report(name: str, value: torch.Tensor) -> None:
    """Hand ``value`` to the active collector, if there is one."""
    if not _OPEN[0]:
        return
    store = _ACTIVE.get()
    if store is not None:
        store[name].append(value)
