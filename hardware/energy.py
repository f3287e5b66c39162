"""Energy estimates from measured activity: a spiking model next to its dense twin.

``estimate(model, x, energy_model="45nm", cue=None, labels=None, twin=None)`` counts the operations of
the spiking model and of its dense twin on the same samples (``spiking_attn.opcount``: per layer, from
the spikes that actually flowed) and prices them with an energy model. The twin is the other half of
the pair: given with ``twin=``, or built from the model's config with the weights both twins share
copied by name (its accuracy then says nothing about a trained twin, and the report says so).

Energy models are data (``hardware/energy_models/*.json``, or a user's JSON or TOML file)::

    {"name": "...", "description": "...",
     "energy_pJ": {"mac": 4.6, "ac": 0.9,                 required
                   "mask": .., "add": ..,                  default: ac
                   "neuron_update": .., "neuron_update_active": ..,   default 0; active: neuron_update
                   "spike": .., "memory_bit": ..},         default 0
     "bits": {"weight": 32, "state": 32, "activation": 32},   required when memory_bit > 0
     "sources": {"field": "where the figure comes from", ...}}

Energy of one inference (pJ)::

    macs e_mac + acs e_ac + masks e_mask + adds e_add
    + (neuron_updates - spikes) e_neuron_update + spikes (e_neuron_update_active + e_spike)
    + (weight_reads b_weight + state_accesses b_state + activation_accesses b_activation) e_memory_bit
"""
from __future__ import annotations

import json
import math
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from spiking_attn.errors import SpikingAttnError, check_int
from spiking_attn.opcount import OPS, OpReport, count_ops

MODEL_DIR = Path(__file__).resolve().parent / "energy_models"
ENERGY_FIELDS = ("mac", "ac", "mask", "add", "neuron_update", "neuron_update_active", "spike", "memory_bit")
REQUIRED = ("mac", "ac")
BIT_FIELDS = ("weight", "state", "activation")
PARTS = ("mac", "ac", "mask", "add", "neuron", "spike", "memory")  # the breakdown of an energy figure
ARCHITECTURE = ("in_features", "num_tokens", "num_classes", "dim", "depth", "heads", "mlp_ratio", "causal", "mechanism",
                "mechanism_options", "num_cues")  # what two checkpoints must share to be twins


class EnergyModelError(SpikingAttnError):
    """An energy model that is unknown or malformed."""


@dataclass(frozen=True)
class EnergyModel:
    """Energies per operation (pJ), memory word widths (bits), and where each figure comes from."""

    name: str
    energy_pJ: Dict[str, float]
    bits: Dict[str, int] = field(default_factory=dict)
    description: str = ""
    sources: Dict[str, str] = field(default_factory=dict)

    def memory_bits(self, ops: Dict[str, float]) -> float:
        if not self.bits:
            return 0.0
        return (ops["weight_reads"] * self.bits["weight"] + ops["state_accesses"] * self.bits["state"]
                + ops["activation_accesses"] * self.bits["activation"])

    def breakdown(self, ops: Dict[str, float]) -> Dict[str, float]:
        """Energy (pJ) of ``ops`` by part: mac, ac, mask, add, neuron, spike, memory."""
        e = self.energy_pJ
        quiet = ops["neuron_updates"] - ops["spikes"]
        return {"mac": ops["macs"] * e["mac"], "ac": ops["acs"] * e["ac"], "mask": ops["masks"] * e["mask"],
                "add": ops["adds"] * e["add"],
                "neuron": quiet * e["neuron_update"] + ops["spikes"] * e["neuron_update_active"],
                "spike": ops["spikes"] * e["spike"], "memory": self.memory_bits(ops) * e["memory_bit"]}

    def energy(self, ops: Dict[str, float]) -> float:
        return sum(self.breakdown(ops).values())

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "energy_pJ": dict(self.energy_pJ),
                "bits": dict(self.bits), "sources": dict(self.sources)}


