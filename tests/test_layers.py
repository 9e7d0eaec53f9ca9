"""The house's layers hold: import-linter's `layers` contract in pyproject.toml passes (a climbed layer fails CI)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> list[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports not installed: pip install -e '.[dev]' (import-linter is a dev dependency)")
    return [exe]


def test_no_import_climbs_a_layer():
    r = subprocess.run(lint_imports() + ["--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout, r.stdout
