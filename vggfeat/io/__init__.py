"""The format wing: everything vggfeat writes and reads, and nothing that computes a feature.

It knows the HDF5 layouts (one file: `layout`, `writer`; an index of parts: `index`), the commit records
and checksums, the seals over what a row means, reading (`read`), merging (`merge`), the rules of every
write (`guard`: one lock per output name, a temporary name renamed into place, a guarded file) and the
sinks engines write into (`sink`). It imports h5py and NumPy, never Keras, TensorFlow or the run wing
(`vggfeat.run`); `tests/io/test_io_architecture.py` checks that. See docs/architecture.md.
"""

#: how features may be stored (`--dtype`, `--compression`); cheap to import (the CLI's choices)
DTYPES = ("float32", "float16")
COMPRESSIONS = ("gzip", "lzf")
