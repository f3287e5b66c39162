"""ANN-to-SNN conversion of the library's dense twins: ``convert(model, calibration_data, method, timesteps)``.

Methods:

* ``rate``: binary spikes, rate-coded. Every population becomes integrate-and-fire (no leak) with reset
  by subtraction and a membrane starting at half its threshold; its threshold is the scale of the dense
  activation it replaces, measured on the calibration set (``mode='percentile'``, 99.9 by default, or
  ``'max'``), and the layers that read its spikes carry that scale in their weights. BatchNorm is
  folded by the layers that hold it (``LinearBN``) at run time, exactly as in the dense twin.
* ``qcfs``: the same, with the thresholds taken from the clips the dense twin learned with QCFS
  activations (``dense_act='qcfs'``; ``finetune_qcfs`` makes such a twin from a ReLU one).
* ``td``: exact time differences (``converters/td.py``), not binary.

The converted model is the library's own ``SpikingClassifier`` under a config that says so
(``dv=0``, ``reset='subtract'``, ``v_init=0.5``): it saves, loads, trains, counts and exports like any
other, and ``T`` is a run-time setting (``with_timesteps``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from spiking_attn.attention import SPIKING_KINDS
from spiking_attn.errors import DTypeError, ShapeError, SpikingAttnError, check_choice, check_int, check_tensor
from spiking_attn.models import DenseClassifier, ModelConfig, SpikingClassifier, build_model
from spiking_attn.opcount import eval_batches
from spiking_attn.recorder import SpikeRecorder

from .calibration import MODES, activation_scales
from .qcfs import QCFS
from .rules import REFUSALS, ConversionContext, ConversionError, missing_rules

METHODS = ("rate", "qcfs", "td")
DEFAULT_TIMESTEPS = (4, 8, 16, 32, 64)
BINARY_ACTIVATIONS = {"rate": ("relu", "qcfs"), "qcfs": ("qcfs",)}
FRIENDLY = ("spiking-attn train --model dense --dense-attention sdsa --dense-act qcfs (or relu) trains the "
            "conversion-friendly twin")


@dataclass
class Conversion:
    """The result of ``convert``: the spiking model and how well it matches the dense one.

    Attributes:
        model: the converted model (at the largest T of ``results``; ``with_timesteps`` changes T).
        method: 'rate', 'qcfs' or 'td'.
        dense_accuracy: the dense model's accuracy on the evaluation set (None without labels).
        results: one dict per T: ``timesteps``, ``accuracy`` (None without labels),
            ``mean_abs_output_error`` (mean |spiking logits - dense logits|) and ``firing_rate``
            (spikes per neuron per step over all populations; None for td).
        thresholds: per population, the threshold given (rate, qcfs).
        sources: per population, the dense activation it replaces (rate, qcfs).
    """

    model: nn.Module
    method: str
    dense_accuracy: Optional[float]
    results: List[dict] = field(default_factory=list)
    thresholds: Dict[str, float] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``conversion.json``: the dense accuracy, the method and the table over T."""
        return {"dense_accuracy": self.dense_accuracy, "method": self.method, "results": self.results,
                "thresholds": self.thresholds}


def with_timesteps(model: nn.Module, timesteps: int) -> nn.Module:
    """The same spiking model (same weights, same mode) run for ``timesteps`` steps."""
    check_int(timesteps, "timesteps", low=1, high=100000)
    from .td import TimeDifferenceModel

    if isinstance(model, TimeDifferenceModel):
        return TimeDifferenceModel(model.dense, timesteps)
    if hasattr(model, "with_timesteps") and not isinstance(getattr(model, "config", None), ModelConfig):
        return model.with_timesteps(timesteps)  # the plain torch models' converted forms
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise DTypeError(f"with_timesteps takes a model of this library, got {type(model).__name__}")
    if config.timesteps == timesteps:
        return model
    other = build_model(dataclasses.replace(config, timesteps=timesteps))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def _check_dense(model) -> ModelConfig:
    if isinstance(model, SpikingClassifier):
        raise ConversionError("the model is already spiking; the converter takes a dense twin "
                              "(a checkpoint trained with --model dense)")
    return model.config


