"""The allocator setting (`dgm.memory.tune_allocator`) on the element-wise work of a training step, in fresh processes.

Times a bf16 softmax and a bf16 add over one attention chunk (27 x 196 x 196 elements, what `dgm.nn.unet.attention`
computes at a time) and over a 32x larger tensor, with DGM_MALLOC_TUNE=0 and =1, interleaved rounds; prints
nanoseconds per element (medians). One thread:

    OMP_NUM_THREADS=1 python benchmarks/allocator.py --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORKER = r"""
import time, torch
from dgm.memory import tune_allocator
tuned = tune_allocator()
torch.manual_seed(0)
def ns(f, x, n):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2] * 1e9 / x.numel()
small, large = torch.randn(27, 196, 196).bfloat16(), torch.randn(27 * 32, 196, 196).bfloat16()
print(tuned, ns(lambda: torch.softmax(small, -1), small, 200), ns(lambda: small + 1, small, 200),
      ns(lambda: torch.softmax(large, -1), large, 20), ns(lambda: large + 1, large, 20))
"""
NAMES = ["softmax, 1 chunk", "add, 1 chunk", "softmax, 32 chunks", "add, 32 chunks"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    res = {"0": [], "1": []}
    for _ in range(a.rounds):
        for tune in res:
            out = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, check=True,
                                 env={**os.environ, "DGM_MALLOC_TUNE": tune}).stdout.split()
            res[tune].append([float(v) for v in out[1:]])
    print("| ns per element (bf16) | glibc default | tuned | speed-up |\n|---|---:|---:|---:|")
    for i, name in enumerate(NAMES):
        off, on = (statistics.median(r[i] for r in res[t]) for t in ("0", "1"))
        print(f"| {name} | {off:.2f} | {on:.2f} | {off / on:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
