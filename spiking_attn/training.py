"""Training with surrogate gradients (BPTT over the T steps), for the spiking model or its dense twin.

``train(...)`` is the whole job behind ``spiking-attn train``: it builds the model from the task's
shape, trains with AdamW and a cosine schedule, checkpoints atomically after every epoch, and on
completion writes ``metrics.json`` and the figures. ``resume=DIR`` continues from ``DIR/checkpoint.pt``
and ends with exactly the weights an uninterrupted run would have (same seed, same machine).

Every source of randomness is derived from ``seed``: weight init from the global generator seeded
once, the batch order and rate-encoder draws from generators seeded by ``(seed, epoch)``. So a run
restarted at an epoch boundary replays the same stream.

``nproc=N`` (``--nproc``) trains on N processes of this machine, and a run started by ``torchrun`` on
as many processes as it started: ``batch_size`` stays the global batch, each process computes its share,
and the result equals the one-process run up to the order of float sums (``distributed`` says how).
Rank 0 evaluates and writes; the others wait for it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import auxiliary, launch, native_ops
from .checkpoint import config_from_checkpoint, load_state, read_checkpoint, save_checkpoint
from .data import TASKS, TokenDataset, load_task
from .distributed import SOLO, Team, check_processes
from .errors import (CheckpointError, DistributedError, DTypeError, ShapeError, SpikingAttnError, check_bool,
                     check_choice, check_int, check_number, check_path, check_positive_int)
from .global_batchnorm import convert_batchnorm
from .models import MODEL_KINDS, ModelConfig, build_model
from .neuron import attach_constraints
from .outputs import RUN_FILES, RunFolder, remove_partial_files, write_json
from .recorder import SpikeRecorder
from .regularizers import REGULARIZERS, RegularizerInputs, population_spikes, regularization
from .resources import check_training_memory

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10**6
MAX_BATCH = 2**20
MAX_LR = 10.0  # larger steps only ever diverge; refuse them rather than report NaN


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings, stored in the checkpoint so a resumed run uses the same ones."""

    task: str = "digits"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 6e-3
    weight_decay: float = 0.01
    seed: int = 0
    augment: bool = False  # random 1-pixel shifts of the digits (ignored for other tasks)
    use_cue: bool = True  # False: withhold a cued task's cue (the no-cue baseline)
    regularizers: dict = field(default_factory=dict)  # name -> weight (regularizers.REGULARIZERS)
    target_rate: float = 0.1  # the firing rate the rate_target regulariser pulls towards

    def __post_init__(self) -> None:
        check_choice(self.task, "task", TASKS.names())
        check_int(self.epochs, "epochs", low=1, high=MAX_EPOCHS)
        check_int(self.batch_size, "batch_size", low=1, high=MAX_BATCH)
        check_number(self.lr, "lr", low=0.0, low_open=True, high=MAX_LR)
        check_number(self.weight_decay, "weight_decay", low=0.0)
        check_int(self.seed, "seed", low=0, high=MAX_SEED)
        check_bool(self.augment, "augment")
        check_bool(self.use_cue, "use_cue")
        if not isinstance(self.regularizers, dict):
            raise DTypeError(f"regularizers must be a dict of name -> weight, got {type(self.regularizers).__name__}")
        for name, weight in self.regularizers.items():
            check_choice(name, "regularizer", REGULARIZERS.names())
            check_number(weight, f"weight of regularizer {name!r}", low=0.0)
        check_number(self.target_rate, "target_rate", low=0.0, high=1.0)