def spiking_config(config: ModelConfig, method: str, timesteps: int) -> ModelConfig:
    """The config of the spiking model that ``method`` makes from a dense twin with ``config``."""
    check_choice(method, "method", METHODS)
    if config.model != "dense":
        raise ConversionError("the source config describes a spiking model; the converter takes a dense twin")
    if method in BINARY_ACTIVATIONS:
        if config.dense_attention not in SPIKING_KINDS:
            raise ConversionError(
                f"the dense twin uses {config.dense_attention} attention, which has no binary-spike form (a softmax "
                f"normalises every score by all the others at once); convert it with --method td (exact, not binary), "
                f"or {FRIENDLY}")
        if config.dense_act not in BINARY_ACTIVATIONS[method]:
            hint = ("its activations have no learned clip; --method qcfs fine-tunes them first from the command "
                    "line (finetune_qcfs in Python)" if method == "qcfs" and config.dense_act == "relu" else
                    f"an integrate-and-fire rate is a clipped ReLU; {FRIENDLY}")
            raise ConversionError(f"--method {method} needs a dense twin with "
                                  f"{' or '.join(BINARY_ACTIVATIONS[method])} activations, this one has "
                                  f"{config.dense_act}: {hint}")
    from spiking_attn.mechanisms import get_mechanism

    options = {**config.mechanism_options, **get_mechanism(config.mechanism).conversion_options}
    return dataclasses.replace(
        config, model="spiking", mechanism_options=options, attention=config.dense_attention if config.dense_attention in SPIKING_KINDS
        else config.attention, encoder="direct", dv=0.0, vth=1.0, reset="subtract", v_init=0.5, timesteps=timesteps,
        learn_threshold=False, learn_bias=False, learn_decay=False, per_channel=False, engine="native")


def _calibration(calibration_data, cue):
    if isinstance(calibration_data, dict):
        unknown = sorted(set(calibration_data) - {"x", "cue"})
        if unknown or "x" not in calibration_data:
            raise SpikingAttnError(f"calibration_data as a dict holds 'x' (and 'cue'), got keys {sorted(calibration_data)}")
        if cue is not None and calibration_data.get("cue") is not None:
            raise SpikingAttnError("give the calibration cue once (in calibration_data or as cue=)")
        cue = calibration_data.get("cue", cue)
        calibration_data = calibration_data["x"]
    if not isinstance(calibration_data, torch.Tensor):
        raise DTypeError(f"calibration_data must be a tensor [B, N, F] (or a dict with 'x' and 'cue'), got "
                         f"{type(calibration_data).__name__}")
    if calibration_data.dim() >= 1 and calibration_data.shape[0] == 0:
        raise SpikingAttnError("the calibration set is empty (calibration_data holds no samples)")
    return calibration_data, cue


def _check_inputs(config: ModelConfig, x: torch.Tensor, name: str) -> None:
    check_tensor(x, name, ndim=3, last_dim=config.in_features)
    if x.shape[1] != config.num_tokens:
        raise ShapeError(f"{name} has {x.shape[1]} tokens per sample but the model expects {config.num_tokens}")


def transfer_weights(dense: nn.Module, spiking: nn.Module) -> None:
    """Copy every dense parameter and buffer into the spiking model by name (a QCFS clip stays behind: it
    becomes a threshold). A dense weight without a place in the spiking model is an error."""
    target = spiking.state_dict()
    clips = {f"{n}.clip" for n, m in dense.named_modules() if isinstance(m, QCFS)}
    state = {k: v for k, v in dense.state_dict().items() if k not in clips}
    extra = sorted(set(state) - set(target))
    wrong = sorted(k for k in state if k in target and state[k].shape != target[k].shape)
    if extra or wrong:
        raise ConversionError(f"the dense weights do not fit the spiking twin (no place for: {', '.join(extra[:4])}"
                              f"{'; wrong shape: ' + ', '.join(wrong[:4]) if wrong else ''})")
    spiking.load_state_dict(state, strict=False)


def activation_clips(model: nn.Module) -> Dict[str, float]:
    """The learned clip of every QCFS activation of ``model``, by name."""
    return {n: float(m.clip.detach()) for n, m in model.named_modules() if isinstance(m, QCFS)}


