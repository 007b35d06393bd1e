"""Philox4x32-10, vectorised in numpy: random numbers addressed by (seed, row), no generator per row.

Philox is a counter-based generator (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC 2011; the Random123 library): output block = bijection_key(counter), ten rounds of

    (c0, c1, c2, c3) → (hi(M1·c2) ^ c1 ^ k0,  lo(M1·c2),  hi(M0·c0) ^ c3 ^ k1,  lo(M0·c0))

with the key bumped by the Weyl constants (W0, W1) between rounds. Any block can be computed on its own,
so the latents of 8,192 rows with 8,192 different seeds are a few array operations, where seeding one numpy
generator per row costs ~37 µs each. The known-answer vectors of Random123 are checked in the tests.

Here the 64-bit key is the request's seed and the 128-bit counter is (row: 64 bits, block: 32 bits, 0);
each block's four words are four 32-bit uniforms.
"""

from __future__ import annotations

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
ROUNDS = 10
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32(counter: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
               key: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One Philox4x32-10 block per element: four arrays of 32-bit words (as uint64, broadcastable) in, four out."""
    shape = np.broadcast_shapes(*(np.shape(w) for w in (*counter, *key)))
    c0, c1, c2, c3 = (np.array(np.broadcast_to(np.asarray(w, np.uint64), shape)) for w in counter)
    k0, k1 = (np.asarray(w, np.uint64) for w in key)
    p0, p1, spare = np.empty(shape, np.uint64), np.empty(shape, np.uint64), np.empty(shape, np.uint64)
    for i in range(ROUNDS):
        if i:
            k0, k1 = (k0 + W0) & _LOW, (k1 + W1) & _LOW
        np.multiply(c0, M0, out=p0)  # 32 × 32 → 64 bits: exact in uint64
        np.multiply(c2, M1, out=p1)
        new0 = spare  # hi(M1·c2) ^ c1 ^ k0
        np.right_shift(p1, _32, out=new0)
        new0 ^= c1
        new0 ^= k0
        new2 = c1  # hi(M0·c0) ^ c3 ^ k1 (c1 is read above, free now)
        np.right_shift(p0, _32, out=new2)
        new2 ^= c3
        new2 ^= k1
        new1 = np.bitwise_and(p1, _LOW, out=c3)  # lo(M1·c2)
        new3 = np.bitwise_and(p0, _LOW, out=c0)  # lo(M0·c0)
        spare = c2
        c0, c1, c2, c3 = new0, new1, new2, new3
    return c0, c1, c2, c3


def _block_words_scalar(seed: int, row: int, block: int) -> tuple[int, int, int, int]:
    """The same Philox4x32-10 block in plain Python integers (exact): cheaper than numpy for a few blocks."""
    m0, m1, w0, w1, low = int(M0), int(M1), int(W0), int(W1), int(_LOW)
    c0, c1, c2, c3 = row & low, row >> 32, block, 0
    k0, k1 = seed & low, seed >> 32
    for i in range(ROUNDS):
        if i:
            k0, k1 = (k0 + w0) & low, (k1 + w1) & low
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & low, (p0 >> 32) ^ c3 ^ k1, p0 & low
    return c0, c1, c2, c3


_SCALAR_BLOCKS = 32  # up to this many blocks in a call, Python integers beat numpy's per-call overhead


def uniforms(seeds: np.ndarray, rows: np.ndarray, blocks: int, first_block: int = 0) -> np.ndarray:
    """(n, 4·blocks) float64 uniforms in (0, 1), 32 bits each, from blocks first_block.. of each row: row i's
    from key seeds[i], counter rows[i]."""
    seeds = np.asarray(seeds, np.uint64).reshape(-1, 1)
    rows = np.asarray(rows, np.uint64).reshape(-1, 1)
    if seeds.shape[0] * blocks <= _SCALAR_BLOCKS:
        words = np.array([[_block_words_scalar(int(seed), int(row), first_block + b) for b in range(blocks)]
                          for seed, row in zip(seeds[:, 0], rows[:, 0])], np.float64).reshape(-1, blocks, 4)
        out = words
    else:
        block = np.arange(first_block, first_block + blocks, dtype=np.uint64).reshape(1, -1)
        words = philox4x32((rows & _LOW, rows >> _32, block, np.zeros((1, 1), np.uint64)),
                           (seeds & _LOW, seeds >> _32))
        out = np.stack(words, axis=-1).astype(np.float64)  # (n, blocks, 4)
    out += 0.5
    out *= 2.0**-32  # (w + ½) / 2³²: never 0 or 1
    return out.reshape(seeds.shape[0], 4 * blocks)


def normals(seeds: np.ndarray, rows: np.ndarray, d: int, first_block: int = 1) -> np.ndarray:
    """(n, d) float64 standard normals per (seed, row), by Box–Muller over blocks first_block.. of the row."""
    blocks = (d + 3) // 4
    u = uniforms(seeds, rows, blocks, first_block)
    radius = np.sqrt(-2.0 * np.log(u[:, 0::2]))
    angle = 2.0 * np.pi * u[:, 1::2]
    z = np.empty(u.shape)
    z[:, 0::2] = radius * np.cos(angle)
    z[:, 1::2] = radius * np.sin(angle)
    return z[:, :d]
