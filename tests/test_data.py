"""dgm.data: readers (IDX, ESL/USPS, folders, digits), downloads (network mocked), conversions, Batches."""
from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgm.data import (Batches, DataError, ImageData, binarize, data_root, dataset_names, find_shared_data,
                      load_dataset, register_dataset, to_float, to_uint8)
from dgm.data import catalog, images as readers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IDX_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test may reach the network: any urlopen not replaced by a test fails at once."""
    def refuse(url, *a, **k):
        raise urllib.error.URLError(f"network disabled in tests ({url})")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ---------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    head = np.array([magic, *arr.shape], dtype=">u4").tobytes()
    return gzip.compress(head + arr.astype(np.uint8).tobytes())


def write_idx_set(folder: Path, n_train=6, n_test=4, size=28, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_bytes(x, 2051))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_bytes(y, 2049))
        arrays[prefix] = (x, y)
    return arrays


def esl_text(labels, values) -> str:
    return "".join(f"{lab:.4f} " + " ".join(f"{v:.4f}" for v in row) + " \n" for lab, row in zip(labels, values))


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(monkeypatch, files: dict[str, bytes], log: list | None = None, fail_prefix: str | None = None):
    """Replace urlopen by a fake server that knows ``files`` by basename."""
    def urlopen(url, timeout=None):
        if log is not None:
            log.append(url)
        if fail_prefix and url.startswith(fail_prefix):
            raise urllib.error.URLError("mirror down")
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "not found", {}, None)
        return FakeResponse(files[name])
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


# ---------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_reader(tmp_path, name):
    arrays = write_idx_set(tmp_path / name)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        d = load_dataset(name, split, data_dir=tmp_path, download=False)
        x, y = arrays[prefix]
        assert d.images.dtype == torch.uint8 and d.images.shape == (len(x), 1, 28, 28)
        assert d.images.is_contiguous() and d.shape == (1, 28, 28) and len(d) == len(x)
        assert np.array_equal(d.images[:, 0].numpy(), x)
        assert d.labels.dtype == torch.int64 and np.array_equal(d.labels.numpy(), y)
        assert d.name == name and d.num_classes == 10 and d.factors is None
    # Editing a returned tensor must not leak into the next load (an in-process cache is allowed).
    d.images.zero_()
    assert np.array_equal(load_dataset(name, "test", data_dir=tmp_path).images[:, 0].numpy(), arrays["t10k"][0])


def test_idx_resize(tmp_path):
    write_idx_set(tmp_path / "mnist")
    for size in (32, 14):
        d = load_dataset("mnist", "train", data_dir=tmp_path, image_size=size, download=False)
        assert d.images.shape == (6, 1, size, size) and d.images.dtype == torch.uint8
    flat = np.full((2, 28, 28), 77, np.uint8)  # a constant image must stay constant through resizing
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(idx_bytes(flat, 2051))
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.zeros(2), 2049))
    assert (load_dataset("mnist", data_dir=tmp_path, image_size=14).images == 77).all()


@pytest.mark.parametrize("damage, needle", [
    ("magic", "magic"), ("truncated_gzip", "gzip"), ("short_data", "size mismatch"), ("not_gzip", "gzip")])
def test_idx_corrupt_names_file(tmp_path, damage, needle):
    write_idx_set(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    x = np.zeros((6, 28, 28), np.uint8)
    if damage == "magic":
        bad.write_bytes(idx_bytes(x, 2049))
    elif damage == "truncated_gzip":
        bad.write_bytes(idx_bytes(x, 2051)[:-30])
    elif damage == "short_data":
        head = np.array([2051, 6, 28, 28], dtype=">u4").tobytes()
        bad.write_bytes(gzip.compress(head + x.tobytes()[:-100]))
    else:
        bad.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match=needle) as e:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert "train-images-idx3-ubyte.gz" in str(e.value)


def test_idx_count_mismatch(tmp_path):
    write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.zeros(5), 2049))
    with pytest.raises(DataError, match="6 images but"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_mnist_no_download_names_all_four(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert all(f in msg for f in IDX_NAMES)
    assert str(tmp_path / "mnist") in msg and "DGM_DATA" in msg and "--data-dir" in msg


def test_download_failure_is_one_clean_error(tmp_path):
    # The autouse fixture makes every urlopen fail, like a machine without network.
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert all(f in str(e.value) for f in IDX_NAMES) and "fashion-mnist.s3-website" in str(e.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "a failed download left a file behind"


def test_download_mirror_fallback_and_md5(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_idx_set(src)
    files = {f: (src / f).read_bytes() for f in IDX_NAMES}
    monkeypatch.setitem(readers.MD5, "mnist", {f: hashlib.md5(b).hexdigest() for f, b in files.items()})
    log = []
    serve(monkeypatch, files, log, fail_prefix=readers.MIRRORS["mnist"][0])
    root = tmp_path / "root"
    d = load_dataset("mnist", "train", data_dir=root)
    assert len(d) == 6
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(IDX_NAMES[:2])  # only what was needed
    assert any(u.startswith(readers.MIRRORS["mnist"][0]) for u in log)
    assert any(u.startswith(readers.MIRRORS["mnist"][1]) for u in log)


def test_download_md5_mismatch_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_idx_set(src)
    serve(monkeypatch, {f: (src / f).read_bytes() for f in IDX_NAMES})  # real md5 table: these won't match
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5"):
        load_dataset("mnist", data_dir=root)
    assert not any(p.is_file() for p in root.rglob("*"))


def test_env_var_and_cwd_fallback(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "env" / "mnist", n_train=3)
    monkeypatch.setenv("DGM_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env" and data_root(tmp_path) == tmp_path
    assert len(load_dataset("mnist", download=False)) == 3
    # Without data_dir and $DGM_DATA: ~/.cache/dgm first, then shared/data above the working directory.
    monkeypatch.delenv("DGM_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "dgm"
    write_idx_set(tmp_path / "proj" / "shared" / "data" / "mnist", n_train=2)
    (tmp_path / "proj" / "repo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj" / "repo" / "sub")
    assert find_shared_data() == (tmp_path / "proj" / "shared" / "data").resolve()
    assert len(load_dataset("mnist", download=False)) == 2


# ---------------------------------------------------------------- USPS (ESL format)

def test_usps_reader(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    vals = np.round(rng.uniform(-1, 1, (5, 256)), 3)
    vals[0, :] = -1.0
    vals[1, :] = 1.0
    (tmp_path / "usps").mkdir()
    with gzip.open(tmp_path / "usps" / "zip.train.gz", "wt") as f:
        f.write(esl_text([3, 1, 4, 1, 5], vals))
    d = load_dataset("usps", "train", data_dir=tmp_path, download=False)
    assert d.images.shape == (5, 1, 16, 16) and d.images.dtype == torch.uint8 and d.num_classes == 10
    assert d.labels.tolist() == [3, 1, 4, 1, 5]
    assert (d.images[0] == 0).all() and (d.images[1] == 255).all()
    expect = np.round((vals[2] + 1) * 127.5).reshape(16, 16)
    assert np.abs(d.images[2, 0].numpy().astype(int) - expect).max() <= 1
    assert load_dataset("usps", data_dir=tmp_path, image_size=8).shape == (1, 8, 8)


def test_usps_bad_file_and_download_check(tmp_path, monkeypatch):
    (tmp_path / "usps").mkdir()
    with gzip.open(tmp_path / "usps" / "zip.test.gz", "wt") as f:
        f.write("1.0 0.5 0.5\n")  # 3 fields, not 257
    with pytest.raises(DataError, match="zip.test.gz"):
        load_dataset("usps", "test", data_dir=tmp_path)
    # A download is accepted only when it parses with the expected row count.
    good = gzip.compress(esl_text([0, 1], np.zeros((2, 256))).encode())
    serve(monkeypatch, {"zip.train.gz": good})
    with pytest.raises(DataError, match="expected 7291 rows"):
        load_dataset("usps", "train", data_dir=tmp_path / "r1")
    assert not any(p.is_file() for p in (tmp_path / "r1").rglob("*"))
    monkeypatch.setitem(readers.USPS_ROWS, "train", 2)
    assert len(load_dataset("usps", "train", data_dir=tmp_path / "r2")) == 2
    assert (tmp_path / "r2" / "usps" / "zip.train.gz").is_file()


# ---------------------------------------------------------------- folders

def _png(path: Path, color, size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_reader_labels_and_skips(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "cat" / "a.png", (255, 0, 0))
    _png(root / "cat" / "deep" / "b.jpg", (250, 10, 10), size=(30, 40))
    _png(root / "dog" / "c.bmp", 128, mode="L")
    _png(root / "dog" / "d.webp", (0, 0, 255))
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(root / "dog" / "e.png")  # fully transparent -> white
    (root / "dog" / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (root / "dog" / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = load_dataset(f"folder:{root}", image_size=8)
    msgs = [str(x.message) for x in w if "skipped" in str(x.message)]
    assert len(msgs) == 1 and "skipped 2 file(s)" in msgs[0]
    assert d.images.shape == (5, 3, 8, 8) and d.images.dtype == torch.uint8
    assert d.labels.tolist() == [0, 0, 1, 1, 1] and d.num_classes == 2 and d.class_names == ["cat", "dog"]
    assert d.images[0, :, 4, 4].tolist() == [255, 0, 0] and (d.images[4] == 255).all()
    with pytest.warns(UserWarning, match="skipped 2"):
        again = load_dataset(d.name, image_size=8)  # the name loads the same data again
    assert again.images.equal(d.images)


def test_folder_gray_unlabelled_default_size_and_splits(tmp_path):
    root = tmp_path / "g"
    _png(root / "x.png", 10, size=(100, 70), mode="L")
    _png(root / "y.png", (50, 50, 50), size=(64, 64))  # RGB file with gray content still counts as gray
    d = load_dataset(f"folder:{root}")
    assert d.images.shape == (2, 1, 64, 64) and d.labels is None and d.num_classes is None
    assert load_dataset(f"folder:{root}", "test").images.equal(d.images)  # no train/test: whole folder
    split = tmp_path / "s"
    for s, n in (("train", 3), ("test", 1)):
        for i in range(n):
            _png(split / s / ("b" if i else "a") / f"{i}.png", (i * 40, 0, 0))
    tr, te = load_dataset(f"folder:{split}", "train", image_size=4), load_dataset(f"folder:{split}", "test", image_size=4)
    assert (len(tr), len(te), tr.class_names, te.class_names) == (3, 1, ["a", "b"], ["a", "b"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no readable images"), pytest.warns(UserWarning, match="skipped 1"):
        load_dataset(f"folder:{empty}")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'nope'}")


# ---------------------------------------------------------------- digits, registry

def test_digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert tr.images.dtype == torch.uint8 and tr.shape == (1, 16, 16) and len(tr) + len(te) == 1797
    assert 0.18 < len(te) / 1797 < 0.22 and tr.num_classes == 10
    assert int(tr.images.max()) == 255 and int(tr.images.min()) == 0
    assert (torch.bincount(te.labels, minlength=10) >= 30).all()  # stratified: every class in test
    assert load_dataset("digits", image_size=8).shape == (1, 8, 8)
    assert load_dataset("digits", "test", image_size=28).images.shape == (len(te), 1, 28, 28)


def test_registry(monkeypatch):
    monkeypatch.setattr(catalog, "_LOADERS", dict(catalog._LOADERS))
    monkeypatch.setattr(catalog, "_PATH_LOADERS", set(catalog._PATH_LOADERS))
    assert {"digits", "mnist", "fashion-mnist", "usps", "folder:PATH"} <= set(dataset_names())
    with pytest.raises(DataError, match="known: .*mnist"):
        load_dataset("nope")
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", "val")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("folder")
    with pytest.raises(DataError, match="takes no"):
        load_dataset("mnist:x")

    @register_dataset("toy")
    def toy(split, data_dir, image_size, download):
        return ImageData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), None, "toy", None,
                         factors=torch.zeros(3, 2))

    @register_dataset("echo")
    def echo(split, data_dir, image_size, download, *, path):
        return ImageData(torch.full((1, 1, 2, 2), len(path), dtype=torch.uint8), None, f"echo:{path}", None)

    assert "toy" in dataset_names() and "echo:PATH" in dataset_names()
    assert load_dataset("toy", image_size=6).shape == (1, 6, 6)  # loaders ignoring image_size get resized
    assert load_dataset("echo:a:b").images[0, 0, 0, 0] == 3  # everything after the first colon is the path
    with pytest.raises(ValueError, match="twice"):
        register_dataset("toy")(lambda *a: None)


# ---------------------------------------------------------------- conversions

def test_conversions():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert to_float(x).tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    assert to_float(x, "-11").tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)
    assert to_float(x).dtype == torch.float32
    with pytest.raises(ValueError):
        to_float(x, "0255")
    with pytest.raises(TypeError):
        to_float(x.float())
    assert to_uint8(to_float(x)).equal(x)
    assert to_uint8(torch.tensor([-0.5, 0.5, 2.0, float("nan")])).tolist() == [0, 128, 255, 0]
    g = torch.Generator().manual_seed(0)
    p = torch.rand(64, 64, generator=g)
    b = binarize(p, generator=torch.Generator().manual_seed(1))
    assert set(b.unique().tolist()) <= {0.0, 1.0} and b.dtype == p.dtype
    assert abs(b.mean().item() - p.mean().item()) < 0.02
    assert b.equal(binarize(p, generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- Batches

def _toy(n=103):
    x = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    return ImageData(x.contiguous(), torch.arange(n), "toy", None)


def test_batches_deterministic_and_covering():
    data = _toy()
    b = Batches(data, batch_size=10, seed=3)
    assert len(b) == 10
    x, y = b.get(7)
    x2, y2 = Batches(data, batch_size=10, seed=3).get(7)  # a fresh object: resuming gives the same batch
    assert x.equal(x2) and y.equal(y2) and x.dtype == torch.uint8 and x.shape == (10, 1, 2, 2)
    assert (x[:, 0, 0, 0].long() == y).all()  # images and labels stay paired
    assert not y.equal(b.get(7 + len(b))[1])  # next epoch, same slot: a different batch
    assert not y.equal(Batches(data, 10, seed=4).get(7)[1])
    epoch1 = torch.cat([y for _, y in b.epoch(1)])
    assert len(epoch1) == 100 and len(set(epoch1.tolist())) == 100  # each index at most once per epoch
    g = torch.Generator().manual_seed(3 * 1_000_003 + 1)
    assert epoch1.equal(torch.randperm(103, generator=g)[:100])  # the documented permutation
    full = Batches(data, batch_size=10, seed=3, drop_last=False)
    assert len(full) == 11 and sorted(torch.cat([y for _, y in full.epoch(0)]).tolist()) == list(range(103))


def test_batches_rank_shards():
    data = _toy()
    glob = Batches(data, batch_size=12, seed=5)
    for k in (0, 9, 23):
        shards = [Batches(data, 12, seed=5, rank=r, world_size=4).get(k) for r in range(4)]
        assert all(len(s[1]) == 3 for s in shards)
        assert torch.cat([s[1] for s in shards]).equal(glob.get(k)[1])
        assert torch.cat([s[0] for s in shards]).equal(glob.get(k)[0])
    with pytest.raises(ValueError, match="divisible"):
        Batches(data, 10, world_size=4)
    with pytest.raises(ValueError):
        Batches(data, 8, rank=2, world_size=2)
    with pytest.raises(ValueError):
        Batches(data, 200)
    unlabelled = ImageData(data.images, None, "u", None)
    assert Batches(unlabelled, 4).get(0)[1] is None


# ---------------------------------------------------------------- the real files in shared/data

def _shared(sub: str) -> Path:
    if not (SHARED / sub).is_dir():
        pytest.skip(f"shared/data not found: {SHARED / sub} is absent")
    return SHARED


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_shared_idx(name):
    root = _shared(name)
    tr = load_dataset(name, "train", data_dir=root, download=False)
    te = load_dataset(name, "test", data_dir=root, download=False)
    assert tr.images.shape == (60000, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert te.images.shape == (10000, 1, 28, 28)
    assert tr.labels.unique().tolist() == list(range(10)) and te.labels.unique().tolist() == list(range(10))


def test_shared_usps():
    root = _shared("usps")
    tr = load_dataset("usps", "train", data_dir=root, download=False)
    te = load_dataset("usps", "test", data_dir=root, download=False)
    assert tr.images.shape == (7291, 1, 16, 16) and te.images.shape == (2007, 1, 16, 16)
    assert tr.labels.unique().tolist() == list(range(10))
    npz = np.load(root / "usps" / "usps.npz")
    assert np.array_equal(te.images[:, 0].numpy(), npz["x_test_uint8"])
    assert np.array_equal(te.labels.numpy(), npz["y_test"])


def test_folder_refuses_images_above_the_pixel_limit_before_decoding(tmp_path, monkeypatch):
    import dgm.data.folder as fo
    monkeypatch.setattr(fo, "MAX_PIXELS", 32 * 32)
    root = tmp_path / "imgs"
    _png(root / "small.png", 100, mode="L", size=(32, 32))
    _png(root / "huge.png", 100, mode="L", size=(33, 40))
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) of more than 1,024 pixels \(e.g. huge.png\)"):
        d = load_dataset(f"folder:{root}", image_size=8)
    assert d.images.shape[0] == 1
    with pytest.raises(fo.TooLarge, match="33x40 pixels"):
        fo.open_image(root / "huge.png")
