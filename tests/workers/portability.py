"""Launched by tests/test_portability.py, once per compute setting (thread count and environment): everything
that setting must reproduce, in one process.

- steps: each job's checkpoint quantized with ``from_float`` (its fingerprint) and stepped on the CPU kernels
  (sha256 of all frequencies), and, where the job asks, on the torch reference ops too;
- files: the text compressed with portable numerics (the file comes back), the parent's portable file
  decompressed, and the parent's float file decompressed or refused (the error comes back).
Prints one line: RESULT followed by JSON.
"""

import hashlib
import json
import sys

import numba
import numpy as np
import torch

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])

from blm_lab.checkpoint import load_checkpoint  # noqa: E402  (after the thread count is set)
from blm_lab.codec.neural import compress, decompress  # noqa: E402
from blm_lab.codec.portable import PortableModel  # noqa: E402
from blm_lab.errors import BlmError  # noqa: E402

out = {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
       "numba_cpu": numba.config.CPU_NAME, "jobs": []}
for job in args["jobs"]:
    model, _ = load_checkpoint(job["ckpt"])
    pm = PortableModel.from_float(model, **job["options"])
    res = {"fingerprint": pm.fingerprint().hex()}
    sym = np.array(job["sym"], dtype=np.int64)
    caches = {"freqs_sha": pm.new_cache(sym.shape[0])}
    if job["reference"]:  # the torch ops (the CUDA path) too
        caches["reference_sha"] = pm.new_cache(sym.shape[0], reference=True)
    for key, cache in caches.items():
        h = hashlib.sha256()
        for t in range(sym.shape[1]):
            h.update(pm.step(torch.from_numpy(sym[:, t]), cache).tobytes())
        res[key] = h.hexdigest()
    out["jobs"].append(res)

files = args["files"]
model, _ = load_checkpoint(files["ckpt"])
text = open(files["text"], "rb").read()
out["portable_file"] = compress(text, model, numerics="portable", segments=3).hex()
for name in ("portable", "float"):
    try:
        out[name + "_decoded"] = decompress(open(files[name], "rb").read(), model) == text
    except BlmError as exc:
        out[name + "_decoded"], out[name + "_error"] = False, str(exc)
print("RESULT" + json.dumps(out))
