"""Datasets as whole uint8 tensors in memory, plus seeded stateless batching.

    from dgm.data import load_dataset, Batches, to_float
    data = load_dataset("mnist", "train", image_size=32)   # ImageData: uint8 (60000, 1, 32, 32)
    batches = Batches(data, batch_size=128, seed=0)
    x, y = batches.get(step)                               # same step -> same batch, so resuming is exact
    x = to_float(x, "-11")

Built-in names: ``digits``, ``mnist``, ``fashion-mnist``, ``usps``, ``folder:PATH``; other modules add
more with :func:`register_dataset`. Files are looked up in ``data_dir``, else ``$DGM_DATA``, else
``~/.cache/dgm`` and then a ``shared/data`` folder above the working directory.
"""
from dgm.data.base import DataError, ImageData, binarize, resize_images, to_float, to_uint8
from dgm.data.catalog import data_root, dataset_names, find_shared_data, load_dataset, register_dataset
from dgm.data import images as _images, folder as _folder  # noqa: F401  (register the built-in loaders)
from dgm.data.batches import Batches

__all__ = ["ImageData", "DataError", "data_root", "find_shared_data", "load_dataset", "register_dataset",
           "dataset_names", "to_float", "binarize", "to_uint8", "resize_images", "Batches"]