def label_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class logits ``[B, C]`` against ``y`` ``[B]``, or of sequence logits ``[B, L, C]``
    against ``y`` ``[B, L]`` (the mean over every position)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def correct_labels(logits: torch.Tensor, y: torch.Tensor) -> int:
    """How many samples are right: the class, or every position of the sequence (sequence accuracy)."""
    right = logits.argmax(-1) == y
    return int((right if right.dim() == 1 else right.all(-1)).sum())


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # seed < 2**32 and epoch <= 10**6 keep this below 2**63, the generator's limit
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             firing_rates: bool = False, seed: int = 0, **context: torch.Tensor) -> dict:
    """Accuracy of ``model`` on ``(x, y)``; with ``firing_rates`` also the mean rate of every population.

    ``context`` holds further per-sample model inputs (``cue=...``), sliced along the batch like ``x``.
    For sequence labels ``y`` ``[S, L]``, a sample counts as right only if every position is (sequence
    accuracy).
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, value in (("x", x), ("y", y), *context.items()):
        if not isinstance(value, torch.Tensor):
            raise DTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0 or len(value) != len(x) or len(x) == 0:
            raise ShapeError(f"{name} must hold one entry per sample of x ({len(x) if x.dim() else 0}), "
                             f"got shape {tuple(value.shape)}")
    check_positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    recorder = SpikeRecorder(model, keep="counts") if firing_rates else None
    try:
        with recorder or contextlib.nullcontext():
            for start in range(0, len(x), batch_size):
                part = slice(start, start + batch_size)
                logits = model(x[part], generator=gen, **{k: v[part] for k, v in context.items()})
                correct += correct_labels(logits, y[part])
    finally:
        model.train(was_training)
    result = {"accuracy": correct / len(x)}
    if recorder:
        result["firing_rates"] = recorder.firing_rates()
    return result


def _train_epoch(model, optimizer, data: TokenDataset, settings: TrainSettings, epoch: int, bar,
                 team: Team = SOLO) -> dict:
    model.train()
    gen = _epoch_generator(settings.seed, epoch)
    augment = TASKS.get(settings.task).augment if settings.augment else None
    order = torch.randperm(len(data.x_train), generator=gen)
    weights = settings.regularizers
    needs_spikes = any(REGULARIZERS.get(name).needs_spikes for name in weights)
    total_loss, correct = 0.0, 0
    reg_sums = {name: 0.0 for name in weights}
    for start in range(0, len(order), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        x = data.x_train[idx]
        if augment is not None:
            x = augment(x, gen)
        rows = team.rows(len(idx))  # this process's share of the global batch (all of it in one process)
        own = idx[rows]
        with auxiliary.collect() as reports, \
                (population_spikes(model) if needs_spikes else contextlib.nullcontext([])) as spikes, \
                team.shard(len(idx)):
            logits = model(x[rows], generator=gen, **data.context("train", own))
        loss = team.share(label_loss(logits, data.y_train[own]), len(idx))
        if weights:
            inputs = team.gather(RegularizerInputs(reports, spikes, settings.target_rate), len(idx))
            penalty, values = regularization(weights, inputs)
            loss = loss + team.share_replicated(penalty)
            for name, value in values.items():
                reg_sums[name] += float(value.detach()) * len(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        team.reduce_gradients(model.parameters())
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += correct_labels(logits, data.y_train[own])
        bar.update(1)
    total_loss, correct = team.sum([total_loss, correct])
    n = len(order)
    return {"train_loss": total_loss / n, "train_accuracy": correct / n,
            **{f"reg_{name}": value / n for name, value in reg_sums.items()}}


def check_scaffold_fits(config: ModelConfig, data: TokenDataset) -> None:
    """A classifier mechanism needs a task with a class per sample, the sequence scaffold one with a sequence
    per sample (``MechanismSpec.scaffold``)."""
    from .mechanisms import get_mechanism

    scaffold = get_mechanism(config.mechanism).scaffold
    wants = "sequence" if data.sequence_labels else "classifier"
    if scaffold != wants:
        what = "a sequence" if data.sequence_labels else "a class"
        raise SpikingAttnError(f"mechanism {config.mechanism!r} builds a {scaffold} model, but task {data.name!r} "
                               f"labels each sample with {what}; choose a mechanism of the {wants} scaffold "
                               f"(--list-mechanisms) or another task")


def _resolve_resume(resume, given: dict) -> tuple:
    """Read ``resume/checkpoint.pt`` and check that explicitly given options agree with it."""
    ckpt_path = Path(resume) / "checkpoint.pt"
    payload = read_checkpoint(ckpt_path)
    config = config_from_checkpoint(payload)
    state = payload["training"]
    try:
        settings = TrainSettings(**state["settings"])
    except (KeyError, TypeError, SpikingAttnError) as exc:
        raise CheckpointError(f"checkpoint {str(ckpt_path)!r} has no usable training state ({exc})") from None
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= settings.epochs:
        raise CheckpointError(f"checkpoint {str(ckpt_path)!r} has training epoch {epoch!r}; it must be an integer "
                              f"in [0, {settings.epochs}]")
    stored = {**asdict(settings), "model": config.model, "timesteps": config.timesteps,
              "attention": config.attention, "mechanism": config.mechanism}
    for key, value in given.items():
        if value is not None and stored.get(key, value) != value:
            raise SpikingAttnError(
                f"--resume: {key}={value!r} differs from the checkpoint's {key}={stored[key]!r}")
    return payload, config, settings


def _check_resume_fits(config: ModelConfig, data: TokenDataset, folder) -> None:
    """A checkpoint resumed on its task must still fit the task's data (shapes and cue width)."""
    expected = {"in_features": data.in_features, "num_tokens": data.num_tokens, "num_classes": data.num_classes,
                "num_cues": data.num_cues}
    wrong = [f"{k}={getattr(config, k)} (the task has {v})" for k, v in expected.items() if getattr(config, k) != v]
    if wrong:
        raise CheckpointError(f"checkpoint in {str(folder)!r} does not fit task {data.name!r}: {', '.join(wrong)}; "
                              "it was written for another version of the task and cannot be resumed")


