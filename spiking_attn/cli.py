"""The ``spiking-attn`` command line.

    spiking-attn train --task digits --model spiking --timesteps 4 --epochs 30 --seed 0 --out runs/x
    spiking-attn train --resume runs/x
    spiking-attn train --list-mechanisms
    spiking-attn generate --checkpoint runs/rev/checkpoint.pt --input "3 1 4 1 5"
    spiking-attn demo

Bad input ends with one line on stderr and a non-zero exit status, never a traceback. An interrupt
(Ctrl-C) at any moment, start-up included, ends with one line and status 130. This module imports
only the standard library at load time; torch and the package come inside ``main``, where an
interrupt is caught.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Optional, Sequence

EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A command-line usage error (unknown option, bad value)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def _add_train_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from .attention import SPIKING_KINDS
    from .data import TASKS
    from .encoders import ENCODERS
    from .mechanisms import MECHANISMS
    from .models import MODEL_KINDS
    from .neuron import ENGINES
    from .surrogate import SURROGATES

    p.add_argument("--out", default="runs/demo" if demo else None, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    p.add_argument("--epochs", type=int, help="total epochs (default: the task's; 30 on digits)")
    p.add_argument("--seed", type=int, help="random seed, 0 to 2**32-1 (default 0)")
    p.add_argument("--timesteps", "-T", type=int, help="time steps T of the spiking model (default 4)")
    p.add_argument("--attention", choices=SPIKING_KINDS,
                   help="spiking attention kind (default sdsa; the quadrant task defaults to ssa)")
    p.add_argument("--engine", choices=ENGINES, help="LIF engine (default native)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if demo:
        return
    p.add_argument("--task", choices=TASKS.names(), help=f"task (default digits): {', '.join(TASKS.names())}")
    p.add_argument("--mechanism", choices=MECHANISMS.names(),
                   help="attention mechanism (default none, the plain transformer); see --list-mechanisms")
    p.add_argument("--list-mechanisms", action="store_true", help="print the registered mechanisms and exit")
    p.add_argument("--model", choices=MODEL_KINDS, help="spiking (default) or dense twin")
    from .attention import ACTIVATIONS, DENSE_KINDS

    p.add_argument("--dense-attention", choices=DENSE_KINDS,
                   help="the dense twin's attention (default softmax; sdsa or ssa are the ANN forms of the spiking "
                        "kinds, which convert to spikes: spiking-attn convert)")
    p.add_argument("--dense-act", choices=tuple(ACTIVATIONS),
                   help="the dense twin's activation (default relu; qcfs: quantized, for near-lossless conversion)")
    p.add_argument("--qcfs-levels", type=int, help="levels L of the qcfs activation (default 8)")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--stop-after", type=int, metavar="N", help="train at most N epochs now, then stop (resumable)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes of this machine (data-parallel; --batch-size stays the global batch; "
                        "for several machines use torchrun)")
    p.add_argument("--encoder", choices=ENCODERS, help="input encoding (default direct)")
    p.add_argument("--surrogate", choices=sorted(SURROGATES), help="surrogate gradient (default atan)")
    p.add_argument("--dim", type=int, help="model width D (default 64)")
    p.add_argument("--depth", type=int, help="number of blocks (default 2)")
    p.add_argument("--heads", type=int, help="attention heads (default 4)")
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--lr", type=float, help="learning rate, in (0, 10] (default 6e-3)")
    p.add_argument("--augment", action="store_true", default=None, help="random 1-pixel shifts of the digits")
    p.add_argument("--no-cue", dest="use_cue", action="store_false", default=None,
                   help="withhold the task's cue (the no-cue baseline of a cued task)")
    from .regularizers import REGULARIZERS

    p.add_argument("--reg", action="append", metavar="NAME=WEIGHT", default=None,
                   help=f"add a regulariser to the loss (repeatable): {', '.join(REGULARIZERS.names())}")
    p.add_argument("--target-rate", type=float, help="firing rate the rate_target regulariser aims at (default 0.1)")
    p.add_argument("--learn-threshold", action="store_true", default=None, help="train every population's vth")
    p.add_argument("--learn-bias", action="store_true", default=None, help="train every population's bias")
    p.add_argument("--learn-decay", action="store_true", default=None, help="train every population's du and dv")
    p.add_argument("--per-channel", action="store_true", default=None,
                   help="one set of neuron parameters per channel instead of per population")
    p.add_argument("--sparse-products", action="store_true", default=None,
                   help="weight products that skip the zeros of their input spikes (opt-in: rounding differs "
                        "from the BLAS products; metrics.json records it)")
    p.add_argument("--fused-batchnorm", action="store_true", default=None,
                   help="BatchNorm in the project's kernel, fused with the population it feeds (opt-in: rounding "
                        "differs from torch's BatchNorm; metrics.json records it)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="spiking-attn", description="Spiking neuromorphic attention: train, inspect, and run the demo.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"spiking-attn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train_options(sub.add_parser("train", help="train a spiking classifier or its dense twin"))
    _add_train_options(sub.add_parser("demo", help="the whole pipeline on the embedded digits data"), demo=True)
    _add_deploy_options(sub.add_parser("deploy", help="run a trained spiking model on Lava's CPU simulation of Loihi"))
    _add_energy_options(sub.add_parser("energy", help="estimate the energy of a trained model beside its dense twin"))
    _add_convert_options(sub.add_parser("convert", help="convert a trained dense twin into a spiking model"))
    p = sub.add_parser("generate", help="decode a string with a trained encoder-decoder (mechanism seq2seq)")
    p.add_argument("--checkpoint", required=True, help="a seq2seq model's checkpoint (DIR/checkpoint.pt)")
    p.add_argument("--input", required=True, help='the source symbols, separated by spaces, e.g. "3 1 4 1 5"')
    _add_export_options(sub.add_parser("export", help="write a trained spiking model in an exchange format (NIR)"))
    return parser


def _add_export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a spiking model's checkpoint (DIR/checkpoint.pt)")
    p.add_argument("--format", choices=("nir",), required=True, help="exchange format: nir")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.nir")
    p.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    p.add_argument("--samples", type=int, default=8,
                   help="test samples the written graph is checked on against the torch model (default 8)")
    p.add_argument("--dt", type=float, default=1e-4, help="Euler step the time constants are written for (default 1e-4)")
    p.add_argument("--fold-thresholds", action="store_true",
                   help="write threshold 1 with each neuron's inputs scaled (for readers with one threshold per layer)")


def cmd_export(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} is not a file")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is a folder; give a file name such as model.nir")
    if os.path.exists(args.out) and not args.overwrite:
        raise UsageError(f"--out {args.out!r} exists; pass --overwrite to replace it")
    from .interop.nir import export_checkpoint

    r = export_checkpoint(args.checkpoint, args.out, samples=args.samples, dt=args.dt,
                          fold_thresholds=args.fold_thresholds)
    print(f"NIR graph: {r['nodes']} nodes ({r['neuron_nodes']} neuron populations), {r['edges']} edges, "
          f"{r['bytes']} bytes; imported back, {r['samples']} test samples of {r['task']}: spike agreement "
          f"{r['spike_agreement']:.4f}, prediction agreement {r.get('prediction_agreement', float('nan')):.4f}")
    print(f"outputs: {r['out']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} is not a file")
    from .mechanisms.seq2seq import generate_text

    print(generate_text(args.checkpoint, args.input))
    return 0


def _add_energy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a spiking or dense model's checkpoint (DIR/checkpoint.pt)")
    p.add_argument("--twin", help="the trained other twin's checkpoint (default: built from --checkpoint's config)")
    p.add_argument("--energy-model", default="45nm",
                   help="45nm (default), 45nm-fp16, 45nm-int8, 45nm-memory, loihi, or a JSON/TOML file")
    p.add_argument("--samples", type=int, default=360, help="test samples to measure on (default 360)")
    p.add_argument("--timesteps", "-T", type=int,
                   help="run the spiking model for this many steps instead of its saved T (converted models)")
    p.add_argument("--out", required=True, help="output folder (energy.json and energy_breakdown.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an estimate already in the output folder")


def _add_convert_options(p: argparse.ArgumentParser) -> None:
    from .converters import METHODS

    p.add_argument("--checkpoint", required=True, help="a dense twin's checkpoint (DIR/checkpoint.pt)")
    p.add_argument("--method", choices=METHODS, default="rate",
                   help="rate (binary, calibrated thresholds; default), qcfs (binary, near-lossless at low T; "
                        "fine-tunes a ReLU twin first) or td (exact time differences, not binary)")
    p.add_argument("--timesteps", "-T", default="4,8,16,32,64", help="comma-separated T to evaluate (default 4,8,16,32,64)")
    p.add_argument("--calibration", type=int, default=512, help="training samples to calibrate on (default 512)")
    p.add_argument("--calibration-mode", choices=("percentile", "max"), default="percentile",
                   help="rate: an activation's scale is its 99.9th percentile (default) or its maximum")
    p.add_argument("--percentile", type=float, default=99.9, help="rate: the percentile (default 99.9)")
    p.add_argument("--qcfs-levels", type=int, default=4, help="qcfs fine-tuning: levels L (default 4)")
    p.add_argument("--finetune-epochs", type=int, help="qcfs fine-tuning epochs (default: the task's)")
    p.add_argument("--out", required=True, help="output folder (checkpoint.pt, conversion.json, accuracy_vs_T.png)")
    p.add_argument("--overwrite", action="store_true", help="replace a conversion already in the output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _add_deploy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a spiking model's checkpoint (DIR/checkpoint.pt)")
    p.add_argument("--precision", choices=("float", "fixed"), default="float",
                   help="Lava's floating-point models, or Loihi's fixed point (default float)")
    p.add_argument("--samples", type=int, default=8, help="test samples to run through Lava (default 8)")
    p.add_argument("--weight-bits", type=int, choices=(8, 16), default=16,
                   help="fixed point: one 8-bit synapse group per connection, or two (16, default)")
    p.add_argument("--profile", default="loihi2", help="core profile: loihi2 (default), loihi1, or a JSON file")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the Lava run may take (default 900)")
    p.add_argument("--timesteps", "-T", type=int,
                   help="run the model for this many steps instead of its saved T (converted models)")
    p.add_argument("--out", required=True, help="output folder (deploy.json and figures)")
    p.add_argument("--overwrite", action="store_true", help="replace a deployment already in the output folder")


def _config_overrides(args: argparse.Namespace) -> dict:
    keys = ("engine", "encoder", "surrogate", "dim", "depth", "heads", "learn_threshold", "learn_bias",
            "learn_decay", "per_channel", "dense_attention", "dense_act", "qcfs_levels")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _regularizers(pairs) -> Optional[dict]:
    """``--reg NAME=WEIGHT`` options as a dict (None if none were given)."""
    if pairs is None:
        return None
    weights = {}
    for pair in pairs:
        name, sep, weight = pair.partition("=")
        if not sep:
            raise UsageError(f"--reg takes NAME=WEIGHT, got {pair!r}")
        try:
            weights[name] = float(weight)
        except ValueError:
            raise UsageError(f"--reg {name}: the weight must be a number, got {weight!r}") from None
    return weights


def cmd_train(args: argparse.Namespace) -> int:
    from .mechanisms import MECHANISMS
    from .training import train

    if args.list_mechanisms:
        width = max(map(len, MECHANISMS.names()))
        for name, spec in MECHANISMS.items():
            print(f"{name:{width}s}  {spec.summary}")
        return 0
    if args.out is None and args.resume is None:
        raise UsageError("train needs --out DIR (or --resume DIR)")
    metrics = train(task=args.task, model=args.model, timesteps=args.timesteps, epochs=args.epochs, seed=args.seed,
                    out=args.out, resume=args.resume, attention=args.attention, mechanism=args.mechanism,
                    batch_size=args.batch_size, lr=args.lr, augment=args.augment, use_cue=args.use_cue,
                    regularizers=_regularizers(args.reg), target_rate=args.target_rate,
                    stop_after=args.stop_after, nproc=args.nproc, sparse_products=args.sparse_products,
                    fused_batchnorm=args.fused_batchnorm,
                    overwrite=args.overwrite, progress=not args.no_progress, **_config_overrides(args))
    from .distributed import Team

    if Team.current().leader:  # under torchrun, only rank 0 prints
        _print_summary(metrics)
    return 0


def _print_summary(metrics: dict) -> None:
    done = "" if metrics["completed"] else f" (stopped after epoch {metrics['epochs_done']}; resume to finish)"
    steps = f" at T={metrics['timesteps']}" if metrics["model"] == "spiking" else ""
    mechanism = "" if metrics.get("mechanism", "none") == "none" else f" + {metrics['mechanism']}"
    print(f"{metrics['model']} {metrics['attention']}{mechanism} on {metrics['task']}: "
          f"test accuracy {metrics['test_accuracy']:.4f}{steps}{done}")
    if metrics["firing_rates"]:
        print("firing rates (spikes per neuron per step):")
        for name, rate in metrics["firing_rates"].items():
            print(f"  {name:32s} {rate:.4f}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .errors import DistributedError
    from .launch import launched_world
    from .training import train

    size = launched_world()
    if size > 1:  # its steps after training would run in every process
        raise DistributedError(f"demo runs on one process, but WORLD_SIZE is {size} (set by a launcher such as "
                               "torchrun, or by the cluster); unset it, or use spiking-attn train on several processes")
    metrics = train(task="digits", model="spiking", timesteps=args.timesteps, epochs=args.epochs, seed=args.seed,
                    out=args.out, attention=args.attention, overwrite=args.overwrite, progress=not args.no_progress,
                    **_config_overrides(args))
    _print_summary(metrics)
    print(f"outputs: {args.out}/ (checkpoint.pt, metrics.json, training.png, spikes_attention.png)")
    print("estimating the energy (45 nm) on the test set, beside the dense twin's operation counts...", flush=True)
    _run_energy(os.path.join(args.out, "checkpoint.pt"), None, "45nm", 360, os.path.join(args.out, "energy"),
                args.overwrite, brief=True)
    epochs = DEMO_DENSE_EPOCHS if args.epochs is None else min(args.epochs, DEMO_DENSE_EPOCHS)
    print(f"training the conversion-friendly dense twin (SDSA, QCFS with {DEMO_QCFS_LEVELS} levels, "
          f"{epochs} epochs) and converting it to spikes (qcfs)...", flush=True)
    dense_dir = os.path.join(args.out, "dense_qcfs")
    train(task="digits", model="dense", epochs=epochs, seed=args.seed, out=dense_dir,
          overwrite=args.overwrite, progress=not args.no_progress, figures=False, dense_attention="sdsa",
          dense_act="qcfs", qcfs_levels=DEMO_QCFS_LEVELS)
    _run_convert(os.path.join(dense_dir, "checkpoint.pt"), "qcfs", list(DEMO_CONVERT_TIMESTEPS), 512,
                 os.path.join(args.out, "converted"), args.overwrite, progress=not args.no_progress)
    if metrics["attention"] != "sdsa":
        print("deploy step skipped: SSA's product does not map to Lava (the demo deploys SDSA models)")
        return 0
    deploy_dir = os.path.join(args.out, "deploy")
    print(f"deploying {DEMO_DEPLOY_SAMPLES} test samples to Lava (Loihi fixed point, CPU simulation)...", flush=True)
    _run_deploy(os.path.join(args.out, "checkpoint.pt"), "fixed", DEMO_DEPLOY_SAMPLES, "loihi2", 900.0,
                deploy_dir, args.overwrite)
    return 0


DEMO_DEPLOY_SAMPLES = 4
DEMO_DENSE_EPOCHS, DEMO_QCFS_LEVELS, DEMO_CONVERT_TIMESTEPS = 20, 4, (2, 4, 8, 16)
DEPLOY_FILES = ("deploy.json", "deploy_raster.png", "deploy_cores.png")
ENERGY_FILES = ("energy.json", "energy_breakdown.png")


def cmd_energy(args: argparse.Namespace) -> int:
    from .errors import check_int

    check_int(args.samples, "--samples", low=1, high=1000000)
    for flag, path in (("--checkpoint", args.checkpoint), ("--twin", args.twin)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path!r} is not a file")
    _run_energy(args.checkpoint, args.twin, args.energy_model, args.samples, args.out, args.overwrite,
                timesteps=args.timesteps)
    return 0


def _run_energy(checkpoint: str, twin: Optional[str], energy_model: str, samples: int, out: str,
                overwrite: bool, brief: bool = False, timesteps: Optional[int] = None) -> None:
    from .hardware.energy import energy_checkpoint, format_table, load_energy_model
    from .outputs import RunFolder

    model = load_energy_model(energy_model)  # an unknown or malformed model fails before the folder is touched
    with RunFolder(out, overwrite=overwrite, markers=("energy.json",), files=ENERGY_FILES,
                   keep_if="energy.json") as folder:
        report = energy_checkpoint(checkpoint, energy_model=model, samples=samples, twin_path=twin, out=folder,
                                   timesteps=timesteps)
    table = format_table(report).splitlines()
    print("\n".join([*table[:2], *table[-3:]] if brief else table))  # brief: the header, totals and summary
    print(f"outputs: {out}/ ({', '.join(ENERGY_FILES)})")


def cmd_deploy(args: argparse.Namespace) -> int:
    from .errors import check_int

    check_int(args.samples, "--samples", low=1, high=100000)
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} is not a file")
    _run_deploy(args.checkpoint, args.precision, args.samples, args.profile, args.timeout, args.out, args.overwrite,
                args.weight_bits, timesteps=args.timesteps)
    return 0


def _run_deploy(checkpoint: str, precision: str, samples: int, profile: str, timeout: float, out: str,
                overwrite: bool, weight_bits: int = 16, timesteps: Optional[int] = None) -> None:
    from .hardware.lava import deploy_checkpoint
    from .outputs import RunFolder

    with RunFolder(out, overwrite=overwrite, markers=("deploy.json",), files=DEPLOY_FILES,
                   keep_if="deploy.json") as folder:
        report = deploy_checkpoint(checkpoint, precision=precision, samples=samples, profile=profile,
                                   timeout=timeout, out=folder, weight_bits=weight_bits, timesteps=timesteps)
    print(f"Lava {report['precision']} on {report['samples']} samples: spike agreement "
          f"{report['spike_agreement']:.4f} (against the {report['reference']}), prediction agreement "
          f"{report['prediction_agreement']:.4f} (against the float torch model)")
    if report["lava_accuracy"] is not None:
        print(f"accuracy on these samples: Lava {report['lava_accuracy']:.4f}, torch {report['torch_accuracy']:.4f}")
    print(f"{report['cores']} cores ({report['profile']}), {report['inter_core_spikes']} spikes between cores; "
          f"Lava {report['steps_per_second']:.1f} steps/s; the emulator ran {report['emulator_speedup']:.0f}x faster "
          f"on these samples (it gains most on many: benchmarks/bench_lava.py)")
    print(f"outputs: {out}/ ({', '.join(DEPLOY_FILES)})")


def _timesteps_list(text: str) -> list:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--timesteps must be comma-separated integers such as 4,8,16, got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"--timesteps must be positive, got {text!r}")
    return values


def cmd_convert(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} is not a file")
    if args.calibration < 1:
        raise UsageError(f"--calibration must be at least 1 (the calibration set cannot be empty), got {args.calibration}")
    if args.finetune_epochs is not None and args.finetune_epochs < 1:
        raise UsageError(f"--finetune-epochs must be at least 1, got {args.finetune_epochs}")
    _run_convert(args.checkpoint, args.method, _timesteps_list(args.timesteps), args.calibration, args.out,
                 args.overwrite, mode=args.calibration_mode, percentile=args.percentile, levels=args.qcfs_levels,
                 finetune_epochs=args.finetune_epochs, progress=not args.no_progress)
    return 0


def _run_convert(checkpoint: str, method: str, timesteps: list, calibration: int, out: str, overwrite: bool, *,
                 mode: str = "percentile", percentile: float = 99.9, levels: int = 4,
                 finetune_epochs: Optional[int] = None, progress: bool = True) -> dict:
    from .converters.conversion import CONVERSION_FILES, CONVERSION_OUTPUTS, convert_checkpoint
    from .outputs import RunFolder

    with RunFolder(out, overwrite=overwrite, markers=("conversion.json",), files=CONVERSION_OUTPUTS,
                   keep_if="conversion.json") as folder:
        info = convert_checkpoint(checkpoint, method=method, timesteps=timesteps, calibration=calibration, out=folder,
                                  mode=mode, percentile=percentile, finetune_epochs=finetune_epochs,
                                  qcfs_levels=levels, progress=progress)
    print(format_conversion(info))
    print(f"outputs: {out}/ ({', '.join(CONVERSION_FILES)}{', dense_qcfs.pt' if info.get('finetuned') else ''}); "
          f"checkpoint.pt runs T={info['saved_timesteps']}")
    return info


def format_conversion(info: dict) -> str:
    """The accuracy-vs-T table of a conversion, as text."""
    def pct(v):
        return "   -  " if v is None else f"{v:.4f}"

    lines = []
    if info.get("finetuned"):
        f = info["finetuned"]
        lines.append(f"QCFS fine-tuning (L={f['levels']}, {f['epochs']} epochs): dense accuracy {pct(f['source_accuracy'])}"
                     f" -> {pct(f['accuracy'])}")
    lines.append(f"{info['method']} conversion on {info['task']}: dense twin accuracy {pct(info['dense_accuracy'])}")
    lines.append(f"{'T':>5}  {'accuracy':>8}  {'mean |out err|':>14}  {'firing rate':>11}")
    for r in info["results"]:
        rate = "-" if r["firing_rate"] is None else f"{r['firing_rate']:.4f}"
        lines.append(f"{r['timesteps']:>5}  {pct(r['accuracy']):>8}  {r['mean_abs_output_error']:>14.3g}  {rate:>11}")
    return "\n".join(lines)


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "deploy": cmd_deploy, "energy": cmd_energy, "convert": cmd_convert,
            "generate": cmd_generate, "export": cmd_export}


def _interrupted_message(args: Optional[argparse.Namespace]) -> str:
    folder = getattr(args, "out", None) or getattr(args, "resume", None)
    if folder and os.path.isfile(os.path.join(folder, "checkpoint.pt")):
        return (f"spiking-attn: interrupted; the last finished epoch is saved in {folder} "
                f"(continue with --resume {folder})")
    return "spiking-attn: interrupted"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import USER_ERRORS, one_line  # no torch: an interrupt while torch loads is still handled

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = None
    try:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"spiking-attn: usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this into a traceback
        print(_interrupted_message(args), file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:  # ValueError, OSError (a multi-process run sorts its processes' failures alike)
        if debug:
            raise
        print(f"spiking-attn: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        if debug:
            raise
        print("spiking-attn: error: out of memory; lower --timesteps, --dim, --depth or --batch-size", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # an unexpected failure still ends with one line
        if debug:
            raise
        print(f"spiking-attn: internal error: {one_line(exc, kind=True)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
