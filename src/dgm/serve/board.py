"""The studio's leaderboard: the runs' eval.json numbers grouped by dataset, in `dgm leaderboard`'s column order and
with its metric directions (dgm.metrics.leaderboard: ORDER, BETTER, PROTOCOL_KEYS), and whether a column's protocols
agree (numbers measured differently are not comparable)."""
from __future__ import annotations

import json
from typing import Any, Iterable

from dgm.serve.runs import Run


def protocol_of(entry: dict[str, Any]) -> str:
    """A metric's protocol (N, reference, extractor, ...) as `dgm leaderboard` compares it."""
    from dgm.metrics.leaderboard import PROTOCOL_KEYS
    return json.dumps({p: entry.get(p) for p in PROTOCOL_KEYS if p in entry}, sort_keys=True, default=str)


def column_order(names: Iterable[str]) -> list[str]:
    """`dgm leaderboard`'s order: its known metrics first, in its order, then the others by name."""
    from dgm.metrics.leaderboard import ORDER
    present = set(names)
    return [k for k in ORDER if k in present] + sorted(present - set(ORDER))


def _add_run(g: dict[str, Any], protos: dict[str, set[str]], r: Run, ev: dict[str, Any]) -> None:
    from dgm.metrics.leaderboard import BETTER
    for k, v in ev.items():
        g["columns"].setdefault(k, {"unit": v.get("unit"), "protocol": v.get("protocol"), "better": BETTER.get(k)})
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
    for ds, g in groups.items():
        g["columns"] = {k: {**g["columns"][k], "comparable": len(protocols[ds][k]) == 1}
                        for k in column_order(g["columns"])}
    return groups
