"""The mixer (paq8's two-layer ``Mixer``): K weight sets of layer 1, each chosen by a small context, and a
layer 2 that mixes their outputs, in the logistic domain with 16.16 fixed-point weights.

Predict: each selected layer-1 weight set gives d_j = clamp(sum_i w_ji x_i >> 16); layer 2 (a weight row
per bit position and neural bucket) gives p = squash(sum_j v_j d_j >> 16). Update: with err = (y << 16)
- p (the gradient of the code length), w_ji += (x_i * err_j * lr + 2**23) >> 24, where layer 1's rate lr
falls from lr1 + lr1_boost to lr1 as a weight set is updated (``rate``), and v_j likewise with lr2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .tables import (PBITS, PONE, ROUND24, WEIGHT_SHIFT, SEL_C0, SEL_C1, SEL_HITS, SEL_MATCH, SEL_NEURAL, SELECTORS, SMAX, WMAX, clamp,
                     squash)

BIAS = 256  # input 0: a constant
BUCKETS = 16  # per bit position: 16 hit counts or neural confidence buckets select a weight set / layer-2 row
LAYER2_ROWS = 8 * BUCKETS  # layer-2 weight rows: bit position x neural bucket
RATE_STEPS = 4096  # layer-1 rate table: by how often the weight set was updated (capped)


class Mixer(NamedTuple):
    x: np.ndarray  # (B, N) int64: this bit's inputs
    select_kind: np.ndarray  # (K,) int64: what selects each weight set (SEL_*)
    select_base: np.ndarray  # (K,) int64: its first row in w1
    selected: np.ndarray  # (B, K) int64: the rows of w1 this bit uses
    d1: np.ndarray  # (B, K) int64: layer-1 outputs
    w1: np.ndarray  # (rows, N) int32: layer-1 weights
    w1_updates: np.ndarray  # (rows,) int64: updates of each weight set, capped
    rate: np.ndarray  # (RATE_STEPS,) int64: layer-1 learning rate after n updates
    w2: np.ndarray  # (LAYER2_ROWS, K) int32: layer-2 weights
    w2_row: np.ndarray  # (B,) int64: the layer-2 row this bit uses
    p: np.ndarray  # (B,) int64: the mixer's 16-bit probability this bit
    lr2: int
    neural_first: int  # inputs from here on are the neural input's (N without one): the trace's share


def new_mixer(cfg, num_streams: int, initial_weights: list[int], selectors: list[str], neural_first: int) -> Mixer:
    N, B, K = len(initial_weights), num_streams, len(selectors)
    rows = sum(SELECTORS[s][1] for s in selectors)
    n = np.arange(RATE_STEPS, dtype=np.int64)
    x = np.zeros((B, N), dtype=np.int64)
    x[:, 0] = BIAS
    return Mixer(x=x, select_kind=np.array([SELECTORS[s][0] for s in selectors], dtype=np.int64),
                 select_base=np.cumsum([0] + [SELECTORS[s][1] for s in selectors])[:-1].astype(np.int64),
                 selected=np.zeros((B, K), dtype=np.int64), d1=np.zeros((B, K), dtype=np.int64),
                 w1=np.tile(np.array(initial_weights, dtype=np.int32), (rows, 1)),
                 w1_updates=np.zeros(rows, dtype=np.int64),
                 rate=(cfg.lr1 + (cfg.lr1_boost * cfg.lr1_boost_t) // (cfg.lr1_boost_t + n)).astype(np.int64),
                 w2=np.full((LAYER2_ROWS, K), PONE // K, dtype=np.int32), w2_row=np.zeros(B, dtype=np.int64),
                 p=np.zeros(B, dtype=np.int64), lr2=int(cfg.lr2), neural_first=int(neural_first))


@njit(cache=True, inline="always")
def _dot(w, x, n):
    s = 0
    for i in range(n):
        s += np.int64(w[i]) * x[i]
    return s


@njit(cache=True, inline="always")
def _train(w, x, n, e):
    """w += x * e / 2**24, rounded (e = error * learning rate), kept within +-WMAX."""
    for i in range(n):
        w[i] = min(max(w[i] + ((x[i] * e + ROUND24) >> 24), -WMAX), WMAX)


@njit(cache=True, inline="always")
def select(X, b, k, c0, c1, mstate, hits, nnb, pixels):
    """The layer-1 weight sets of stream b for bit k (``pixels``: the bitmap model's 5-pixel window)."""
    for j in range(X.select_kind.shape[0]):
        kind = X.select_kind[j]
        if kind == SEL_C0:
            v = c0
        elif kind == SEL_MATCH:
            v = mstate
        elif kind == SEL_C1:
            v = c1
        elif kind == SEL_HITS:
            v = k * BUCKETS + clamp(hits, 0, BUCKETS - 1)
        elif kind == SEL_NEURAL:
            v = k * BUCKETS + nnb
        else:  # SEL_PIXELS
            v = k * 32 + pixels
        X.selected[b, j] = X.select_base[j] + v


@njit(cache=True, inline="always")
def predict(X, T, b, k, nnb, share):
    """Stream b's mixed 16-bit probability. ``share`` (B, 2), when not empty (the trace hook), receives
    sum |w*x| over the neural inputs and over all inputs of layer 1."""
    w1, selected, d1s, w2 = X.w1, X.selected, X.d1, X.w2  # bound once: no reference counting per use
    N = X.x.shape[1]
    xb = X.x[b]
    r2 = k * BUCKETS + nnb
    X.w2_row[b] = r2
    dot2 = 0
    for j in range(selected.shape[1]):
        d1 = clamp(_dot(w1[selected[b, j]], xb, N) >> WEIGHT_SHIFT, -SMAX, SMAX)
        d1s[b, j] = d1
        dot2 += np.int64(w2[r2, j]) * d1
    if share.shape[0] > 0:
        neural_part, whole = 0, 0
        for j in range(selected.shape[1]):
            w = w1[selected[b, j]]
            for i in range(N):
                a = abs(np.int64(w[i]) * xb[i])
                whole += a
                if i >= X.neural_first:
                    neural_part += a
        share[b, 0] = neural_part
        share[b, 1] = whole
    pm = squash(T, dot2 >> WEIGHT_SHIFT)
    X.p[b] = pm
    return pm


@njit(cache=True, inline="always")
def update(X, T, b, y):
    """Learn bit y of stream b: each weight set along the gradient of the code length."""
    w1, selected, d1s, w2, updates, rate = X.w1, X.selected, X.d1, X.w2, X.w1_updates, X.rate
    N = X.x.shape[1]
    xb = X.x[b]
    r2 = X.w2_row[b]
    lr2 = X.lr2
    err2 = (y << PBITS) - X.p[b]
    for j in range(selected.shape[1]):
        d1 = d1s[b, j]
        err = (y << PBITS) - squash(T, d1)
        row = selected[b, j]
        n = updates[row]
        if n < rate.shape[0] - 1:
            updates[row] = n + 1
        _train(w1[row], xb, N, err * rate[n])
        w2[r2, j] += (d1 * err2 * lr2 + ROUND24) >> 24
