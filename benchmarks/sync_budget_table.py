"""Copy the short table of benchmarks/results/budget_mnist/budget.md into BENCHMARKS.md (between the budget-table
markers), so the two never disagree:  python benchmarks/sync_budget_table.py"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def short_table(md: str) -> str:
    block = md.split("In short", 1)[1].split("In full", 1)[0]
    return "\n".join(ln for ln in block.splitlines() if ln.startswith("|"))


def main() -> None:
    table = short_table((ROOT / "benchmarks" / "results" / "budget_mnist" / "budget.md").read_text())
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    new, n = re.subn(r"(<!-- budget-table -->\n).*?(<!-- /budget-table -->)", lambda m: m[1] + table + "\n" + m[2],
                     text, flags=re.S)
    if n != 1:
        raise SystemExit("BENCHMARKS.md: the budget-table markers are missing")
    path.write_text(new)
    print(table)


if __name__ == "__main__":
    main()
