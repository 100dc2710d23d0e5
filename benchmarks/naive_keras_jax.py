"""Peer baseline without TensorFlow: what a Keras 3 user writes by hand on the JAX (or PyTorch) backend.

The same job as naive_keras.py (VGG16 fc7 features of a folder, squashed to 224x224, saved with
np.save), written with the backend-agnostic tools Keras 3 documents instead of tf.data, which needs
TensorFlow: a `keras.utils.PyDataset` whose batches are `keras.utils.load_img(target_size=(224, 224))`
+ `img_to_array` + `preprocess_input`, decoded by a thread pool (`workers` = CPUs, as tf.data's AUTOTUNE
map decodes in parallel), then `model.predict` + `np.save`. Files in the order
`image_dataset_from_directory` uses (class folders sorted, files sorted).

Prints the feature shape and `loop_seconds=...`: the time from the data set's creation to the saved
file (the extraction loop: decoding, forward passes, writing), after imports and the model build.

Usage: python naive_keras_jax.py IMAGE_DIR OUT.npy [batch]
"""
import math
import os
import sys
import time

import keras
import numpy as np

EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")


class Folder(keras.utils.PyDataset):
    def __init__(self, files, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.files, self.batch_size = files, batch_size

    def __len__(self):
        return math.ceil(len(self.files) / self.batch_size)

    def __getitem__(self, i):
        chunk = self.files[i * self.batch_size:(i + 1) * self.batch_size]
        x = np.stack([keras.utils.img_to_array(keras.utils.load_img(f, target_size=(224, 224),
                                                                    interpolation="bilinear")) for f in chunk])
        return keras.applications.vgg16.preprocess_input(x)


def main():
    src, out = sys.argv[1], sys.argv[2]
    bs = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    files = [os.path.join(src, c, f) for c in classes for f in sorted(os.listdir(os.path.join(src, c)))
             if f.lower().endswith(EXTS)]
    m = keras.applications.VGG16(weights=None, include_top=True)
    fx = keras.Model(m.input, m.get_layer("fc2").output)
    start = time.perf_counter()
    ds = Folder(files, bs, workers=os.cpu_count() or 1, use_multiprocessing=False)
    feats = fx.predict(ds, verbose=0)
    np.save(out, feats)
    print(feats.shape)
    print(f"loop_seconds={time.perf_counter() - start:.3f}")


if __name__ == "__main__":
    main()
