"""`RunOptions`: how one `extract` run goes (beside `ExtractorConfig`, which says what a feature is).

Every option is checked once, here, before anything is built or opened; engines, sinks and the job read
them from this one object instead of 35 keyword arguments each."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import InputError
from ..images import MAX_PIXELS
from ..io import COMPRESSIONS, DTYPES
from ..shards import check_retries, parse_size
from . import ENGINES

#: images per forward pass when none is given: on a CPU, batch 8 runs as fast as 32 and peaks about
#: 700 MB lower (docs/benchmarks.md, "peak memory"); a GPU is filled by larger batches
CPU_BATCH = 8
GPU_BATCH = 32

_RAY_ONLY = ("address", "ray_workers", "gpus_per_worker", "block_size")


@dataclass(frozen=True)
class RunOptions:
    """How a run writes its output and where it runs. `RunOptions(...)` raises `InputError` in one line
    for any invalid value, before Keras is imported.

    Attributes:
        resume, overwrite: continue an existing output, or replace it (not both).
        output_shards: write the output as an index and one part per unit of input (`vggfeat.io.index`).
        dtype, compression: how features are stored (`DTYPES`, `COMPRESSIONS` or None).
        batch_size: images per forward pass; None: `CPU_BATCH` on a CPU, `GPU_BATCH` where a GPU is.
        decode_workers: threads decoding images (default: the CPUs, 2 to 16); not Ray actors.
        strict: stop at the first image that cannot be read.
        max_pixels: larger images are recorded as failed.
        engine: one of `ENGINES`.
        address, ray_workers, gpus_per_worker, block_size: the Ray engine's cluster, actors, GPUs per
            actor and images per unit of work (default 8 batches); refused with the local engine.
        extensions, exclude, class_names, label_field, max_member_size, retries: how inputs are read
            (see `vggfeat.shards.scan_inputs`).
    """

    resume: bool = False
    overwrite: bool = False
    output_shards: bool = False
    dtype: str = "float32"
    compression: str | None = None
    batch_size: int | None = None
    decode_workers: int | None = None
    strict: bool = False
    max_pixels: int = MAX_PIXELS
    engine: str = "local"
    address: str | None = None
    ray_workers: int | None = None
    gpus_per_worker: float = 0
    block_size: int | None = None
    extensions: tuple | None = None
    exclude: tuple = ()
    class_names: object = None
    label_field: str | None = None
    max_member_size: object = None
    retries: int | None = None

    def __post_init__(self):
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown storage dtype {self.dtype!r}; choose {' or '.join(DTYPES)}")
        if self.compression not in (None,) + COMPRESSIONS:
            raise InputError(f"unknown compression {self.compression!r}; choose {' or '.join(COMPRESSIONS)}")
        for name in ("batch_size", "decode_workers", "ray_workers", "block_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or int(value) < 1):
                raise InputError(f"{name.replace('_', ' ')} must be at least 1. Received: {value}")
        if self.gpus_per_worker < 0:
            raise InputError("--gpus-per-worker must be at least 0")
        if self.engine not in ENGINES:
            raise InputError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.engine == "local" and any(getattr(self, n) for n in _RAY_ONLY):
            raise InputError("--address, --ray-workers, --gpus-per-worker and --block-size (address, ray_workers, "
                             "gpus_per_worker, block_size) need --engine ray")
        if self.max_member_size is not None:
            parse_size(self.max_member_size)
        if self.retries is not None:
            check_retries(self.retries)
        if not isinstance(self.exclude, tuple):
            object.__setattr__(self, "exclude", tuple(self.exclude or ()))

    @classmethod
    def of(cls, **kwargs) -> "RunOptions":
        """From `extract`'s keyword arguments: `workers` is `decode_workers`; unknown names are refused."""
        if "workers" in kwargs:
            kwargs["decode_workers"] = kwargs.pop("workers")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InputError(f"unknown option {unknown[0]!r}")
        return cls(**kwargs)

    def replace(self, **changes) -> "RunOptions":
        return replace(self, **changes)


def _is_int(value) -> bool:
    try:
        return int(value) == value
    except (TypeError, ValueError):
        return False


def default_batch_size() -> tuple[int, str]:
    """(batch, device word) for a run that gives no batch size: `GPU_BATCH` when Keras's backend sees a
    GPU, else `CPU_BATCH`. Imports Keras's backend: called when the network is built."""
    import keras

    backend = keras.backend.backend()
    gpus = 0
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = len(tf.config.list_physical_devices("GPU"))
        elif backend == "jax":
            import jax

            gpus = sum(1 for d in jax.devices() if d.platform == "gpu")
        elif backend == "torch":
            import torch

            gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a backend that cannot list its devices runs on the CPU
        gpus = 0
    return (GPU_BATCH, "GPU") if gpus else (CPU_BATCH, "CPU")
