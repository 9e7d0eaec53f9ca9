"""Why a long capacity beta-VAE run diverged (issue 20, item 2): a stress test at a 3x higher learning rate.

The 200k-step capacity run (C = 25, gamma = 1000, Adam 1e-3 constant) diverged after 140k steps; the 150k-step run
whose lr decayed over its last third did not. To see the failure in minutes instead of hours, these runs use lr 3e-3
(the MLP of benchmarks/disentanglement.py, dSprites, batch 64, seed 0, fp32, one thread), C reached at step 2,000 and
then held, 12,000 steps:

    for run in "--models beta-vae-c --capacity-steps 2000" "--models beta-vae-c-g100 --capacity-steps 2000" \\
               "--models vae"; do
        OMP_NUM_THREADS=1 python benchmarks/disentanglement.py --stage train --steps 12000 --lr 3e-3 \\
            --tag _div3e-3 $run
    done
    OMP_NUM_THREADS=1 python benchmarks/disentanglement.py --stage train --steps 12000 --lr 3e-3 \\
        --models beta-vae-c --capacity-steps 2000 --lr-decay-start 0.667 --tag _div3e-3decay
    python benchmarks/capacity_divergence.py      # -> benchmarks/results/capacity_divergence.{json,png}
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"capacity, gamma 1000, constant lr": "runs/bench_dis_div3e-3_beta-vae-c",
        "capacity, gamma 100, constant lr": "runs/bench_dis_div3e-3_beta-vae-c-g100",
        "plain VAE, constant lr": "runs/bench_dis_div3e-3_vae",
        "capacity, gamma 1000, lr decayed over the last third": "runs/bench_dis_div3e-3decay_beta-vae-c"}


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (name, run) in enumerate(RUNS.items()):
        f = ROOT / run / "metrics.jsonl"
        if not f.is_file():
            continue
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        top = max(rows, key=lambda r: r["kl"])
        out[name] = {"run": run, "steps": rows[-1]["step"], "final_recon": round(rows[-1]["recon"], 1),
                     "best_recon": round(min(r["recon"] for r in rows), 1), "final_kl": round(rows[-1]["kl"], 2),
                     "largest_kl": round(top["kl"], 1), "largest_kl_step": top["step"],
                     "curve": [[r["step"], round(r["recon"], 2), round(r["kl"], 3)] for r in rows]}
        s = [r["step"] for r in rows]
        a1.plot(s, [r["recon"] for r in rows], lw=0.9, color=f"C{i}", label=name)
        a2.plot(s, [r["kl"] for r in rows], lw=0.9, color=f"C{i}", label=name)
    for a, what in ((a1, "reconstruction (nats, mean over 50 steps)"), (a2, "KL (nats, mean over 50 steps)")):
        a.set_yscale("log")
        a.set_xlabel("step")
        a.set_ylabel(what)
        a.grid(True, alpha=0.3)
    a2.axhline(25, color="gray", ls="--", lw=0.8)
    a1.legend(fontsize=7)
    fig.suptitle("dSprites, MLP VAE, Adam lr 3e-3 (3x the usual): KL explosions, and the decayed lr that avoids them "
                 "(C = 25 from step 2,000)", fontsize=10)
    fig.tight_layout()
    res = ROOT / "benchmarks" / "results"
    fig.savefig(res / "capacity_divergence.png", dpi=100)
    (res / "capacity_divergence.json").write_text(json.dumps(out, indent=1))
    for name, r in out.items():
        print(name, {k: v for k, v in r.items() if k != "curve"})


if __name__ == "__main__":
    main()