def train(task: Optional[str] = None, model: Optional[str] = None, timesteps: Optional[int] = None,
          epochs: Optional[int] = None, seed: Optional[int] = None, out: Optional[str | os.PathLike] = None,
          resume: Optional[str | os.PathLike] = None, attention: Optional[str] = None,
          mechanism: Optional[str] = None, batch_size: Optional[int] = None, lr: Optional[float] = None,
          augment: Optional[bool] = None, use_cue: Optional[bool] = None,
          regularizers: Optional[dict] = None, target_rate: Optional[float] = None,
          stop_after: Optional[int] = None, overwrite: bool = False,
          progress: bool = True, figures: bool = True, nproc: Optional[int] = None,
          sparse_products: Optional[bool] = None, fused_batchnorm: Optional[bool] = None,
          **config_overrides) -> dict:
    """Train a classifier on an embedded task and return its metrics.

    Args:
        task: a registered task: 'digits' (default), 'cue', ... (``data.TASKS``).
        model: 'spiking' (default) or 'dense'.
        timesteps: T for the spiking model (default 4).
        epochs: total epochs (default per task).
        seed: random seed (default 0).
        out: output folder (default: ``resume`` when resuming; required otherwise).
        resume: folder of an earlier run to continue.
        attention: 'sdsa' (default) or 'ssa' for the spiking model.
        mechanism: a registered mechanism (default 'none', the plain transformer).
        batch_size, lr: optimiser settings (defaults in ``TrainSettings``).
        augment: the task's augmentation during training, if it has one (digits: random 1-pixel shifts;
            default off).
        use_cue: give the model the task's cue (default True); False trains the no-cue baseline.
        regularizers: ``{name: weight}`` of ``regularizers.REGULARIZERS`` (arousal_prior, free_energy,
            rate_target, head_diversity); each is logged per epoch as ``history["reg_<name>"]``.
        target_rate: the firing rate ``rate_target`` pulls towards (default 0.1).
        stop_after: train at most this many epochs in this call, then return (the run can be resumed).
        overwrite: replace a run already in ``out`` (otherwise that is an error).
        progress: show a tqdm bar.
        figures: write training.png and spikes_attention.png on completion.
        nproc: train on this many processes of this machine (default 1; data-parallel, torch.distributed).
            Inside a run that torchrun started, leave it out (or give its WORLD_SIZE).
        sparse_products: True or False sets ``native_ops.set_sparse_products`` for this run, in every process
            of it (None, the default, keeps the current setting: off unless ``SPIKING_ATTN_SPARSE_PRODUCTS=1``).
        fused_batchnorm: the same for ``native_ops.set_fused_batchnorm`` (BatchNorm in the project's kernel, fused
            with the population it feeds; off unless ``SPIKING_ATTN_FUSED_BATCHNORM=1``).
        config_overrides: other ``ModelConfig`` fields (dim, depth, heads, engine, encoder, ...).

    Returns:
        the metrics dict also written to ``out/metrics.json`` (``completed`` is False after ``stop_after``).
    """
    call = {k: v for k, v in locals().items() if k != "config_overrides"}
    call.update(config_overrides)  # what the processes of a multi-process run are called with
    if stop_after is not None:
        check_int(stop_after, "stop_after", low=1, high=MAX_EPOCHS)
    for name, flag in (("overwrite", overwrite), ("progress", progress), ("figures", figures)):
        check_bool(flag, name)
    asked = {"sparse_products": sparse_products, "fused_batchnorm": fused_batchnorm}
    changed = {name: value for name, value in asked.items()
               if value is not None and check_bool(value, name) != native_ops.option(name)}
    if changed:
        previous = {name: native_ops.set_option(name, value) for name, value in changed.items()}
        try:
            return train(**call)  # (call keeps the options, so the processes of a run set them too)
        finally:
            for name, value in previous.items():
                native_ops.set_option(name, value)
    if resume is not None:
        resume = check_path(resume, "resume")
        if config_overrides:
            raise SpikingAttnError(f"--resume takes the model config from the checkpoint; do not pass {sorted(config_overrides)}")
        given = {"task": task, "model": model, "timesteps": timesteps, "epochs": epochs, "seed": seed,
                 "attention": attention, "mechanism": mechanism, "batch_size": batch_size, "lr": lr,
                 "augment": augment, "use_cue": use_cue, "regularizers": regularizers, "target_rate": target_rate}
        payload, config, settings = _resolve_resume(resume, given)
        out = out if out is not None else resume
    else:
        if out is None:
            raise SpikingAttnError("out must name an output folder")
        check_path(out, "out")
        task = "digits" if task is None else check_choice(task, "task", TASKS.names())
        check_choice(model or "spiking", "model", MODEL_KINDS)
        settings = TrainSettings(task=task, epochs=TASKS.get(task).epochs if epochs is None else epochs,
                                 seed=0 if seed is None else seed,
                                 **{k: v for k, v in (("batch_size", batch_size), ("lr", lr), ("augment", augment),
                                                      ("use_cue", use_cue), ("regularizers", regularizers),
                                                      ("target_rate", target_rate)) if v is not None})
        payload = None
    data = load_task(settings.task)
    if not settings.use_cue:
        data = data.without_cue()
    if payload is not None:
        _check_resume_fits(config, data, resume)
    if payload is None:
        fields = {"in_features": data.in_features, "num_tokens": data.num_tokens, "num_classes": data.num_classes,
                  "num_cues": data.num_cues, "model": model or "spiking",
                  "timesteps": 4 if timesteps is None else timesteps, "attention": "sdsa",
                  "mechanism": "none", **TASKS.get(settings.task).model_defaults}
        for name, value in (("attention", attention), ("mechanism", mechanism)):
            if value is not None:
                fields[name] = value
        unknown = sorted(set(config_overrides) - {f.name for f in dataclass_fields(ModelConfig)})
        if unknown:
            raise SpikingAttnError(f"unknown model option(s): {', '.join(unknown)}")
        config = ModelConfig(**{**fields, **config_overrides})
    check_scaffold_fits(config, data)
    check_training_memory(config, settings.batch_size)
    launched = _launched_processes(nproc)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) and Team.current().leader:
        # once per run: here, before any process starts (the processes launch.run_local starts join their
        # group before they call train, and write to no terminal of their own); under torchrun, rank 0
        with torch.device("meta"):
            warn_if_batchnorm_stays_at_its_start(build_model(config), settings.epochs * _steps_per_epoch(settings, data))
    if launched > 1:  # one process of a run torchrun (or run_local, below) started
        check_processes(launched, settings.batch_size, len(data.x_train),
                        name="--nproc" if nproc is not None else "WORLD_SIZE")
        with launch.process_group() as team, _team_folder(team, out, overwrite, resume is not None) as folder:
            return _run(config, settings, data, folder, payload, stop_after, progress, figures, team)
    nproc = 1 if nproc is None else check_processes(nproc, settings.batch_size, len(data.x_train))
    with RunFolder(out, overwrite=overwrite, resume=resume is not None) as folder:
        if nproc == 1:
            return _run(config, settings, data, folder, payload, stop_after, progress, figures)
        try:
            return launch.run_local(_train_rank, nproc, {**call, "nproc": nproc})[0]
        except BaseException:
            remove_partial_files(folder, RUN_FILES)  # of a process killed while it wrote
            raise


