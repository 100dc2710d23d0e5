#!/bin/bash
# The extract benchmark on a GPU machine with KERAS_BACKEND=jax and no TensorFlow, in one go.
#
# Run from the repository root: bash benchmarks/gpu_extract_jax.sh [extra extract_benchmark.py options]
# Optional, next to the repository root:
#   .whl/      wheels of what the machine's python3 lacks (keras, namex, optree), installed to /tmp/site;
#   .benchdata/photos/  make_images.py's scikit-image photos, copied in if that scikit-image lacks them.
# vggfeat runs from the checkout (PYTHONPATH; vggfeat_cli is a link to cli/). Everything goes to $OUT
# (default /tmp/gpu-bench-out): log.txt, results.json (every run and the medians), env.txt.
set -u
OUT=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=/tmp/site
mkdir -p $SITE
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl || exit 1
fi
ln -sfn "$PWD/cli" $SITE/vggfeat_cli
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=jax
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvidia-smi
    $PY -V
    $PY -m pip list 2>/dev/null | grep -iE '^(keras|jax|jaxlib|jax-cuda.*|numpy|h5py|pillow|ml.dtypes|optree|namex|scikit-image|tensorflow) '
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# make_images.py reads scikit-image's own photos; bring them if this scikit-image lacks them
$PY - <<'EOF' || exit 1
import os, shutil, skimage
d = os.path.join(os.path.dirname(skimage.__file__), "data")
for f in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "color.png"]:
    if not os.path.exists(os.path.join(d, f)):
        print("copying", f, "into", d)
        shutil.copy(os.path.join(".benchdata", "photos", f), d)
EOF
# the backend, the device, and that TensorFlow is not what runs
$PY - <<'EOF' || exit 1
import importlib.util, time
t = time.perf_counter()
import keras, jax, jax.numpy as jnp
print("keras", keras.__version__, "backend", keras.backend.backend(), "jax", jax.__version__, jax.devices())
print("tensorflow importable:", importlib.util.find_spec("tensorflow") is not None)
x = jnp.ones((8, 8), jnp.bfloat16)
print("bf16 matmul ok:", float((x @ x)[0, 0]), f"({time.perf_counter() - t:.1f} s)")
EOF
$PY benchmarks/extract_benchmark.py --backend jax --json "$OUT/results.json" --keep-going "$@"
echo "exit $?"
