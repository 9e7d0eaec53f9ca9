import contextlib
import threading
import time
from pathlib import Path

import pytest


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real MNIST / Fashion-MNIST / USPS files beside the checkout; tests using it skip when absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared/data not found at {SHARED_DATA}: real-data tests need it")
    return SHARED_DATA


@pytest.fixture
def bench_script():
    """Import a script under benchmarks/ by its path (they are scripts, not a package): bench_script("gan.py")."""
    import importlib.util

    def load(rel: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / rel
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    """Never write into ~/.cache/dgm from tests."""
    monkeypatch.setenv("DGM_DATA", str(tmp_path_factory.getbasetemp() / "dgm-data"))


@contextlib.contextmanager
def _serve_on_loopback(app):
    """Run an ASGI app under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL, stops it after."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        th.join(10)


@pytest.fixture(scope="session")
def serve_on_loopback():
    """The context manager above, for tests that need a real server (browser, concurrency)."""
    return _serve_on_loopback
