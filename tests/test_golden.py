"""Golden files: made once by tests/golden/make_golden.py with the portable numerics (manifest.json says how
each was made). Every later blm_lab must decode them byte for byte, and (the format being deterministic)
write the same bytes again. A change that breaks this is a format change: bump container.FORMAT_VERSION
and keep a reader for the old version, or refuse it by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blm_lab.checkpoint import load_checkpoint
from blm_lab.codec import container
from blm_lab.codec.neural import compress, decompress

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


@pytest.fixture(scope="module")
def model():
    model, ckpt = load_checkpoint(GOLDEN / "tiny.pt")
    assert str(next(iter(ckpt["model_state"].values())).dtype) == "torch.float16"  # a half checkpoint, upcast
    return model


@pytest.mark.parametrize("name", MANIFEST)
def test_golden_files_decode_byte_for_byte(model, name):
    spec = MANIFEST[name]
    blob = (GOLDEN / f"{name}.blmz").read_bytes()
    assert decompress(blob, model if spec["model"] else None) == (GOLDEN / spec["input"]).read_bytes()


@pytest.mark.parametrize("name", MANIFEST)
def test_golden_files_are_written_again_identically(model, name):
    spec = MANIFEST[name]
    blob = compress((GOLDEN / spec["input"]).read_bytes(), model if spec["model"] else None, mixing=spec["mixing"],
                    segment_bytes=spec["segment_bytes"], mixer_revision=spec.get("mixer_revision", 1))
    assert blob == (GOLDEN / f"{name}.blmz").read_bytes()


def test_golden_files_cover_every_kind_of_file():
    from blm_lab.codec.mixing import REVISIONS, revision_of

    kinds = {}
    for name in MANIFEST:
        header, _ = container.unpack((GOLDEN / f"{name}.blmz").read_bytes())
        kinds[name] = "stored" if header.stored else (header.numerics, header.mixing, sum(header.stored_segments),
                                                      revision_of(header.mixer_fingerprint))
    assert kinds == {"text": ("portable", "cm", 0, 1), "text-model-only": ("portable", "none", 0, None),
                     "text-cm-only": ("none", "cm", 0, 1), "mixed": ("portable", "cm", 2, 1), "short": "stored",
                     "text-rev2": ("portable", "cm", 0, 2), "text-cm-only-rev2": ("none", "cm", 0, 2)}
    assert {k[3] for k in kinds.values() if k != "stored"} - {None} == set(REVISIONS)  # every revision decodes


def test_golden_files_are_small():
    assert sum(p.stat().st_size for p in GOLDEN.iterdir() if p.is_file()) < 200_000
