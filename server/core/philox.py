"""Philox4x32-10, vectorised in numpy: random numbers addressed by (seed, row), no generator per row.

Philox is a counter-based generator (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC 2011; the Random123 library): output block = bijection_key(counter), ten rounds of

    (c0, c1, c2, c3) → (hi(M1·c2) ^ c1 ^ k0,  lo(M1·c2),  hi(M0·c0) ^ c3 ^ k1,  lo(M0·c0))

with the key bumped by the Weyl constants (W0, W1) between rounds. Any block can be computed on its own,
so the latents of 8,192 rows with 8,192 different seeds are a few array operations, where seeding one numpy
generator per row costs ~37 µs each. The known-answer vectors of Random123 are checked in the tests.

Here the 64-bit key is the request's seed and the 128-bit counter is (row: 64 bits, block: 32 bits, 0);
each block's four words are four 32-bit uniforms.

Two implementations of the same rounds, checked against each other and the known-answer vectors: numpy
arrays of words (`philox4x32`), and, for the few blocks of a small batch, where numpy's ~1 µs per call is
the whole cost (5 calls a round), Python integers holding one 32-bit word per 64-bit lane
(`philox4x32_packed`): one big-integer multiply makes every lane's 32 × 32 → 64-bit product, none of which
can carry into its neighbour. 8 rows × 4 blocks: 16 µs packed, 60 µs in numpy; they meet near 400 blocks.
"""

from __future__ import annotations

import functools

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
    # The round pairs its words: (c0, c2) are multiplied, (c1, c3) xored in. Stacked as two (2, *shape) arrays,
    # a round is five array operations instead of fourteen; for the few rows of a small batch numpy's
    # per-call overhead, not the arithmetic, is what a draw costs.
    mul = np.empty((2, *shape), np.uint64)  # (c0, c2)
    mix = np.empty((2, *shape), np.uint64)  # (c1, c3)
    mul[0], mul[1] = counter[0], counter[2]
    mix[0], mix[1] = counter[1], counter[3]
    keys = _round_keys(key, len(shape))
    factors = _FACTORS.reshape(2, *(1,) * len(shape))
    product, high = np.empty_like(mul), np.empty_like(mul)
    for i in range(ROUNDS):
        np.multiply(mul, factors, out=product)  # 32 × 32 → 64 bits: exact in uint64
        np.right_shift(product[::-1], _32, out=high)  # (hi(M1·c2), hi(M0·c0))
        np.bitwise_xor(high, mix, out=mul)  # (c0, c2) ← (hi(M1·c2) ^ c1 ^ k0, hi(M0·c0) ^ c3 ^ k1)
        mul ^= keys[i]
        np.bitwise_and(product[::-1], _LOW, out=mix)  # (c1, c3) ← (lo(M1·c2), lo(M0·c0))
    return mul[0], mix[0], mul[1], mix[1]


_FACTORS = np.array([M0, M1], np.uint64)
_BUMPS = np.stack([np.arange(ROUNDS, dtype=np.uint64) * W0, np.arange(ROUNDS, dtype=np.uint64) * W1], axis=1)


def _round_keys(key: tuple[np.ndarray, np.ndarray], ndim: int) -> np.ndarray:
    """(ROUNDS, 2, *key shape): round i's (k0, k1), the key bumped i times by (W0, W1), mod 2³²."""
    k0, k1 = (np.asarray(w, np.uint64) for w in key)
    k0, k1 = np.broadcast_arrays(k0, k1)
    base = np.stack([k0, k1]).reshape(1, 2, *(1,) * (ndim - k0.ndim), *k0.shape)
    return (base + _BUMPS.reshape(ROUNDS, 2, *(1,) * ndim)) & _LOW


def philox4x32_packed(counter: tuple[int, int, int, int], key: tuple[int, int],
                      lanes: int) -> tuple[int, int, int, int]:
    """Philox4x32-10 on `lanes` blocks at once: each word an int holding one 32-bit value per 64-bit lane
    (lane i in bits 64i .. 64i+31)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    mask, w0, w1 = _lane_constants(lanes)
    m0, m1 = int(M0), int(M1)
    for i in range(ROUNDS):
        if i:
            k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
        p0, p1 = c0 * m0, c2 * m1  # each lane's product fits its 64 bits
        c0, c1, c2, c3 = ((p1 >> 32) & mask) ^ c1 ^ k0, p1 & mask, ((p0 >> 32) & mask) ^ c3 ^ k1, p0 & mask
    return c0, c1, c2, c3


@functools.lru_cache(maxsize=64)
def _lane_constants(lanes: int) -> tuple[int, int, int]:
    """(2³² - 1, W0, W1) in every one of `lanes` 64-bit lanes."""
    ones = ((1 << (64 * lanes)) - 1) // ((1 << 64) - 1)  # 1 in each lane
    return int(_LOW) * ones, int(W0) * ones, int(W1) * ones


def pack(words: np.ndarray) -> int:
    """A uint64 array as one int, element i in lane i."""
    return int.from_bytes(np.ascontiguousarray(words, "<u8").tobytes(), "little")


def unpack(words: tuple[int, ...], lanes: int) -> np.ndarray:
    """(len(words), lanes) uint64: the lanes of each packed int."""
    size = 8 * lanes
    return np.frombuffer(b"".join(w.to_bytes(size, "little") for w in words), "<u8").reshape(len(words), lanes)


_PACKED_BLOCKS = 384  # up to this many blocks in a call, packed Python integers beat numpy's per-call overhead


def uniforms(seeds: np.ndarray, rows: np.ndarray, blocks: int, first_block: int = 0) -> np.ndarray:
    """(n, 4·blocks) float64 uniforms in (0, 1), 32 bits each, from blocks first_block.. of each row: row i's
    from key seeds[i], counter rows[i]."""
    seeds = np.asarray(seeds, np.uint64).reshape(-1, 1)
    rows = np.asarray(rows, np.uint64).reshape(-1, 1)
    n = seeds.shape[0]
    if n * blocks <= _PACKED_BLOCKS:
        lanes = n * blocks  # in (row, block) order
        mask = _lane_constants(lanes)[0]
        row, seed = (pack(np.repeat(a[:, 0], blocks)) for a in (rows, seeds))
        block = pack(np.tile(np.arange(first_block, first_block + blocks, dtype=np.uint64), n))
        words = philox4x32_packed((row & mask, (row >> 32) & mask, block, 0), (seed & mask, (seed >> 32) & mask),
                                  lanes)
        out = unpack(words, lanes).reshape(4, n, blocks).transpose(1, 2, 0).astype(np.float64, order="C")  # (n, blocks, 4)
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
