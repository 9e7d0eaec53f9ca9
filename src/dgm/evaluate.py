"""`dgm evaluate`: run the registered metrics (dgm.metrics.registry) that apply to a model and merge their numbers,
each with its protocol, into the run's eval.json.

    from dgm.evaluate import evaluate
    evaluate("runs/vae_mnist")                         # the default metrics and protocol: minutes on a CPU
    evaluate("runs/vae_mnist", ["nll"], protocol="paper")   # IWAE k = 5000 on all 10,000 test images: hours

A metric is fn(model, ctx) -> {key: {"value": float, **protocol}}; which models it applies to, whether it runs by
default, and how to read its numbers are declared where it is registered. Protocol presets: dgm.metrics.likelihood.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from dgm.io import load, write_json
from dgm.metrics import registry
from dgm.metrics.likelihood import PRESETS
from dgm.metrics.registry import EvalContext, Metric, metric  # noqa: F401  (re-exported)

__all__ = ["evaluate", "format_table", "plan", "EvalContext", "metric", "PRESETS"]


def plan(model, metrics: list[str] | None = None) -> list[Metric]:
    """The metrics `evaluate` runs on `model`: the named ones (each must exist and apply), else every default metric
    that applies."""
    known = registry.metrics()
    if metrics:
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        wrong = [m for m in metrics if not known[m].applies(model)]
        if wrong:
            raise ValueError(f"metric(s) {', '.join(wrong)} do not apply to a {model.family} model (it can: "
                             f"{', '.join(sorted(model.capabilities())) or 'nothing the metrics need'})")
        return [known[m] for m in metrics]
    return [m for m in known.values() if m.default and m.applies(model)]


def evaluate(run_dir, metrics: list[str] | None = None, n: int = 10_000, seed: int = 0, data_dir=None,
             device: str = "cpu", options: dict[str, Any] | None = None, model=None, protocol: str = "default",
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the named (or default applicable) metrics on a run and merge the results into its eval.json.

    `protocol`: "default" (minutes on a CPU) or "paper" (the published protocols: IWAE k = 5000 on the whole test
    split, ...); see dgm.metrics.likelihood.PRESETS. Options such as k or nll_n override a preset's numbers, and the
    records then say "preset": "custom". `log` receives progress lines (default: stderr)."""
    if protocol not in PRESETS:
        raise ValueError(f"protocol must be one of {', '.join(PRESETS)}, got {protocol!r}")
    run_dir = Path(run_dir)
    model = model if model is not None else load(run_dir, device)
    kw = {"log": log} if log is not None else {}
    ctx = EvalContext.for_run(run_dir, n=n, seed=seed, data_dir=data_dir, options=dict(options or {}),
                              preset=protocol, named=frozenset(metrics or ()), **kw)
    todo = plan(model, metrics)
    ctx.log(f"dgm evaluate {run_dir}: {', '.join(m.name for m in todo)} (protocol {protocol})")
    path = run_dir / "eval.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for m in todo:
        t0 = time.perf_counter()
        for key, rec in m(model, ctx).items():
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            results[key] = rec
    write_json(path, results)
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = ["| metric | value | protocol |", "|---|---|---|"]
    for k, r in results.items():
        proto = ", ".join(f"{a}={b}" for a, b in r.items() if a not in ("value", "seconds"))
        lines.append(f"| {k} | {r['value']:.4g} | {proto} |")
    return "\n".join(lines)
