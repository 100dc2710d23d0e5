"""`ImageBatches`: the batches of a fine-tuning run for `model.fit` (a Keras `PyDataset`).

Kept apart from `vggfeat.finetuning` so that every check of a run imports without Keras.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from .errors import ImageError, InputError
from .images import load_image


class ImageBatches(keras.utils.PyDataset):
    """Batches `(x, y)` for `model.fit`: images decoded by `load_image` at `geometry` (in a thread pool),
    passed through the augmentation `layers`, clipped to 0-255 and preprocessed (`preprocessing`).

    Images come in the order given, or shuffled by `seed` (again after every epoch) with `shuffle`.
    Unreadable images are skipped and recorded in `failed` (path -> reason); a batch is never empty (a
    batch whose every image failed borrows one readable image).
    """

    def __init__(self, files, labels, *, geometry, preprocessing="caffe", batch_size=32, layers=(),
                 shuffle=False, seed=0, decode_workers=None):
        super().__init__()
        self.files, self.labels = list(files), np.asarray(labels)
        if len(self.files) != len(self.labels):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        self.geometry, self.aug_layers = geometry, list(layers)
        self.preprocessing, self.batch_size = preprocessing, int(batch_size)
        self.shuffle, self.rng = shuffle, np.random.default_rng(seed)
        self.order = np.arange(len(self.files))
        self.decode_workers = decode_workers or max(2, min(8, os.cpu_count() or 2))
        self._pool = None
        self.failed = {}
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        return math.ceil(len(self.files) / self.batch_size)

    def _load(self, i):
        try:
            return load_image(self.files[i], self.geometry)
        except ImageError as exc:
            self.failed[self.files[i]] = str(exc)
            return None

    def __getitem__(self, idx):
        from .preprocessing import preprocess

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.decode_workers)
        index = self.order[idx * self.batch_size:(idx + 1) * self.batch_size]
        images = list(self._pool.map(self._load, index))
        keep = [k for k, im in enumerate(images) if im is not None]
        if not keep:  # every image of the batch failed: borrow one readable image
            for j in self.order:
                im = self._load(j)
                if im is not None:
                    images, index, keep = [im], np.array([j]), [0]
                    break
            else:
                raise InputError("no training image could be read")
        x = np.stack([images[k] for k in keep]).astype("float32")
        y = self.labels[index[keep]]
        for layer in self.aug_layers:
            x = layer(x, training=True)
        x = np.clip(np.asarray(x, dtype="float32"), 0, 255)
        return preprocess(x, self.preprocessing), y

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)

    def close(self):
        """Stop the decoding threads (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