@torch.no_grad()
def _outputs(model: nn.Module, x, cue, batch_size: int, firing: bool = False):
    recorder = SpikeRecorder(model, keep="counts") if firing else None
    if recorder is not None:
        with recorder:
            logits = torch.cat([out for _, out in eval_batches(model, x, cue, batch_size)])
        spikes = sum(s for s, _ in recorder.counts.values())
        steps = sum(k for _, k in recorder.counts.values())
        return logits, (spikes / steps if steps else 0.0)
    return torch.cat([out for _, out in eval_batches(model, x, cue, batch_size)]), None


def evaluate_conversion(dense: nn.Module, spiking: nn.Module, timesteps: Sequence[int], x: torch.Tensor,
                        y: Optional[torch.Tensor] = None, cue: Optional[torch.Tensor] = None, *,
                        batch_size: int = 64, progress: bool = False):
    """The dense accuracy and, per T, the spiking model's accuracy, output error and firing rate (None for a
    model without populations: a td form)."""
    from spiking_attn.neuron import populations

    reference, _ = _outputs(dense, x, cue, batch_size)
    if y is not None and reference.dim() != 2:
        raise ShapeError(f"accuracy needs class scores [B, classes], the model gives {tuple(reference.shape)}")
    accuracy = (lambda logits: None) if y is None else (lambda logits: float((logits.argmax(-1) == y).double().mean()))
    results = []
    for t in tqdm(list(timesteps), desc="evaluating", unit="T", disable=not progress, dynamic_ncols=True):
        model = with_timesteps(spiking, t)
        logits, rate = _outputs(model, x, cue, batch_size, firing=bool(populations(model)))
        results.append({"timesteps": int(t), "accuracy": accuracy(logits),
                        "mean_abs_output_error": float((logits - reference).abs().mean()), "firing_rate": rate})
    return accuracy(reference), results


def _check_timesteps(timesteps) -> List[int]:
    if isinstance(timesteps, int) and not isinstance(timesteps, bool):
        timesteps = [timesteps]
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Sequence) or not timesteps:
        raise SpikingAttnError(f"timesteps must be a positive integer or a non-empty list of them, got {timesteps!r}")
    values = [check_int(t, "timesteps", low=1, high=100000) for t in timesteps]
    if len(set(values)) != len(values):
        raise SpikingAttnError(f"timesteps lists a value twice: {values}")
    return sorted(values)


def _check_scaffold(config) -> None:
    """The converter takes classifiers; a model of another scaffold (the encoder-decoder) is refused with the
    reason its registry entry gives."""
    from spiking_attn.mechanisms import get_mechanism

    spec = get_mechanism(config.mechanism)
    if spec.scaffold != "classifier":
        reason = REFUSALS.get(spec.model_type("spiking"), "no conversion rule")
        raise ConversionError(f"mechanism {config.mechanism!r} ({spec.scaffold} scaffold) has no conversion yet: {reason}")


