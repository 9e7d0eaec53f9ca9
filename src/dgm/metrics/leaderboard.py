"""`dgm leaderboard RUN...`: one markdown table comparing runs of any families on the same dataset.

    from dgm.metrics.leaderboard import leaderboard
    print(leaderboard(["runs/vae_mnist", "runs/gan_mnist"]))

Reads each run's config.json and eval.json (written by `dgm evaluate`); a metric a run lacks shows as "-". Below the
table, each metric's protocol (N, reference, extractor) is listed, and flagged where the runs' protocols differ, since
such numbers are not comparable. Column order, directions (↓ lower is better, ↑ higher) and units come from the
metric registry (dgm.metrics.registry), where each metric declares them.
"""
from __future__ import annotations

import json
from pathlib import Path

from dgm.metrics import registry

# Protocol fields that must agree for a column's numbers to be comparable.
PROTOCOL_KEYS = ("n", "k", "reference", "split", "extractor", "image_size", "precision", "data")
_ARROW = {registry.LOWER: "down", registry.HIGHER: "up"}


def better(key: str) -> str | None:
    """"down" (lower is better), "up" or None for a result key, as its metric declared at registration."""
    c = registry.column(key)
    return _ARROW.get(c.better) if c is not None else None


def unit(key: str) -> str:
    c = registry.column(key)
    return c.unit if c is not None else ""


def column_order(keys) -> list[str]:
    """Result keys in the leaderboard's order: declared ranks first, then the others by name."""
    return registry.column_order(keys)


def __getattr__(name: str):
    """ORDER (ranked keys, in order) and BETTER ({key: "down" | "up"} for every declared exact key), computed from the
    registry on first use; new code calls column_order / better, which also cover pattern keys (e.g. mig_factor0)."""
    if name == "ORDER":
        return [c.key for c in sorted((c for c in registry.columns() if not c.pattern and c.rank != float("inf")),
                                      key=lambda c: (c.rank, c.key))]
    if name == "BETTER":
        return {c.key: _ARROW[c.better] for c in registry.columns() if not c.pattern and c.better}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        cols = column_order(present)
    arrow = {"down": "↓", "up": "↑", None: ""}
    head = ["run", "family", "data"] + [f"{c} {arrow[better(c)]}".strip() for c in cols]
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
        u = f" ({unit(c)})" if unit(c) else ""
        notes.append(f"- {c}{u}: {desc}; " + " / ".join(sorted(protos)) + flag)
    return "\n".join(lines) + "\n\n" + "\n".join(notes)
