"""Placing populations on Loihi-style cores under a hardware profile, and the spike traffic between them.

A profile is a small JSON file (``hardware/profiles/loihi2.json``, ``loihi1.json``, or a user's own):
neurons per core, synapses per core and input axons (distinct presynaptic neurons) per core, any of
the last two ``null`` for "not enforced", each with its source. Lava's open-source simulator has no
partitioner and no per-core limits; this mapping is what a user checks before going to a chip.

The mapping is greedy and keeps every core group apart: the populations of one group (``cortex``,
``thalamic_gating:...``, ``pulvinar:...``) share cores only with each other, so the gating and
pulvinar populations sit on cores of their own. Populations are placed in graph order; a population
larger than what is left of a core is split across cores. A single neuron that breaks a limit on its
own (more synapses or input axons than a core holds) is an error naming the population and the limit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from spiking_attn.errors import SpikingAttnError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class CoreProfile:
    name: str
    neurons_per_core: int
    synapses_per_core: Optional[int] = None
    input_axons_per_core: Optional[int] = None
    cores_per_chip: Optional[int] = None
    sources: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("neurons_per_core", "synapses_per_core", "input_axons_per_core", "cores_per_chip"):
            value = getattr(self, name)
            if value is None and name != "neurons_per_core":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpikingAttnError(f"profile {self.name!r}: {name} must be a positive integer"
                                       f"{'' if name == 'neurons_per_core' else ' or null'}, got {value!r}")


def profile_names() -> List[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(profile) -> CoreProfile:
    """A built-in profile by name ('loihi2', 'loihi1'), a path to a JSON file, or a ``CoreProfile``."""
    if isinstance(profile, CoreProfile):
        return profile
    if not isinstance(profile, str) or not profile:
        raise SpikingAttnError(f"profile must be a name ({', '.join(profile_names())}) or a JSON file, got {profile!r}")
    path = PROFILE_DIR / f"{profile}.json" if profile in profile_names() else Path(profile)
    if not path.is_file():
        raise SpikingAttnError(f"profile {profile!r} is neither a built-in profile ({', '.join(profile_names())}) "
                               f"nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpikingAttnError(f"profile {str(path)!r} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SpikingAttnError(f"profile {str(path)!r} must hold a JSON object")
    known = {f.name for f in fields(CoreProfile)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpikingAttnError(f"profile {str(path)!r}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if "neurons_per_core" not in data:
        raise SpikingAttnError(f"profile {str(path)!r} needs neurons_per_core")
    data.setdefault("name", path.stem)
    return CoreProfile(**data)


@dataclass
class Core:
    index: int
    group: str
    slices: List[Tuple[str, int, int]] = field(default_factory=list)  # (population, start, end)
    neurons: int = 0
    synapses: int = 0
    axons: Dict[str, np.ndarray] = field(default_factory=dict)  # source -> bool mask of presynaptic neurons

    @property
    def input_axons(self) -> int:
        return int(sum(mask.sum() for mask in self.axons.values()))

    def to_dict(self) -> dict:
        return {"core": self.index, "group": self.group, "neurons": self.neurons, "synapses": self.synapses,
                "input_axons": self.input_axons,
                "populations": [{"name": n, "start": s, "end": e} for n, s, e in self.slices]}


@dataclass
class Mapping:
    profile: CoreProfile
    cores: List[Core]
    placement: Dict[str, np.ndarray]  # population -> core index per neuron


def _incoming(edges_of, name) -> List[Tuple[str, object]]:
    return [(src, w.tocsr()) for src, w in edges_of(name)]


def map_cores(populations: Dict[str, Tuple[int, str]], edges_of, sizes: Dict[str, int], profile) -> Mapping:
    """Place every population on cores.

    Args:
        populations: name -> (size, group), in placement order (inputs from the host excluded).
        edges_of: name -> list of ``(source, weight CSR [size, source size])`` into that population.
        sizes: size of every source population.
        profile: a ``CoreProfile`` or what ``load_profile`` takes.
    """
    profile = load_profile(profile)
    cores: List[Core] = []
    placement: Dict[str, np.ndarray] = {}
    open_core: Dict[str, Core] = {}
    for name, (size, group) in populations.items():
        incoming = _incoming(edges_of, name)
        per_neuron = np.zeros(size, dtype=np.int64)
        for _, w in incoming:
            per_neuron += np.diff(w.indptr)
        where = np.full(size, -1, dtype=np.int64)
        start = 0
        while start < size:
            core = open_core.get(group)
            if core is None or core.neurons >= profile.neurons_per_core:
                core = Core(len(cores), group)
                cores.append(core)
                open_core[group] = core
            count = _fit(core, profile, incoming, per_neuron, start, size, sizes)
            if count == 0:
                if core.neurons == 0:
                    _single_neuron_error(name, profile, incoming, per_neuron, start)
                open_core[group] = None
                continue
            _place(core, name, incoming, per_neuron, start, start + count, sizes)
            where[start:start + count] = core.index
            start += count
        placement[name] = where
    return Mapping(profile, cores, placement)


def _axon_masks(incoming, start, end, sizes) -> Dict[str, np.ndarray]:
    masks = {}
    for src, w in incoming:
        cols = w.indices[w.indptr[start]:w.indptr[end]]
        if cols.size:
            mask = np.zeros(sizes[src], dtype=bool)
            mask[cols] = True
            masks[src] = mask
    return masks


def _axons_with(core: Core, masks: Dict[str, np.ndarray]) -> int:
    total = 0
    for src in set(core.axons) | set(masks):
        a, b = core.axons.get(src), masks.get(src)
        total += int((a | b).sum() if a is not None and b is not None else (a if b is None else b).sum())
    return total


def _fits(core, profile, incoming, per_neuron, start, end, sizes) -> bool:
    if core.neurons + (end - start) > profile.neurons_per_core:
        return False
    if profile.synapses_per_core is not None and core.synapses + int(per_neuron[start:end].sum()) > profile.synapses_per_core:
        return False
    if profile.input_axons_per_core is not None:
        if _axons_with(core, _axon_masks(incoming, start, end, sizes)) > profile.input_axons_per_core:
            return False
    return True


def _fit(core, profile, incoming, per_neuron, start, size, sizes) -> int:
    """The most neurons from ``start`` that still fit on ``core`` (binary search: every limit grows with
    the number of neurons)."""
    lo, hi = 0, min(size - start, profile.neurons_per_core - core.neurons)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(core, profile, incoming, per_neuron, start, start + mid, sizes):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _place(core, name, incoming, per_neuron, start, end, sizes) -> None:
    core.slices.append((name, start, end))
    core.neurons += end - start
    core.synapses += int(per_neuron[start:end].sum())
    for src, mask in _axon_masks(incoming, start, end, sizes).items():
        core.axons[src] = core.axons[src] | mask if src in core.axons else mask


def _single_neuron_error(name, profile, incoming, per_neuron, index) -> None:
    synapses = int(per_neuron[index])
    if profile.synapses_per_core is not None and synapses > profile.synapses_per_core:
        raise SpikingAttnError(f"population {name!r}: neuron {index} has {synapses} synapses, more than profile "
                               f"{profile.name!r} allows per core (synapses_per_core={profile.synapses_per_core})")
    axons = sum(int(w.indptr[index + 1] - w.indptr[index]) for _, w in incoming)
    raise SpikingAttnError(f"population {name!r}: neuron {index} reads {axons} presynaptic neurons, more than profile "
                           f"{profile.name!r} allows per core (input_axons_per_core={profile.input_axons_per_core})")


def spike_traffic(mapping: Mapping, edges_of, spike_counts: Dict[str, np.ndarray]) -> np.ndarray:
    """Spike messages between cores, ``[cores, cores]`` (row: sending core): every spike of a neuron goes
    once to each other core that holds one of its targets. ``spike_counts``: spikes per neuron over
    the run, for every source population placed on cores (host inputs are not on cores)."""
    n = len(mapping.cores)
    traffic = np.zeros((n, n), dtype=np.int64)
    reached: Dict[str, list] = {}
    for target, where in mapping.placement.items():
        for src, w in _incoming(edges_of, target):
            if src in mapping.placement and src in spike_counts:
                coo = w.tocoo()
                reached.setdefault(src, []).append(np.stack([coo.col, where[coo.row]]))
    for src, parts in reached.items():
        pairs = np.unique(np.concatenate(parts, axis=1), axis=1)  # (source neuron, target core), each once
        np.add.at(traffic, (mapping.placement[src][pairs[0]], pairs[1]), spike_counts[src][pairs[0]])
    np.fill_diagonal(traffic, 0)
    return traffic
