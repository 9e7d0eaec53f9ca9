"""Expected errors are one clear line: --set values that are not finite numbers, folders that cannot be read."""
import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

import dgm.data.folder as folder
from dgm.config import UsageError, parse_value
from dgm.data import DataError, load_dataset
from dgm.train import TrainConfig


def _field(name):
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "1e400"])
def test_set_refuses_numbers_that_are_not_finite(text):
    with pytest.raises(UsageError, match=f"--set lr={text}: expected a finite float"):
        parse_value(_field("lr"), text)
    with pytest.raises(UsageError, match="--set betas"):
        parse_value(_field("betas"), f"0.9,{text}")


def test_set_parses_finite_numbers_ints_and_tuples():
    assert parse_value(_field("lr"), "2e-4") == 2e-4
    assert parse_value(_field("steps"), "1e3") == 1000
    assert parse_value(_field("betas"), "0.5, 0.999") == (0.5, 0.999)
    with pytest.raises(UsageError, match="expected int"):
        parse_value(_field("steps"), "2.5")


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_a_folder_that_cannot_be_listed_is_a_data_error(tmp_path, monkeypatch):
    _png(tmp_path / "imgs" / "a" / "1.png", 10)
    _png(tmp_path / "imgs" / "b" / "2.png", 200)

    def denied(p):
        raise PermissionError(13, "Permission denied", str(p))
    monkeypatch.setattr(folder, "_subdirs", denied)
    with pytest.raises(DataError, match=r"cannot read .*imgs: Permission denied") as e:
        load_dataset(f"folder:{tmp_path / 'imgs'}", "train", image_size=8)
    assert "\n" not in str(e.value)


def test_an_unlistable_class_folder_is_skipped_with_a_warning(tmp_path, monkeypatch):
    _png(tmp_path / "imgs" / "a" / "1.png", 10)
    _png(tmp_path / "imgs" / "b" / "2.png", 200)
    real = os.scandir
    locked = str(tmp_path / "imgs" / "b")

    def scandir(p="."):
        if os.fspath(p) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real(p)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.warns(UserWarning, match=r"1 folder\(s\) it cannot list"):
        d = load_dataset(f"folder:{tmp_path / 'imgs'}", "train", image_size=8)
    assert len(d) == 1 and d.class_names == ["a", "b"]
    monkeypatch.setattr(folder, "image_files", lambda f, unreadable=None: (unreadable.append(str(f)), [])[1])
    with pytest.raises(DataError, match="cannot list"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", "train", image_size=8)
