"""Threads on a busy machine (issue 22): wall time of 60 training steps of the default VAE (mnist-mini, batch 128)
for 1 thread and all cores, with OpenMP's default (spinning) wait policy and with OMP_WAIT_POLICY=PASSIVE, on an idle
machine and beside N busy processes (one-thread matrix products, like a training next door).

    python benchmarks/threads.py --busy 0 --out benchmarks/results/threads_idle.json
    python benchmarks/threads.py --busy 2 --out benchmarks/results/threads_busy.json

Each condition runs in a fresh process (the wait policy is read when OpenMP starts), `--repeats` times; the table
reports the median wall seconds of the 60 steps (data loading and model building excluded) and the process CPU
seconds they used.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
threads = int(sys.argv[1])
torch.set_num_threads(threads)
from dgm.data import load_dataset
from dgm.models.vae import VAE
from dgm.train import TrainConfig, Trainer
import tempfile
data = load_dataset("mnist-mini", "train")
torch.manual_seed(0)
model = VAE.for_data(data, {})
cfg = TrainConfig(steps=60, batch_size=128, log_every=1000, ckpt_every=10**6, sample_every=0, seed=0)
with tempfile.TemporaryDirectory() as out:
    t = Trainer(model, data, cfg, out, progress=False)
    w, c = time.perf_counter(), time.process_time()
    t.fit()
    print(json.dumps({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}))
"""

BURNER = r"""
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a.T / 512)
"""


def run_condition(threads: int, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=0, help="busy one-thread processes beside the runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cores = os.cpu_count() or 1
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(a.busy)]
    rows = []
    try:
        time.sleep(2 if burners else 0)
        for threads in sorted({1, cores}):
            for policy in (None, "PASSIVE"):
                got = [run_condition(threads, policy) for _ in range(a.repeats)]
                row = {"threads": threads, "omp_wait_policy": policy or "default", "busy": a.busy,
                       "wall_s": round(statistics.median(g["wall_s"] for g in got), 2),
                       "cpu_s": round(statistics.median(g["cpu_s"] for g in got), 2),
                       "wall_all": [round(g["wall_s"], 2) for g in got]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for b in burners:
            b.kill()
    with open(a.out, "w") as f:
        json.dump({"cores": cores, "busy": a.busy, "steps": 60, "model": "vae defaults, mnist-mini, batch 128",
                   "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
