"""The studio's leaderboard: the runs' eval.json numbers grouped by dataset, with `dgm leaderboard`'s column order,
directions and units (dgm.metrics.leaderboard, read from what each metric declared in dgm.metrics.registry) and its
protocol fields (PROTOCOL_KEYS), so a column says whether its numbers were measured the same way (comparable)."""
from __future__ import annotations

import json
from typing import Any, Iterable

from dgm.serve.runs import Run


def protocol_of(entry: dict[str, Any]) -> str:
    """A metric's protocol (N, reference, extractor, ...) as `dgm leaderboard` compares it."""
    from dgm.metrics.leaderboard import PROTOCOL_KEYS
    return json.dumps({p: entry.get(p) for p in PROTOCOL_KEYS if p in entry}, sort_keys=True, default=str)


def _add_run(g: dict[str, Any], protos: dict[str, set[str]], r: Run, ev: dict[str, Any]) -> None:
    from dgm.metrics.leaderboard import better, unit
    for k, v in ev.items():
        g["columns"].setdefault(k, {"unit": unit(k) or v.get("unit"), "protocol": v.get("protocol"),
                                    "better": better(k)})
        protos.setdefault(k, set()).add(protocol_of(v))
    g["rows"].append({"id": r.id, "name": r.name, "family": r.family, "step": r.step,
                      "values": {k: v["value"] for k, v in ev.items()}})


def board(runs: Iterable[Run]) -> dict[str, Any]:
    """{dataset: {"columns": {metric: {unit, protocol, better, comparable}}, "rows": [...]}} for runs with numbers."""
    groups: dict[str, dict[str, Any]] = {}
    protocols: dict[str, dict[str, set[str]]] = {}
    for r in runs:
        ev = r.eval_results()
        if ev:
            g = groups.setdefault(r.dataset, {"columns": {}, "rows": []})
            _add_run(g, protocols.setdefault(r.dataset, {}), r, ev)
    from dgm.metrics.leaderboard import column_order
    for ds, g in groups.items():
        g["columns"] = {k: {**g["columns"][k], "comparable": len(protocols[ds][k]) == 1}
                        for k in column_order(g["columns"])}
    return groups