def energy_model_names() -> List[str]:
    return sorted(p.stem for p in MODEL_DIR.glob("*.json"))


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EnergyModelError(f"{what} must be a finite number, got {value!r}")
    if value < 0:
        raise EnergyModelError(f"{what} must not be negative, got {value!r}")
    return float(value)


def energy_model_from_dict(data, origin: str = "energy model") -> EnergyModel:
    """Check a parsed energy-model file and fill in its defaults."""
    if not isinstance(data, dict):
        raise EnergyModelError(f"{origin}: must be a table (JSON object), got {type(data).__name__}")
    unknown = sorted(set(data) - {"name", "description", "energy_pJ", "bits", "sources"})
    if unknown:
        raise EnergyModelError(f"{origin}: unknown field(s) {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise EnergyModelError(f"{origin}: field 'name' must be a non-empty string")
    energies = data.get("energy_pJ")
    if not isinstance(energies, dict):
        raise EnergyModelError(f"{origin}: missing table 'energy_pJ' (pJ per operation: {', '.join(ENERGY_FIELDS)})")
    unknown = sorted(set(energies) - set(ENERGY_FIELDS))
    if unknown:
        raise EnergyModelError(f"{origin}: unknown energy_pJ field(s) {', '.join(unknown)}; known: "
                               f"{', '.join(ENERGY_FIELDS)}")
    for key in REQUIRED:
        if key not in energies:
            raise EnergyModelError(f"{origin}: missing energy_pJ.{key}")
    e = {k: _number(v, f"{origin}: energy_pJ.{k}") for k, v in energies.items()}
    e.setdefault("mask", e["ac"])
    e.setdefault("add", e["ac"])
    e.setdefault("neuron_update", 0.0)
    e.setdefault("neuron_update_active", e["neuron_update"])
    e.setdefault("spike", 0.0)
    e.setdefault("memory_bit", 0.0)
    bits = data.get("bits", {})
    if not isinstance(bits, dict):
        raise EnergyModelError(f"{origin}: 'bits' must be a table of {', '.join(BIT_FIELDS)}")
    if bits or e["memory_bit"] > 0:
        missing = [k for k in BIT_FIELDS if k not in bits]
        if missing:
            raise EnergyModelError(f"{origin}: memory_bit needs bits.{missing[0]} (word widths: "
                                   f"{', '.join(BIT_FIELDS)})")
        unknown = sorted(set(bits) - set(BIT_FIELDS))
        if unknown:
            raise EnergyModelError(f"{origin}: unknown bits field(s) {', '.join(unknown)}")
        for k, v in bits.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
                raise EnergyModelError(f"{origin}: bits.{k} must be an integer in [1, 64], got {v!r}")
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise EnergyModelError(f"{origin}: 'sources' must be a table of strings")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise EnergyModelError(f"{origin}: 'description' must be a string")
    return EnergyModel(name, {k: e[k] for k in ENERGY_FIELDS}, dict(bits), description,
                       {str(k): str(v) for k, v in sources.items()})


def load_energy_model(spec="45nm") -> EnergyModel:
    """A built-in energy model by name (``energy_model_names()``), a ``.json`` or ``.toml`` file, a dict in
    the file's layout, or an ``EnergyModel``."""
    if isinstance(spec, EnergyModel):
        return spec
    if isinstance(spec, dict):
        return energy_model_from_dict(spec)
    if not isinstance(spec, (str, Path)) or not str(spec):
        raise EnergyModelError(f"energy_model must be a name ({', '.join(energy_model_names())}) or a JSON/TOML "
                               f"file, got {spec!r}")
    if isinstance(spec, str) and spec in energy_model_names():
        path = MODEL_DIR / f"{spec}.json"
    else:
        path = Path(spec)
        if not path.is_file():
            raise EnergyModelError(f"unknown energy model {str(spec)!r}: not a built-in one "
                                   f"({', '.join(energy_model_names())}) and not a file")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EnergyModelError(f"energy model file {str(path)!r} is not valid "
                               f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
    return energy_model_from_dict(data, f"energy model file {str(path)!r}")


# ---------------------------------------------------------------------------------------------------
# Estimates


def build_twin(model: nn.Module) -> nn.Module:
    """The other twin of a model of this library (a classifier, or a model of another scaffold such as the
    encoder-decoder), from its config, with the weights both share copied by name (every weight of the
    dense twin exists in the spiking one)."""
    import dataclasses

    from spiking_attn.mechanisms import get_mechanism
    from spiking_attn.models import ModelConfig, build_model

    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig) \
            or type(model) is not get_mechanism(config.mechanism).model_type(config.model):
        raise SpikingAttnError(f"a twin can only be built for a model of this library (got "
                               f"{type(model).__name__}); pass twin= yourself")
    other = "dense" if config.model == "spiking" else "spiking"
    twin = build_model(dataclasses.replace(config, model=other))
    own = model.state_dict()
    state = twin.state_dict()
    twin.load_state_dict({k: own[k] if k in own else v for k, v in state.items()})
    return twin.eval()


def _is_spiking(model: nn.Module) -> bool:
    from spiking_attn.neuron import populations

    return bool(populations(model))


@dataclass
class EnergyReport:
    """What ``estimate`` measured: per-sample operation counts of both twins and their energies."""

    energy_model: EnergyModel
    samples: int
    snn: OpReport
    ann: Optional[OpReport]
    timesteps: Optional[int]
    accuracy: Dict[str, Optional[float]]
    twin: str

    def totals(self, which: str) -> Dict[str, float]:
        return getattr(self, which).totals()

    def energy(self, which: str) -> float:
        return self.energy_model.energy(self.totals(which))

    @property
    def ratio(self) -> Optional[float]:
        if self.ann is None:
            return None
        snn = self.energy("snn")
        return self.energy("ann") / snn if snn > 0 else math.inf

    def mean_firing_rate(self) -> float:
        t = self.totals("snn")
        return t["spikes"] / t["neuron_updates"] if t["neuron_updates"] else 0.0

    def bound(self) -> Optional[float]:
        """The textbook ratio ``(E_MAC / E_AC) / (rate * T)``: a dense layer's MACs against the same layer
        driven by spikes at the mean firing rate for T steps."""
        rate, e = self.mean_firing_rate(), self.energy_model.energy_pJ
        if not self.timesteps or rate <= 0 or e["ac"] <= 0:
            return None
        return e["mac"] / e["ac"] / (rate * self.timesteps)

    def per_layer(self) -> List[dict]:
        rows = []
        for which in ("snn", "ann"):
            report = getattr(self, which)
            if report is None:
                continue
            for name, ops in report.per_layer.items():
                rows.append({"model": which, "layer": name, "type": report.types.get(name, ""),
                             **{op: ops[op] for op in OPS}, "memory_bits": self.energy_model.memory_bits(ops),
                             "energy_pJ": self.energy_model.energy(ops),
                             "breakdown_pJ": self.energy_model.breakdown(ops)})
        return rows

    def to_dict(self) -> dict:
        """The ``energy.json`` record."""
        def side(which: str) -> Optional[dict]:
            if getattr(self, which) is None:
                return None
            t = self.totals(which)
            return {"energy_pJ": self.energy(which), "synaptic_ops": t["acs"], "macs": t["macs"],
                    "masks": t["masks"], "adds": t["adds"], "neuron_updates": t["neuron_updates"],
                    "spikes": t["spikes"], "memory_bits": self.energy_model.memory_bits(t),
                    "breakdown_pJ": self.energy_model.breakdown(t)}

        rates = self.snn.firing_rates()
        return {"energy_model": self.energy_model.to_dict(), "samples": self.samples, "per": "inference (one sample)",
                "timesteps": self.timesteps, "snn": side("snn"), "ann": side("ann"), "ratio": self.ratio,
                "mean_firing_rate": self.mean_firing_rate(), "bound_ratio": self.bound(),
                "per_layer": self.per_layer(), "firing_rates": rates, "accuracy": dict(self.accuracy),
                "twin": self.twin}


def estimate(model: nn.Module, x: torch.Tensor, energy_model="45nm", *, cue: Optional[torch.Tensor] = None,
             labels: Optional[torch.Tensor] = None, twin=None, batch_size: int = 64) -> EnergyReport:
    """Count both twins' operations on ``x`` (``[S, N, F]``; ``cue`` ``[S]`` or ``[S, C]``) and price them.

    ``model`` is a spiking model or a dense one; ``twin`` the other (default: built from the model's
    config, the shared weights copied by name; ``twin=False`` counts ``model`` alone). With ``labels``,
    both accuracies on these samples are reported."""
    from spiking_attn.errors import check_tensor

    if not isinstance(model, nn.Module):
        raise SpikingAttnError(f"model must be an nn.Module, got {type(model).__name__}")
    energy = load_energy_model(energy_model)
    check_int(batch_size, "batch_size", low=1)
    check_tensor(x, "x")
    if x.shape[0] < 1:
        raise SpikingAttnError("x holds no samples")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape[:1] != x.shape[:1]):
        raise SpikingAttnError(f"labels must be a tensor with one label per sample ({x.shape[0]})")
    built = None
    if twin is None:
        twin = build_twin(model)
        built = twin
    elif twin is False:
        twin = None
    elif not isinstance(twin, nn.Module):
        raise SpikingAttnError(f"twin must be an nn.Module, None or False, got {type(twin).__name__}")
    spiking = _is_spiking(model)
    if twin is not None and spiking == _is_spiking(twin):
        raise SpikingAttnError("model and twin must be one spiking model and one dense model")
    if twin is None and not spiking:
        raise SpikingAttnError("model is dense and twin=False: there is no spiking model to estimate")
    snn, ann = (model, twin) if spiking else (twin, model)
    models = {"snn": snn, "ann": ann}
    reports = {k: (None if m is None else count_ops(m, x, cue, batch_size=batch_size).per_sample())
               for k, m in models.items()}
    # accuracy (from the counting pass's outputs) only of the models that were trained: a twin built here
    # holds weights trained for the other kind
    from spiking_attn.training import correct_labels  # a class, or every position of a sequence

    accuracy = {k: (None if m is None or m is built or labels is None
                    else correct_labels(reports[k].outputs, labels) / len(labels))
                for k, m in models.items()}
    if built is None:
        note = "given" if twin is not None else "none"
    elif built is ann:
        note = "dense twin built from the spiking model's config, weights shared by name (accuracy not measured)"
    else:
        note = ("spiking twin built from the dense model's config, weights shared by name, not converted: its spikes "
                "are those of the dense weights as they are (accuracy not measured; convert the model first)")
    timesteps = getattr(getattr(snn, "config", None), "timesteps", None)
    return EnergyReport(energy, int(x.shape[0]), reports["snn"], reports["ann"], timesteps, accuracy, note)


