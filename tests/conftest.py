from pathlib import Path

import pytest


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real MNIST / Fashion-MNIST / USPS files beside the checkout; tests using it skip when absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared/data not found at {SHARED_DATA}: real-data tests need it")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    """Never write into ~/.cache/dgm from tests."""
    monkeypatch.setenv("DGM_DATA", str(tmp_path_factory.getbasetemp() / "dgm-data"))