def _train_rank(call: dict) -> dict:
    """What each process of ``train(nproc=N)`` runs (``launch.run_local``)."""
    return train(**call)


def _launched_processes(nproc: Optional[int]) -> int:
    """The size of the process group this process already belongs to (torchrun's WORLD_SIZE, or the group
    ``launch.run_local`` made), or 1. ``nproc``, if given, must agree with it."""
    size = launch.launched_world()
    if size > 1 and nproc is not None and nproc != size:
        raise DistributedError(f"--nproc {nproc} differs from the {size} processes already started (WORLD_SIZE="
                               f"{size}, e.g. by torchrun); leave --nproc out when a launcher starts the processes")
    return size


@contextlib.contextmanager
def _team_folder(team: Team, out, overwrite: bool, resume: bool):
    """The run folder, prepared by rank 0 (the others wait, and fail with it); only rank 0 writes in it."""
    folder = RunFolder(out, overwrite=overwrite, resume=resume)
    path = team.leader_does(folder.__enter__)
    if not team.leader:
        yield path
        return
    try:
        yield path
    except BaseException as exc:
        folder.__exit__(type(exc), exc, exc.__traceback__)
        raise
    folder.__exit__(None, None, None)


def _steps_per_epoch(settings: TrainSettings, data: TokenDataset) -> int:
    """Optimiser steps per epoch: batches of the global batch size, the last one possibly short."""
    return -(-len(data.x_train) // settings.batch_size)


BATCHNORM_START_WEIGHT = 0.05  # warn when the running statistics keep more of their start than this


def warn_if_batchnorm_stays_at_its_start(net: nn.Module, steps: int) -> Optional[float]:
    """Log a warning if ``steps`` optimiser steps are too few for the BatchNorm running statistics to leave
    their initial values (mean 0, variance 1): after ``s`` steps at momentum ``m`` the start still weighs
    ``(1 - m)^s`` in them, and evaluation reads them, so the test accuracy can sit at chance while the
    training accuracy (batch statistics) is high. Returns that weight when it warns, else None."""
    momenta = [m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats and m.momentum is not None and m.momentum > 0]
    if not momenta:
        return None
    momentum = min(momenta)
    weight = (1.0 - momentum) ** steps
    if weight <= BATCHNORM_START_WEIGHT:
        return None
    log.warning("%d optimiser steps leave %.0f%% of the BatchNorm running statistics at their start (momentum "
                "%g); evaluation uses them, so test accuracy can stay near chance while training accuracy rises. "
                "Train more steps: more epochs or a smaller batch size (at least %d steps).", steps, 100 * weight,
                momentum, math.ceil(math.log(BATCHNORM_START_WEIGHT) / math.log(1.0 - momentum)))
    return weight


def _run(config, settings, data, out, payload, stop_after, progress, figures, team: Team = SOLO) -> dict:
    torch.manual_seed(settings.seed)
    net = build_model(config)
    if team.active:
        convert_batchnorm(net)  # the global batch's statistics (the same parameters and state-dict keys)
    # foreach: one call per step for all tensors instead of a Python loop over them; on the CPU it computes
    # the same values bit for bit (tests/test_training.py checks), in less time
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                  foreach=True)
    attach_constraints(optimizer, net)  # learned neuron parameters stay in their domains
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    history = {"train_loss": [], "train_accuracy": [], "test_accuracy": [],
               **{f"reg_{name}": [] for name in settings.regularizers}}
    start_epoch = 0
    if payload is not None:
        state = payload["training"]
        load_state(net, payload["state_dict"], f"checkpoint {str(out / 'checkpoint.pt')!r}")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = {k: list(state["history"][k]) for k in history}
            start_epoch = int(state["epoch"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {str(out / 'checkpoint.pt')!r} has an unusable optimiser state "
                                  f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    team.align(net)
    end_epoch = settings.epochs if stop_after is None else min(settings.epochs, start_epoch + stop_after)
    steps = _steps_per_epoch(settings, data)
    bar = tqdm(total=(end_epoch - start_epoch) * steps, disable=not (progress and team.leader), unit="batch",
               desc=f"{config.model} {settings.task}", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, end_epoch):
            stats = _train_epoch(net, optimizer, data, settings, epoch, bar, team)
            scheduler.step()
            test_acc = team.leader_does(lambda: evaluate(net, data.x_test, data.y_test, seed=settings.seed,
                                                         **data.context("test"))["accuracy"])
            for key, value in (*stats.items(), ("test_accuracy", test_acc)):
                history[key].append(value)
            bar.set_postfix(loss=f"{stats['train_loss']:.3f}", test=f"{test_acc:.3f}")
            training_state = {"settings": asdict(settings), "epoch": epoch + 1, "history": history,
                              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            team.leader_does(lambda: save_checkpoint(out / "checkpoint.pt", net, training_state))
    finally:
        bar.close()
    completed = end_epoch == settings.epochs
    final = team.leader_does(lambda: evaluate(net, data.x_test, data.y_test, seed=settings.seed,
                                              firing_rates=config.model == "spiking", **data.context("test")))
    metrics = {
        "task": settings.task, "model": config.model, "attention": config.attention if config.model == "spiking"
        else config.dense_attention, "mechanism": config.mechanism, "test_accuracy": final["accuracy"],
        "firing_rates": final.get("firing_rates", {}), "epochs": settings.epochs,
        "epochs_done": end_epoch, "completed": completed, "timesteps": config.timesteps,
        "seed": settings.seed, "parameters": sum(p.numel() for p in net.parameters()),
        "history": history, "config": config.to_dict(), "nproc": team.size,
        **{name: native_ops.option(name) for name in native_ops.OPTIONS},  # opt-in; rounding differs (native_ops)
    }
    if completed:
        team.leader_does(lambda: _write_outputs(net, data, metrics, out, figures))
    return metrics


def _write_outputs(net, data: TokenDataset, metrics: dict, out, figures: bool) -> None:
    """metrics.json and, with ``figures``, training.png and spikes_attention.png."""
    write_json(out / "metrics.json", metrics)
    if figures:
        from .figures import plot_spikes_and_attention, plot_training

        plot_training(metrics["history"], out / "training.png",
                      f"{metrics['model']} ({metrics['attention']}) on {metrics['task']}")
        plot_spikes_and_attention(net, data.x_test[:1], out / "spikes_attention.png",
                                  **data.context("test", slice(0, 1)))