def convert(model: nn.Module, calibration_data, method: str = "rate", timesteps=DEFAULT_TIMESTEPS, *,
            cue: Optional[torch.Tensor] = None, evaluation: Optional[dict] = None, mode: str = "percentile",
            percentile: float = 99.9, batch_size: int = 64, progress: bool = False) -> Conversion:
    """Convert a trained dense twin into a spiking model of this library.

    Args:
        model: a ``DenseClassifier`` (the plain transformer or any registered mechanism), or a plain torch
            model (``torch_models.convert_torch_model``; it takes no cue).
        calibration_data: inputs ``[B, N, F]`` (or ``{'x': ..., 'cue': ...}``): the samples the activation
            scales (rate) are measured on.
        method: 'rate', 'qcfs' or 'td' (see the module docstring).
        timesteps: the T (or list of T) to evaluate; the returned model runs the largest.
        cue: the calibration samples' cue, for cued tasks.
        evaluation: ``{'x', 'y', 'cue'}`` to fill the accuracy-vs-T table (default: the calibration
            inputs, without accuracy).
        mode, percentile: how rate conversion reads an activation's scale (``calibration.activation_scales``).
        batch_size: samples per forward pass.
        progress: show progress bars.
    """
    if isinstance(getattr(model, "config", None), ModelConfig):
        _check_scaffold(model.config)
    if isinstance(model, nn.Module) and not isinstance(model, (DenseClassifier, SpikingClassifier)):
        from .torch_models import convert_torch_model  # a plain torch model

        if cue is not None or (isinstance(calibration_data, dict) and calibration_data.get("cue") is not None):
            raise SpikingAttnError("a plain torch model takes no cue")
        if isinstance(calibration_data, dict):
            calibration_data = calibration_data.get("x")
        return convert_torch_model(model, calibration_data, method, timesteps, evaluation=evaluation, mode=mode,
                                   percentile=percentile, batch_size=batch_size, progress=progress)
    if not isinstance(model, nn.Module):
        raise ConversionError(f"convert takes a dense twin of this library (DenseClassifier) or a plain torch model, "
                              f"got {type(model).__name__}")
    config = _check_dense(model)
    check_choice(method, "method", METHODS)
    steps = _check_timesteps(timesteps)
    check_choice(mode, "mode", MODES)
    x, cue = _calibration(calibration_data, cue)
    _check_inputs(config, x, "calibration_data")
    evaluation = dict(evaluation or {"x": x, "cue": cue})
    unknown = sorted(set(evaluation) - {"x", "y", "cue"})
    if unknown or "x" not in evaluation:
        raise SpikingAttnError(f"evaluation holds 'x', 'y' and 'cue', got keys {sorted(evaluation)}")
    _check_inputs(config, evaluation["x"], "evaluation['x']")
    y = evaluation.get("y")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != evaluation["x"].shape[:1]):
        raise ShapeError("evaluation['y'] must hold one label per evaluation sample")
    dense = model.eval()
    if method == "td":
        from .td import TimeDifferenceModel

        spiking = TimeDifferenceModel(dense, steps[-1])
        dense_accuracy, results = evaluate_conversion(dense, spiking, steps, evaluation["x"], y, evaluation.get("cue"),
                                                      batch_size=batch_size, progress=progress)
        return Conversion(spiking, method, dense_accuracy, results)
    spiking = build_model(spiking_config(config, method, steps[-1]))
    missing = missing_rules(spiking)
    if missing:
        raise ConversionError(f"no {method} conversion rule for: {', '.join(missing)}; these modules cannot be "
                              f"converted yet (--method td converts every mechanism exactly)")
    if method == "rate":
        if progress:
            print(f"calibrating on {x.shape[0]} samples ({mode}{f' {percentile:g}' if mode == 'percentile' else ''})")
        scales = activation_scales(dense, x, cue, mode=mode, percentile=percentile, batch_size=batch_size,
                                   skip_idle=True)
    else:  # the learned clips; an activation the QCFS twin keeps as a ReLU (a controller's, say) is calibrated
        scales = activation_clips(dense)
        relus = [n for n, m in dense.named_modules() if isinstance(m, nn.ReLU)]
        if relus:
            scales.update(activation_scales(dense, x, cue, modules=relus, mode=mode, percentile=percentile,
                                            batch_size=batch_size, skip_idle=True))
    transfer_weights(dense, spiking)
    ctx = ConversionContext(spiking, dense, scales, calibration=(x, cue), mode=mode, percentile=percentile,
                            batch_size=batch_size)
    ctx.convert(spiking, dense)
    spiking.eval()
    dense_accuracy, results = evaluate_conversion(dense, spiking, steps, evaluation["x"], y, evaluation.get("cue"),
                                                  batch_size=batch_size, progress=progress)
    return Conversion(spiking, method, dense_accuracy, results, ctx.thresholds, ctx.sources)


CONVERSION_FILES = ("checkpoint.pt", "conversion.json", "accuracy_vs_T.png")
CONVERSION_OUTPUTS = (*CONVERSION_FILES, "dense_qcfs.pt")  # every file a conversion may write


def chosen_timesteps(dense_accuracy: Optional[float], results: List[dict], tolerance: float = 0.01) -> int:
    """The T a converted checkpoint is saved with: the smallest within ``tolerance`` of the dense accuracy,
    else the largest evaluated."""
    if dense_accuracy is not None:
        for row in results:
            if row["accuracy"] is not None and row["accuracy"] >= dense_accuracy - tolerance:
                return row["timesteps"]
    return results[-1]["timesteps"]


