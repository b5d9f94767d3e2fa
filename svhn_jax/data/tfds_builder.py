"""A TensorFlow-free builder for the tensorflow-datasets `svhn_cropped` dataset.

The stock `svhn_cropped` builder (tensorflow-datasets 4.9.x) cannot prepare the
dataset without TensorFlow: it opens files with `tf.io.gfile`, the Image feature
encodes numpy images with `tf.image.encode_png`, and the default `tfrecord`
writer needs TensorFlow. `SvhnCroppedNoTF` is a subclass with the same name
(`svhn_cropped`), version (3.1.0), features, description and citation that:

- reads the official `.mat` files from a local folder (the tfds *manual dir*)
  with `scipy.io.loadmat`, never touching the network;
- yields PNG bytes made with Pillow (the Image feature passes bytes through);
- is meant to be prepared with `file_format="array_record"`, which needs no
  TensorFlow, and read back with the stock `tfds.data_source`;
- prepares only the splits asked for: `extra` (1.3 GB) is optional.

Importing this module imports tensorflow_datasets (slow): import it lazily,
as `prepared.prepare` does. It reads the `.mat` files with `arrays.read_mat`
and takes their names from `fetch.OFFICIAL`; nothing imports it back.

Example::

    builder = SvhnCroppedNoTF(data_dir="~/tensorflow_datasets",
                              splits=("train", "test"))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/mats"))
"""

from __future__ import annotations

import io
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.datasets.svhn_cropped import (
    svhn_cropped_dataset_builder as _stock,
)

from .arrays import read_mat
from .fetch import OFFICIAL


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one uint8 (32, 32, 3) RGB image as PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class SvhnCroppedNoTF(_stock.Builder, skip_registration=True):
    """`svhn_cropped` 3.1.0 prepared from local `.mat` files, without TensorFlow.

    Args (beyond the stock builder's keyword arguments, e.g. `data_dir`):
      splits: which of "train", "test", "extra" to prepare; the matching
        `*_32x32.mat` files must be in the manual dir
        (`download_config.manual_dir`).
    """

    name = "svhn_cropped"
    # Read README/CITATIONS from the stock builder's folder, so the prepared
    # dataset_info.json carries the same description and citation.
    pkg_dir_path = _stock.Builder._get_pkg_dir_path()
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train_32x32.mat and test_32x32.mat (and optionally extra_32x32.mat) "
        "from http://ufldl.stanford.edu/housenumbers/ in the manual dir.")

    def __init__(self, *, splits: Sequence[str] = ("train", "test"), **kwargs):
        unknown = [s for s in splits if s not in OFFICIAL]
        if unknown or not splits:
            raise ValueError(
                f"splits must be a non-empty subset of {list(OFFICIAL)}, "
                f"got {list(splits)}")
        self._svhn_splits = tuple(splits)
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        mat_dir = dl_manager.manual_dir
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs=dict(split_prefix=f"{split}_",
                                filepath=os.path.join(mat_dir, OFFICIAL[split][0])),
            )
            for split in self._svhn_splits
        ]

    def _generate_examples(self, split_prefix: str, filepath: str) -> Iterator:
        """Yields (key, {"image": PNG bytes, "label": 0..9, "id": "train_000123"})."""
        X, y = read_mat(filepath)
        for i in range(X.shape[0]):
            yield i, {
                "image": png_bytes(X[i]),
                "label": int(y[i]),
                "id": f"{split_prefix}{i:06d}",
            }