# ---------------------------------------------------------------------------------------------------
# Text table


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def format_table(report: EnergyReport) -> str:
    """Per-layer counts and energies, SNN beside ANN, aligned; totals last."""
    snn, ann = report.snn.per_layer, (report.ann.per_layer if report.ann is not None else {})
    names = list(OrderedDict.fromkeys([*snn, *ann]))
    em = report.energy_model
    header = (f"{'layer':42s} {'SNN ACs':>9s} {'SNN MACs':>9s} {'masks+adds':>10s} {'neuron upd':>10s} "
              f"{'SNN pJ':>9s} {'ANN MACs':>9s} {'ANN pJ':>9s}")
    lines = [f"energy model {em.name}: per inference, mean over {report.samples} samples", header, "-" * len(header)]

    def row(label, s, a):
        return (f"{label[:42]:42s} {_fmt(s and s['acs']):>9s} {_fmt(s and s['macs']):>9s} "
                f"{_fmt(s and s['masks'] + s['adds']):>10s} {_fmt(s and s['neuron_updates']):>10s} "
                f"{_fmt(s and em.energy(s)):>9s} {_fmt(a and a['macs']):>9s} {_fmt(a and em.energy(a)):>9s}")

    for name in names:
        s, a = snn.get(name), ann.get(name)
        if (s is None or not any(s.values())) and (a is None or not any(a.values())):
            continue
        lines.append(row(name, s, a))
    lines.append("-" * len(header))
    lines.append(row("total", report.snn.totals(), report.ann.totals() if report.ann is not None else None))
    ratio = report.ratio
    summary = [f"SNN {_fmt(report.energy('snn'))} pJ"]
    if ratio is not None:
        summary += [f"ANN {_fmt(report.energy('ann'))} pJ", f"ANN / SNN = {ratio:.2f}x"]
    bound = report.bound()
    if bound is not None:
        summary.append(f"bound (E_MAC/E_AC)/(rate*T) = {bound:.2f}x at mean rate {report.mean_firing_rate():.4f}, "
                       f"T={report.timesteps}")
    measured = [f"{k.upper()} {v:.4f}" for k, v in report.accuracy.items() if v is not None]
    if measured:
        summary.append("accuracy " + ", ".join(measured))
    lines.append("; ".join(summary))
    if report.twin not in ("given", "none"):
        lines.append(f"twin: {report.twin}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The CLI's entry point


def energy_checkpoint(path, *, energy_model="45nm", samples: int = 360, twin_path=None, out=None,
                      batch_size: int = 64, timesteps: Optional[int] = None) -> EnergyReport:
    """``spiking-attn energy``: the first ``samples`` test samples of the checkpoint's task. With ``out``,
    writes ``energy_breakdown.png`` and, last, ``energy.json``. ``timesteps`` runs a spiking checkpoint
    for another T than it was saved with (a converted model's T is a run-time setting)."""
    from spiking_attn.checkpoint import config_from_checkpoint, load_model, read_checkpoint
    from spiking_attn.data import checkpoint_test_samples
    from spiking_attn.outputs import write_json

    energy = load_energy_model(energy_model)  # a bad model fails before any work
    check_int(samples, "samples", low=1)
    if timesteps is not None:
        check_int(timesteps, "timesteps", low=1, high=100000)
    payload = read_checkpoint(path)
    config = config_from_checkpoint(payload)
    if timesteps is not None and config.model != "spiking":
        raise SpikingAttnError("--timesteps applies to a spiking checkpoint; this one holds a dense model")
    task, data, rows = checkpoint_test_samples(payload, path, samples, "spiking_attn.hardware.energy.estimate(model, x)")
    twin = None
    if twin_path is not None:
        twin_payload = read_checkpoint(twin_path)
        twin_config = config_from_checkpoint(twin_payload)
        if twin_config.model == config.model:
            raise SpikingAttnError(f"--twin {str(twin_path)!r} holds a {twin_config.model} model like --checkpoint; "
                                   f"give the other kind")
        mine, theirs = config.to_dict(), twin_config.to_dict()
        diff = [k for k in ARCHITECTURE if mine[k] != theirs[k]]
        if diff:
            raise SpikingAttnError(f"--twin {str(twin_path)!r} is not a twin of --checkpoint: they differ in "
                                   f"{', '.join(diff)}")
        twin = load_model(twin_path)
    model = load_model(path) if timesteps is None else load_model(path, timesteps=timesteps)
    report = estimate(model, data.x_test[rows], energy, cue=data.context("test", rows).get("cue"),
                      labels=data.y_test[rows], twin=twin, batch_size=batch_size)
    if out is not None:
        from .plots import plot_energy_breakdown

        out = Path(out)
        plot_energy_breakdown(report, out / "energy_breakdown.png")
        record = {"checkpoint": str(path), "twin_checkpoint": None if twin_path is None else str(twin_path),
                  "task": task, "mechanism": config.mechanism, **report.to_dict()}
        write_json(out / "energy.json", record)
    return report
