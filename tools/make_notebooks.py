"""Write notebooks/01..04 from the cell sources below (without outputs): ``python tools/make_notebooks.py``.

The notebooks are the source of truth once committed; this script is how they were made, and the
quickest way to change several at once. Each notebook: a first code cell tagged ``parameters``
(papermill), then short cells that call ``blm_lab``, with markdown saying what the reader sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
KERNELSPEC = {"name": "blm_lab", "display_name": "Python (blm_lab)", "language": "python"}


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


def params(text: str):
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


DATA_PREP = [
    params('''
# Parameters (papermill overrides these; `blm-lab run -p NAME VALUE`)
data_dir = ""  # file, directory or comma-separated list read as raw bytes; empty: the embedded default corpus
val_fraction = 0.1  # the last fraction of the bytes is the validation split
block_size = 128  # context length in bytes that both splits must hold (the CPU recipe's)
run_dir = "../outputs/lab"  # this run's directory: every later notebook reads what this one writes there
'''),
    md('''
# 01 · Data preparation

What are we about to model? This notebook loads the corpus as raw bytes, shows where every byte came
from (the manifest), how the bytes are distributed, how predictable they are to simple context
models, and what the classic compressors make of them. It writes `manifest.json` and `corpus.json`
(the corpus and its train/validation split) into the run directory for notebooks 02-04.
'''),
    code('''
from IPython.display import HTML

from blm_lab import notebook_helpers as nh
from blm_lab.analysis import entropy_table, plot_byte_histogram, preview, text_preview
from blm_lab.baselines import classic_compressors, compare, plot_bits_per_byte
'''),
    md('''
## The manifest

One row per file, in the order the bytes are concatenated: name, offset in the corpus, size and
sha256. With no `data_dir` this is the embedded default corpus, text that ships with every CPython
(the reference manual's topics plus prose-heavy standard-library modules), so the run needs no download.
'''),
    code('''
corpus = nh.load_data(data_dir)
split = nh.save_corpus_info(run_dir, corpus, data_dir, val_fraction, block_size)
print(f"{corpus.source}: {len(corpus):,} bytes in {len(corpus.files)} files, sha256 {split['sha256'][:16]}...")
corpus.manifest_frame()
'''),
    md('''
The split is by position: the last `val_fraction` of the bytes is the validation split (nanoGPT's
convention), so validation text is never seen in training and later files are the held-out ones.
'''),
    code('''
nh.split_frame(split)
'''),
    md('''
## Byte values

How often each of the 256 byte values occurs (log scale). Text lives in printable ASCII (blue);
anything else (orange) is newlines, tabs, UTF-8 continuation bytes or binary data.
'''),
    code('''
nh.show_and_save(plot_byte_histogram(corpus.data), run_dir, "byte_histogram")
'''),
    md('''
## Empirical entropy, orders 0-3

Bits per byte of an order-*k* Markov model fitted to the corpus itself: order 0 counts single bytes,
order *k* predicts a byte from the *k* before it. These are plug-in estimates on the same data, so
they are optimistic (lower bounds for such a model on unseen text), increasingly so as the number of
distinct contexts grows. A trained model should beat order 0-2 on held-out text.
'''),
    code('''
entropy_table(corpus.data)
'''),
    md('''
## A look at the bytes

The first bytes as text, and the same bytes as a hex dump (offset, hex pairs, printable ASCII).
'''),
    code('''
print(text_preview(corpus.data, 600))
'''),
    code('''
print(preview(corpus.data, start=0, length=256))
'''),
    md('''
## Classic compressors on the whole corpus

Every compressor at its strongest setting; each row's size was decoded and checked against the
original (`verified`). Bits per byte is 8 × compressed / original: the number to beat.
'''),
    code('''
classic = compare({"corpus": corpus.tobytes()}, classic_compressors(), progress=False)
classic
'''),
    code('''
nh.show_and_save(plot_bits_per_byte(classic), run_dir, "classic_bits_per_byte")
'''),
    md('''
Next: `02_train_gpu.ipynb` trains a byte-level transformer on the training split and reports its
validation loss in the same unit, bits per byte.
'''),
]

TRAIN = [
    params('''
# Parameters (papermill overrides these; `blm-lab run -p NAME VALUE`). None: the device's recipe.
device = "auto"  # auto (CUDA when available, else CPU), cpu, cuda or cuda:N
amp = True  # mixed precision (bf16, or fp16 with a grad scaler) on CUDA; ignored on CPU
n_layer = None  # model size; recipe cpu: 4 layers, 4 heads, 128 wide; recipe gpu: 6, 6, 384
n_head = None
n_embd = None
batch_size = None  # sequences per step; recipe cpu 32, gpu 64
block_size = None  # bytes of context; recipe cpu 128, gpu 256
max_steps = 0  # stop after this many optimizer steps (0: no limit)
time_budget = None  # seconds of training; None: 240 on CPU (keeps `make run` within 10 minutes), 300 on CUDA
lr = None  # peak learning rate; recipe cpu 2e-3, gpu 1e-3
eval_interval = None  # steps between validations; None: 100 on CPU, 250 on CUDA
nproc = 0  # training processes (torchrun DDP, one per GPU); 0: every visible GPU; falls back to 1 without several GPUs
run_dir = "../outputs/lab"  # the run directory 01_data_prep.ipynb wrote
'''),
    md('''
# 02 · Training

Trains a byte-level GPT (`blm_lab.gpt.BytesGPT`) on the training split that 01 described, and
measures it on the validation split in bits per byte, the unit of the entropy table and the
compressors in 01. On a CUDA machine it uses the `gpu` recipe in mixed precision; on CPU the `cpu`
recipe's model under a time budget. The best checkpoint goes to `checkpoint/best.pt` in the run directory.
'''),
    code('''
import pandas as pd

from blm_lab import notebook_helpers as nh
from blm_lab.device import describe_device, pick_device
'''),
    md('''
## Where it runs

The device that was found: GPU name and memory, or the CPU threads torch will use.
'''),
    code('''
corpus, split = nh.load_run_corpus(run_dir)
train_cfg, model_cfg = nh.train_configs(run_dir, device=device, amp=amp, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                        batch_size=batch_size, block_size=block_size, max_steps=max_steps,
                                        time_budget=time_budget, lr=lr, eval_interval=eval_interval,
                                        val_fraction=split["val_fraction"])
device_info = describe_device(pick_device(train_cfg.device))
pd.Series(device_info, dtype=object).to_frame("value")
'''),
    md('''
## The run's settings

The recipe for this device with the parameters above applied. Training stops at `max_steps` or
after `time_budget` seconds, whichever comes first; the learning rate then anneals on time.
'''),
    code('''
nh.config_frame(train_cfg, model_cfg)
'''),
    md('''
## Training

The progress bar counts optimizer steps. The curve below is redrawn after every validation: red is
the validation split's bits per byte, blue the training loss averaged since the previous point.
The gap between them is over-fitting; both falling is learning.
'''),
    code('''
curve = nh.LiveLossPlot(f"{model_cfg.n_layer} layers x {model_cfg.n_embd} wide on {device_info['device']}")
curve.display()
result = nh.run_training(train_cfg, model_cfg, corpus, callback=curve, nproc=nproc)
curve.save(nh.figure_path(run_dir, "loss_curve"));
'''),
    md('''
## Result

`best_val_bpb` is the checkpoint that was kept (the lowest validation loss); notebooks 03 and 04
use it. Compare it with the order-0 to order-3 entropies and the compressors in 01.
'''),
    code('''
summary = nh.save_train_result(run_dir, result, train_cfg, model_cfg, device_info)
nh.result_frame(summary)
'''),
    md('''
Every validation point (also in `checkpoint/metrics.jsonl`):
'''),
    code('''
pd.DataFrame(result.history)
'''),
]

ENTROPY = [
    params('''
# Parameters (papermill overrides these; `blm-lab run -p NAME VALUE`)
checkpoint = ""  # model checkpoint (.pt); empty: RUN_DIR/checkpoint/best.pt from 02_train_gpu
text = ""  # text to analyse; empty: the file below
file = ""  # file to analyse; empty (and no text): the start of the run's validation split
max_bytes = 4096  # analyse at most this many bytes
position = None  # byte whose next-byte distribution is shown; None: the most surprising byte
device = "auto"  # where the model runs: auto, cpu or cuda
run_dir = "../outputs/lab"  # the run directory of notebooks 01 and 02
'''),
    md('''
# 03 · What the model finds surprising

For every byte of a text: the **surprisal**, -log2 of the probability the model gave to the byte
that came next (the bits an ideal coder spends on it), and the **entropy** of the model's predictive
distribution (how unsure it was before seeing the byte). Their mean over a file is the model's bits per byte.
'''),
    code('''
from IPython.display import HTML

from blm_lab import notebook_helpers as nh
from blm_lab.analysis import (next_byte_table, plot_next_byte, plot_surprisal, plot_surprisal_vs_entropy,
                              surprisal_html)
from blm_lab.checkpoint import load_checkpoint
from blm_lab.device import pick_device
from blm_lab.explorer import html_window, make_explorer, save_static_views
'''),
    code('''
model, ckpt = load_checkpoint(nh.checkpoint_path(run_dir, checkpoint), device=pick_device(device))
explorer = make_explorer(model, max_bytes=max_bytes, **nh.entropy_input(run_dir, text, file, max_bytes))
if position is not None:
    explorer.position.value = position
analysis, position = explorer.analysis, explorer.current_position
print(f"{explorer.source}: {len(analysis):,} bytes, {analysis.mean_bits_per_byte:.3f} bits/byte "
      f"({model.num_params():,} parameters, {analysis.block_size} bytes of context)")
'''),
    md('''
## Surprisal as colour

Each byte on a background that is darker the more surprising it was (white = 0 bits, darkest = 8
bits or more); hover for the numbers. The outlined byte is the chosen `position`. Surprise tends to
sit at the start of words and identifiers; the rest of a word is nearly free.
'''),
    code('''
HTML(surprisal_html(analysis, start=html_window(len(analysis), position, 1200), length=1200, highlight=position))
'''),
    md('''
## Surprisal next to entropy

Around the chosen position, byte by byte; then every byte as a point. Points on the diagonal are
bytes the model was exactly as unsure about as it paid; points high above it are confident mistakes.
'''),
    code('''
analysis.to_frame().iloc[max(0, position - 8):position + 8]
'''),
    code('''
nh.show_and_save(plot_surprisal_vs_entropy(analysis), run_dir, "surprisal_vs_entropy")
'''),
    md('''
## Along the text

Per-byte surprisal (thin), its rolling mean over 64 bytes (thick) and the entropy's rolling mean
(dashed). Rising stretches are text unlike the training data; flat low ones are boilerplate.
'''),
    code('''
nh.show_and_save(plot_surprisal(analysis), run_dir, "surprisal_rolling")
'''),
    md('''
## The 256 possible next bytes at one position

The model's most probable values for the byte at `position` (orange: the byte that actually came).
'''),
    code('''
nh.show_and_save(plot_next_byte(analysis, position), run_dir, "next_byte")
'''),
    code('''
next_byte_table(analysis, position, top_k=10)
'''),
    md('''
## Explorer

All of the above, live: move the position slider to see any byte's prediction, change top-k or the
colour scale, or edit the text (or give a file) and press Analyze. Needs a running kernel (JupyterLab).
'''),
    code('''
explorer
'''),
    md('''
The same views as files, for headless runs (PNG figures and the coloured text as a standalone HTML page):
'''),
    code('''
[str(p) for p in save_static_views(explorer, nh.figure_dir(run_dir) / "explorer")]
'''),
]

COMPRESSION = [
    params('''
# Parameters (papermill overrides these; `blm-lab run -p NAME VALUE`)
checkpoint = ""  # model checkpoint (.pt); empty: RUN_DIR/checkpoint/best.pt from 02_train_gpu
files = ""  # files to compress (comma-separated); empty: the run's validation split
segments = None  # independent coder streams per file; None: automatic (at least 4 KiB each, at most 256)
max_bytes = 0  # compress only the first bytes of each input (0: all of it)
device = "auto"  # where the model runs; decompression must use the same setting
run_dir = "../outputs/lab"  # the run directory of notebooks 01 and 02
'''),
    md('''
# 04 · Compression ratios

The model as a real compressor: arithmetic coding with its predictions, decoded again and checked
byte for byte, next to the classic compressors and zstd with a dictionary trained on the training
split (prior knowledge for a classic coder). The table goes to `compression.csv` and `compression.md`.
'''),
    code('''
import pandas as pd

from blm_lab import notebook_helpers as nh
from blm_lab.baselines import compare, plot_bits_per_byte
from blm_lab.checkpoint import load_checkpoint
from blm_lab.device import pick_device
'''),
    code('''
model, ckpt = load_checkpoint(nh.checkpoint_path(run_dir, checkpoint), device=pick_device(device))
inputs = nh.compression_inputs(run_dir, files, max_bytes)
compressors = nh.compressor_registry(model, nh.training_bytes(run_dir), segments)
pd.DataFrame({"bytes": {name: len(data) for name, data in inputs.items()}})
'''),
    md('''
## Every compressor on every input

`blm` is the model. Every row was decompressed and compared with the original (`verified`). Sizes
do not include what is shared ahead of time: the zstd dictionary or the model's parameters.
'''),
    code('''
table = compare(inputs, compressors, progress=False)
table
'''),
    code('''
nh.show_and_save(plot_bits_per_byte(table), run_dir, "bits_per_byte")
'''),
    md('''
## The model's code: ideal vs actual, speed, and its size

`ideal_bits_per_byte` is -log2 p summed over the bytes, what a perfect coder would spend;
`bits_per_byte` is the real file, header and coder rounding included (`overhead_percent`). Speed is
the lock-step coder's, both ways. `adjusted_bits_per_byte` charges the model's parameters
(2 bytes each) to this input, as in "Language Modeling Is Compression": small inputs cannot pay for a
model; only a corpus much larger than the model can.
'''),
    code('''
nh.neural_report(table)
'''),
    code('''
csv_path, md_path = nh.save_table(table, run_dir)
print(f"wrote {csv_path} and {md_path}")
'''),
]

NOTEBOOKS = {
    "01_data_prep.ipynb": DATA_PREP,
    "02_train_gpu.ipynb": TRAIN,
    "03_entropy_visualization.ipynb": ENTROPY,
    "04_compression_ratios.ipynb": COMPRESSION,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nbformat.validate(nb)
    return nb


def main() -> int:
    NOTEBOOK_DIR.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), NOTEBOOK_DIR / name)
        print(f"wrote {NOTEBOOK_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
