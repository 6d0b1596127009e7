"""Make the golden files once: a tiny trained model (saved in float16), three inputs, and the files made from
them with the portable numerics (listed in manifest.json with how each was made). tests/test_golden.py
checks that every later blm_lab decodes them byte for byte and writes the same bytes again; regenerate
them only together with a container version bump. ``--missing`` adds the files of FILES not made yet (a
new mixer revision's) with the existing model, leaving every existing file as it is.

    python tests/golden/make_golden.py
    python tests/golden/make_golden.py --missing
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from blm_lab.checkpoint import load_checkpoint, save_checkpoint
from blm_lab.codec.neural import compress_with_stats
from blm_lab.gpt import BytesGPT, BytesGPTConfig

HERE = Path(__file__).resolve().parent
TEXT = (b"To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        b"The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        b"And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end\n")


# file name -> (input, uses the model, mixing, mixer revision)
FILES = {
    "text": ("text", True, "cm", 1),  # the default: the model mixed with the file's own statistics
    "text-model-only": ("text", True, "none", 1),  # the model's byte distributions coded directly
    "text-cm-only": ("text", False, "cm", 1),  # context mixing alone, no model
    "mixed": ("mixed", True, "cm", 1),  # random middle segments are stored as they are
    "short": ("short", True, "cm", 1),  # shorter than any header: the file is stored whole
    "text-rev2": ("text", True, "cm", 2),  # mixer revision 2, with the model
    "text-cm-only-rev2": ("text", False, "cm", 2),  # mixer revision 2 alone
}


def inputs() -> dict[str, bytes]:
    rng = random.Random(2026)
    return {
        "text": TEXT * 6,  # coded: the model has learnt it
        "mixed": TEXT * 3 + rng.randbytes(600) + TEXT * 2,  # its random middle segment is stored
        "short": b"To be, or not to be",  # shorter than the header would cost: stored whole
    }


def train_tiny() -> BytesGPT:
    torch.manual_seed(0)
    model = BytesGPT(BytesGPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    data = torch.tensor(list(TEXT * 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 33, (16,))
        windows = torch.stack([data[s:s + 33] for s in starts])
        _, loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main(missing: bool = False) -> None:
    torch.set_num_threads(1)
    if not missing:
        model = train_tiny().half()  # a float16 checkpoint: loading upcasts it exactly
        save_checkpoint(HERE / "tiny.pt", {"config": model.config.to_dict(), "model_state": model.state_dict()})
    model, _ = load_checkpoint(HERE / "tiny.pt")
    data = inputs()
    for name, blob in data.items():
        if missing:
            assert (HERE / f"{name}.bin").read_bytes() == blob, name
        (HERE / f"{name}.bin").write_bytes(blob)
    manifest = json.loads((HERE / "manifest.json").read_text()) if missing else {}
    for name, (source, with_model, mixing, revision) in FILES.items():
        if missing and name in manifest:
            continue
        blob, stats = compress_with_stats(data[source], model if with_model else None, mixing=mixing,
                                          segment_bytes=256, mixer_revision=revision)
        (HERE / f"{name}.blmz").write_bytes(blob)
        manifest[name] = {"input": f"{source}.bin", "model": with_model, "mixing": mixing, "segment_bytes": 256,
                          "mixer_revision": revision}
        print(f"{name}: {len(data[source])} -> {len(blob)} bytes ({stats.numerics}, mixing {stats.mixing}, "
              f"{stats.stored_segments} stored segments)")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main(missing="--missing" in sys.argv[1:])
