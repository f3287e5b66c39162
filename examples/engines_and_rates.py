"""Train a small spiking classifier on the synthetic cue task (the cue reaches the model through its cue
path, ``model(x, cue=...)``), check that both LIF engines give the same spikes, and plot the firing rate of
every population next to the spike raster of the first attention.

    .venv/bin/python examples/engines_and_rates.py [--out runs/example]

Writes OUT/firing_rates.png and prints the test accuracy and the engine agreement.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from spiking_attn import SpikeRecorder, load_model, train  # noqa: E402
from spiking_attn.data import load_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/example")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    out = Path(args.out)

    metrics = train(task="cue", model="spiking", attention="ssa", epochs=args.epochs, out=out, overwrite=True,
                    progress=False)
    print(f"cue task, spiking SSA, T={metrics['timesteps']}: test accuracy {metrics['test_accuracy']:.3f}")

    data = load_task("cue")
    x, cue = data.x_test[:64], data.cue_test[:64]
    native = load_model(out / "checkpoint.pt")
    sj = load_model(out / "checkpoint.pt", engine="spikingjelly")
    with SpikeRecorder(native) as rec_native, torch.no_grad():
        native(x, cue=cue)
    with SpikeRecorder(sj) as rec_sj, torch.no_grad():
        sj(x, cue=cue)
    same = all(torch.equal(rec_native.spikes[n], rec_sj.spikes[n]) for n in rec_native.spikes)
    total = sum(int(s.sum()) for s in rec_native.spikes.values())
    print(f"native vs spikingjelly engine: identical spikes in every population: {same} ({total} spikes)")

    rates = rec_native.firing_rates()
    q = rec_native.spikes["blocks.0.attn.q_lif"][:, 0]  # [T, N, D] of the first test sequence
    fig, (ax_rates, ax_raster) = plt.subplots(1, 2, figsize=(11, 4))
    ax_rates.barh(list(rates), list(rates.values()))
    ax_rates.invert_yaxis()
    ax_rates.set(xlabel="spikes per neuron per step", title="firing rate per population (64 test sequences)")
    t_idx, n_idx, d_idx = torch.nonzero(q, as_tuple=True)
    ax_raster.scatter((t_idx * q.shape[1] + n_idx).numpy(), d_idx.numpy(), s=3, marker="|", c="k")
    ax_raster.set(xlabel="time step x token", ylabel="channel", title="blocks.0.attn.q_lif spikes, sequence 0")
    fig.tight_layout()
    fig.savefig(out / "firing_rates.png", dpi=110)
    print(f"wrote {out / 'firing_rates.png'}")


if __name__ == "__main__":
    main()
