"""What each context-mixing component buys and costs: context mixing alone (no model), one stream, each file
alone, with the models of revision 2 added one at a time to revision 1 (side by side in one run, so the
speed figures are ratios to revision 1 measured alongside).

Sizes are the coded stream's bytes (the container adds its header, the same for every configuration);
``seconds`` the compiled coding loop's, kernels compiled beforehand. Every configuration is decoded once on
the first file to check the round trip.

    python benchmarks/bench_mixer_ablation.py --corpora ../shared/corpora
    python benchmarks/bench_mixer_ablation.py --files alice29.txt,ptt5 --steps rev1,+apm
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from blm_lab.codec.coder import BatchDecoder, BatchEncoder
from blm_lab.codec.mixing import ContextMixer, MixerConfig
from blm_lab.codec.mixing import config as C
from blm_lab.data import split_bytes

CANTERBURY = ("alice29.txt", "asyoulik.txt", "cp.html", "fields.c", "grammar.lsp", "kennedy.xls", "lcet10.txt",
              "plrabn12.txt", "ptt5", "sum", "xargs.1")


def steps() -> dict[str, MixerConfig]:
    """Revision 1, then each model of revision 2 added in turn (up to revision 2), then the models left out."""
    out, ctx = {"rev1": MixerConfig()}, C.DEFAULT_CONTEXTS
    out["+apm order 2"] = cfg = MixerConfig(apm_order2=True, final_w=(4, 4, 4, 4))
    for name, extra in (("+sparse", C.SPARSE_CONTEXTS), ("+column", C.COLUMN_CONTEXTS)):
        ctx = ctx + extra
        out[name] = cfg = dataclasses.replace(cfg, contexts=ctx)
    out["+bitmap"] = cfg = dataclasses.replace(cfg, bitmap=True)
    out["+lr1 80 (rev2)"] = cfg = dataclasses.replace(cfg, lr1=80)
    assert cfg == MixerConfig.revision2()
    out["rev2 +record3 (not in rev2)"] = dataclasses.replace(cfg, contexts=cfg.contexts + C.RECORD_CONTEXTS)
    out["rev2 +pixel weight sets (not in rev2)"] = dataclasses.replace(cfg, selectors=cfg.selectors + ("pixels",))
    out["rev2 +indirect (not in rev2)"] = dataclasses.replace(cfg, contexts=cfg.contexts + C.INDIRECT_CONTEXTS)
    return out


def code(data: bytes, cfg: MixerConfig, decode: bool = False) -> tuple[int, float]:
    n = len(data)
    symbols = np.frombuffer(data, dtype=np.uint8).reshape(1, n).copy()
    lengths = np.array([n], dtype=np.int64)
    encoder = BatchEncoder(1, 16)
    mixer = ContextMixer(1, cfg)
    t = time.perf_counter()
    mixer.code(encoder, 0, n, lengths, symbols)
    seconds = time.perf_counter() - t
    stream = encoder.finish()[0]
    if decode:
        out = np.zeros((1, n), dtype=np.uint8)
        ContextMixer(1, cfg).code(BatchDecoder([stream], 16), 0, n, lengths, out)
        assert out.tobytes() == data, "round trip failed"
    return len(stream), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="../shared/corpora")
    ap.add_argument("--files", default="val," + ",".join(CANTERBURY), help="'val': the tiny-shakespeare validation split")
    ap.add_argument("--steps", default=None, help="comma-separated subset of the configurations")
    args = ap.parse_args()
    root = Path(args.corpora)
    files = {}
    for name in args.files.split(","):
        if name == "val":
            raw = np.frombuffer((root / "tinyshakespeare" / "input.txt").read_bytes(), dtype=np.uint8)
            files["val"] = split_bytes(raw)[1].tobytes()
        else:
            files[name] = (root / "canterbury" / name).read_bytes()
    configs = steps()
    if args.steps:
        configs = {k: v for k, v in configs.items() if k in args.steps.split(",")}
    for cfg in configs.values():
        code(b"warm up the kernels" * 20, cfg, decode=True)
    sizes = {k: {} for k in configs}
    seconds = {k: 0.0 for k in configs}
    for i, (fname, data) in enumerate(files.items()):
        for k, cfg in configs.items():  # side by side, file by file
            sizes[k][fname], s = code(data, cfg, decode=i == 0)
            seconds[k] += s
    base = next(iter(configs))
    print("| configuration | " + " | ".join(files) + " | Canterbury sum | time / " + base + " |")
    print("|---" * (len(files) + 3) + "|")
    for k in configs:
        cant = sum(v for f, v in sizes[k].items() if f != "val")
        print(f"| {k} | " + " | ".join(f"{sizes[k][f]:,}" for f in files) + f" | {cant:,} | "
              f"{seconds[k] / seconds[base]:.2f} |")


if __name__ == "__main__":
    main()
