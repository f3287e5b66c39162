"""The memory estimate that guards training runs, next to the memory training really takes.

For each configuration, a fresh process trains three batches and reports its peak resident memory
above the resident size before the model was built; this script prints that beside
``resources.training_bytes`` and the ratio. The estimate is meant to stay above the measurement
(ratio > 1) and within about 3x of it.

    .venv/bin/python benchmarks/bench_memory_estimate.py
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys

CASES = [  # (ModelConfig fields, batch size)
    ({"in_features": 8, "num_tokens": 8, "num_classes": 10}, 64),
    ({"in_features": 8, "num_tokens": 8, "num_classes": 10, "timesteps": 16, "dim": 128}, 64),
    ({"in_features": 8, "num_tokens": 64, "num_classes": 10, "dim": 128, "attention": "ssa"}, 64),
    ({"in_features": 8, "num_tokens": 64, "num_classes": 10, "dim": 256, "depth": 4}, 32),
    ({"in_features": 8, "num_tokens": 64, "num_classes": 10, "model": "dense", "dim": 256, "depth": 4}, 256),
    ({"in_features": 8, "num_tokens": 128, "num_classes": 10, "attention": "ssa", "causal": True}, 32),
    ({"in_features": 8, "num_tokens": 16, "num_classes": 10, "timesteps": 64}, 64),
    ({"in_features": 8, "num_tokens": 8, "num_classes": 10, "num_cues": 4, "per_channel": True}, 64),
]


def child(fields: dict, batch: int) -> None:
    import torch

    from spiking_attn import resources
    from spiking_attn.models import ModelConfig, build_model

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    config = ModelConfig(**fields)
    torch.manual_seed(0)
    base = rss()
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.rand(batch, config.num_tokens, config.in_features)
    cue = torch.randint(config.num_cues, (batch,)) if config.num_cues else None
    for _ in range(3):
        loss = model(x, cue=cue).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured": peak - base, "estimate": resources.training_bytes(config, batch)}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]), int(sys.argv[3]))
        return
    print(f"{'configuration':70s} {'batch':>5s} {'measured MiB':>13s} {'estimate MiB':>13s} {'ratio':>6s}")
    for fields, batch in CASES:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(fields), str(batch)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        label = ", ".join(f"{k}={v}" for k, v in fields.items() if k not in ("in_features", "num_classes"))
        print(f"{label:70s} {batch:5d} {r['measured'] / 2**20:13.0f} {r['estimate'] / 2**20:13.0f} "
              f"{r['estimate'] / r['measured']:6.2f}")


if __name__ == "__main__":
    main()
