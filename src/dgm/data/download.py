"""Fetch one file from a list of mirrors, verified, written atomically (never a partial file)."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

# Short: a machine without network should fail in seconds, not hang a training script.
TIMEOUT_S = 15.0
_CHUNK = 1 << 16


def fetch(urls: list[str], dest: Path, *, md5: str | None = None,
          verify: Callable[[Path], None] | None = None, timeout: float = TIMEOUT_S) -> None:
    """Download ``dest`` from the first of ``urls`` that works and passes the checks.

    The bytes go to a temporary file in ``dest``'s folder (so the final ``os.replace`` is atomic),
    are checked against ``md5`` and/or by ``verify(tmp_path)`` (which raises on bad content), and only
    then renamed to ``dest``. Raises OSError describing every mirror's failure.
    """
    dest = Path(dest)
    errors = []
    for url in urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as e:  # read-only or unwritable folder: no mirror can help
            raise OSError(f"cannot write to {dest.parent}: {e}") from e
        tmp = Path(tmp_name)
        try:
            h = hashlib.md5()
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
                while chunk := r.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
            if md5 is not None and h.hexdigest() != md5:
                raise ValueError(f"md5 {h.hexdigest()} != expected {md5}")
            if verify is not None:
                verify(tmp)
            os.replace(tmp, dest)
            return
        except Exception as e:  # any mirror failure (network, HTTP, bad content): try the next one
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("download failed: " + "; ".join(errors))