def convert_checkpoint(path, *, method: str = "rate", timesteps=DEFAULT_TIMESTEPS, calibration: int = 512,
                       out, mode: str = "percentile", percentile: float = 99.9, finetune_epochs: Optional[int] = None,
                       qcfs_levels: int = 4, progress: bool = True) -> dict:
    """Convert the dense twin saved at ``path`` and write ``out/checkpoint.pt``, ``out/conversion.json`` and
    ``out/accuracy_vs_T.png``; returns the conversion.json data.

    The calibration set is the first ``calibration`` training samples of the checkpoint's task, the table
    is measured on its whole test set. ``--method qcfs`` on a ReLU twin first fine-tunes it with QCFS
    activations of ``qcfs_levels`` levels for ``finetune_epochs`` epochs (default: the task's epochs), and
    saves that twin too (``out/dense_qcfs.pt``). For td, ``checkpoint.pt`` holds the dense weights: the td
    form has none of its own (``TimeDifferenceModel(load_model(path), T)`` runs it).
    """
    from spiking_attn.checkpoint import config_from_checkpoint, load_model, read_checkpoint, save_checkpoint
    from spiking_attn.data import checkpoint_test_samples
    from spiking_attn.outputs import write_json

    from .figures import plot_accuracy_vs_timesteps
    from .qcfs import finetune_qcfs

    check_choice(method, "method", METHODS)
    steps = _check_timesteps(timesteps)
    check_int(calibration, "calibration", low=1)
    payload = read_checkpoint(path)
    config = config_from_checkpoint(payload)
    _check_scaffold(config)
    if config.model != "dense":
        raise ConversionError(f"checkpoint {str(path)!r} holds a spiking model; the converter takes a dense twin "
                              f"(train one with --model dense)")
    task, data, _ = checkpoint_test_samples(payload, path, 1, "spiking_attn.converters.convert(model, x)")
    if calibration > len(data.x_train):
        raise SpikingAttnError(f"calibration ({calibration}) is more than the {len(data.x_train)} training samples "
                               f"of task {task!r}")
    model = load_model(path)
    if method in BINARY_ACTIVATIONS:  # a softmax or GELU twin fails here, before any fine-tuning
        spiking_config(config if method == "rate" or config.dense_act == "qcfs"
                       else dataclasses.replace(config, dense_act="qcfs"), method, steps[-1])
    settings = dict((payload.get("training") or {}).get("settings") or {})
    extra = {}
    if method == "qcfs" and config.dense_act != "qcfs":
        from spiking_attn.training import evaluate

        epochs = finetune_epochs if finetune_epochs is not None else settings.get("epochs", 40)
        source_accuracy = evaluate(model, data.x_test, data.y_test, **data.context("test"))["accuracy"]
        model = finetune_qcfs(model, data, levels=qcfs_levels, epochs=epochs, seed=settings.get("seed", 0),
                              lr=settings.get("lr", 6e-3), batch_size=settings.get("batch_size", 64),
                              calibration=calibration, progress=progress)
        extra = {"finetuned": {"levels": qcfs_levels, "epochs": epochs, "source_accuracy": source_accuracy,
                               "accuracy": model.finetune_accuracy}}
    rows = slice(0, calibration)
    calib = {"x": data.x_train[rows], "cue": data.context("train", rows).get("cue")}
    evaluation = {"x": data.x_test, "y": data.y_test, "cue": data.context("test").get("cue")}
    result = convert(model, calib, method, steps, evaluation=evaluation, mode=mode, percentile=percentile,
                     progress=progress)
    info = {**result.to_dict(), "task": task, "source": str(path), "calibration_samples": calibration,
            "calibration": {"mode": mode, "percentile": percentile} if method == "rate" else None, **extra}
    info["saved_timesteps"] = chosen_timesteps(result.dense_accuracy, result.results)
    # td keeps the dense weights, which is all its time-difference form needs
    saved = model if method == "td" else with_timesteps(result.model, info["saved_timesteps"])
    training = {"settings": settings, "conversion": {k: v for k, v in info.items() if k != "results"}}
    save_checkpoint(out / "checkpoint.pt", saved, training)
    if extra:
        save_checkpoint(out / "dense_qcfs.pt", model, {"settings": settings})
    write_json(out / "conversion.json", info)
    plot_accuracy_vs_timesteps(info, out / "accuracy_vs_T.png",
                               f"{method} conversion of the "
                               f"{'plain' if config.mechanism == 'none' else config.mechanism} dense twin on {task}")
    return info
