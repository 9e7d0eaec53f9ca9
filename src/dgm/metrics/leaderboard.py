"""`dgm leaderboard RUN...`: one markdown table comparing runs of any families on the same dataset.

    from dgm.metrics.leaderboard import leaderboard
    print(leaderboard(["runs/vae_mnist", "runs/gan_mnist"]))

Reads each run's config.json and eval.json (written by `dgm evaluate`); a metric a run lacks shows as "-". Below the
table, each metric's protocol (N, reference, extractor) is listed, and flagged where the runs' protocols differ, since
such numbers are not comparable.
"""
from __future__ import annotations

import json
from pathlib import Path

# Columns first in this order when present (lower is better unless marked "up").
ORDER = ["fid", "domain_fid", "kid_inception", "kid_domain", "precision_inception", "recall_inception",
         "precision_domain", "recall_domain", "inception_score_domain", "mode_coverage", "mode_kl_uniform",
         "test_nll", "test_elbo", "recon_mse", "kmeans_acc", "linear_probe_acc"]
BETTER = {"fid": "down", "domain_fid": "down", "kid_inception": "down", "kid_domain": "down",
          "precision_inception": "up", "recall_inception": "up", "precision_domain": "up", "recall_domain": "up",
          "inception_score_domain": "up", "mode_coverage": "up", "mode_kl_uniform": "down", "test_nll": "down",
          "test_elbo": "up", "recon_mse": "down", "kmeans_acc": "up", "linear_probe_acc": "up", "test_accuracy": "up"}
PROTOCOL_KEYS = ("n", "k", "reference", "split", "extractor", "image_size", "precision", "data")


def _read(run: Path) -> tuple[dict, dict]:
    from dgm.io import read_config
    cfg = read_config(run)
    ev = run / "eval.json"
    if not ev.is_file():
        raise FileNotFoundError(f"{ev} is missing: run `dgm evaluate {run}` first")
    try:
        return cfg, json.loads(ev.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{ev} is not valid JSON ({e})") from None


def leaderboard(runs: list, metrics: list[str] | None = None, allow_mixed: bool = False) -> str:
    """Markdown table: one row per run (family, dataset, parameters), one column per metric."""
    if not runs:
        raise ValueError("leaderboard needs at least one run folder")
    rows = []
    for r in runs:
        cfg, ev = _read(Path(r))
        rows.append((Path(r), cfg, ev))
    datasets = {(c.get("data") or {}).get("name") for _, c, _ in rows}
    if len(datasets) > 1 and not allow_mixed:
        raise ValueError(f"runs are on different datasets ({', '.join(sorted(map(str, datasets)))}); their numbers "
                         "are not comparable (use --allow-mixed to print them anyway)")
    present = {k for _, _, ev in rows for k in ev}
    if metrics:
        unknown = [m for m in metrics if m not in present]
        if unknown:
            raise ValueError(f"no run has metric(s) {', '.join(unknown)}; present: {', '.join(sorted(present))}")
        cols = metrics
    else:
        cols = [k for k in ORDER if k in present] + sorted(present - set(ORDER))
    head = ["run", "family", "data"] + [f"{c} {'↓' if BETTER.get(c) == 'down' else '↑' if BETTER.get(c) == 'up' else ''}"
                                        .strip() for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, cfg, ev in rows:
        d = cfg.get("data") or {}
        data = f"{d.get('name', '?')}" + (f" {d['image_size']}px" if d.get("image_size") else "")
        cells = [run.name, cfg["family"], data]
        for c in cols:
            v = ev.get(c, {}).get("value") if isinstance(ev.get(c), dict) else None
            cells.append("-" if v is None else f"{v:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for c in cols:
        protos = {json.dumps({k: ev[c].get(k) for k in PROTOCOL_KEYS if k in ev[c]}, sort_keys=True)
                  for _, _, ev in rows if isinstance(ev.get(c), dict)}
        flag = "  **protocols differ: not comparable**" if len(protos) > 1 else ""
        desc = next(ev[c].get("protocol", "") for _, _, ev in rows if isinstance(ev.get(c), dict))
        notes.append(f"- {c}: {desc}; " + " / ".join(sorted(protos)) + flag)
    return "\n".join(lines) + "\n\n" + "\n".join(notes)
