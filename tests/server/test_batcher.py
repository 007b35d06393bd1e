"""The batcher on its own (no gRPC), decoding with the real exported decoders on CPU."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from export.repository import load_version
from server.core.batcher import Batcher
from server.core.batches import SeededRows
from server.core.errors import DeadlineExceeded, QueueFull
from server.core.runner import DecoderRunner, Device
from server.core.samplers import draw, seed_rows
from server.core.settings import BatcherConfig, ExecutionConfig


class Recorder:
    """A BatchObserver that keeps what it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.depth = 0

    def queue_depth_changed(self, delta_samples: int) -> None:
        self.depth += delta_samples

    def queue_waited(self, seconds: list[float]) -> None:
        pass

    def batch_decoded(self, samples: int, seconds: float) -> None:
        self.batches.append(samples)


@pytest.fixture(scope="module")
def vae(model_repository):
    version = load_version(model_repository, "digits-vae")
    device = Device("cpu", ExecutionConfig(device="cpu", intra_op_threads=1))
    m = version.manifest
    decoders = {dtype: DecoderRunner(version.graph_path(key), device, m.latent_dim, tuple(m.image_shape),
                                     np.dtype(dtype), 64)
                for dtype, key in (("uint8", "decoder_uint8"), ("float32", "decoder"))}
    return version, decoders


def _latents(version, seed: int, n: int):
    return lambda: draw(None, "standard_normal", *seed_rows(seed, 0, n), version.manifest.latent_dim)


def _run(decoders, body, draw_function=None, **config):
    async def main():
        recorder = Recorder()
        batcher = Batcher(decoders, BatcherConfig(**{"max_batch_size": 64, **config}), recorder,
                          draw=draw_function)
        batcher.start()
        try:
            return await body(batcher), recorder
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_same_seed_same_samples_when_batched(vae):
    version, decoders = vae

    async def alone(batcher):
        return (await batcher.submit(20, _latents(version, 9, 20), "float32")).images

    async def crowded(batcher):
        futures = [batcher.submit(n, _latents(version, seed, n), "float32")
                   for seed, n in ((1, 7), (2, 30), (9, 20), (3, 50), (4, 1))]
        return (await asyncio.gather(*futures))[2].images

    reference, _ = _run(decoders, alone, max_queue_delay_us=0)
    batched, recorder = _run(decoders, crowded, max_queue_delay_us=200_000)
    assert batched.tobytes() == reference.tobytes()
    assert len(recorder.batches) < 5  # they really were merged


def test_seeded_requests_of_one_batch_are_drawn_in_one_call_per_sampler(vae):
    """SeededRows: the batcher draws every seeded request of a batch at once, per sampler key, and each
    request still gets exactly its own rows."""
    version, decoders = vae
    d = version.manifest.latent_dim
    calls = []

    def draw_rows(key, seeds, rows):
        calls.append((key, len(seeds)))
        return draw(None, "standard_normal", seeds, rows, d, key[1])

    requests = [(1, 7, 1.0), (2, 30, 0.5), (9, 20, 1.0), (4, 1, 0.5)]  # (seed, n, temperature)

    async def crowded(batcher):
        futures = [batcher.submit(n, SeededRows(("standard_normal", t), *seed_rows(seed, 0, n)), "float32")
                   for seed, n, t in requests]
        return [r.latents for r in await asyncio.gather(*futures)]

    latents, recorder = _run(decoders, crowded, draw_rows, max_queue_delay_us=200_000)
    assert recorder.batches == [58]
    assert sorted(calls) == [(("standard_normal", 0.5), 31), (("standard_normal", 1.0), 27)]
    for (seed, n, t), got in zip(requests, latents):
        np.testing.assert_array_equal(got, draw(None, "standard_normal", *seed_rows(seed, 0, n), d, t))


def test_request_larger_than_a_batch_is_split_and_reassembled(vae):
    version, decoders = vae

    async def body(batcher):
        return (await batcher.submit(150, _latents(version, 5, 150), "uint8")).images

    images, recorder = _run(decoders, body)
    whole = np.empty((150, 1, 28, 28), np.uint8)
    decoders["uint8"].decode_into(_latents(version, 5, 150)(), whole)
    assert recorder.batches == [64, 64, 22]
    assert images.tobytes() == whole.tobytes()


def test_cancelled_and_expired_requests_are_dropped_before_decoding(vae):
    version, decoders = vae

    async def body(batcher):
        cancelled = batcher.submit(10, _latents(version, 1, 10), "uint8")
        expired = batcher.submit(11, _latents(version, 2, 11), "uint8", deadline=time.monotonic() + 0.01)
        kept = batcher.submit(5, _latents(version, 3, 5), "uint8")
        cancelled.cancel()
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await expired
        return (await kept).images.shape[0]

    kept, recorder = _run(decoders, body, max_queue_delay_us=200_000)
    assert kept == 5 and recorder.batches == [5] and recorder.depth == 0


def test_full_queue_raises_queue_full_at_once_and_forgets_nothing(vae):
    version, decoders = vae

    async def body(batcher):
        first = batcher.submit(60, _latents(version, 1, 60), "uint8")
        with pytest.raises(QueueFull):
            batcher.submit(10, _latents(version, 2, 10), "uint8")
        return (await first).images.shape[0]

    n, recorder = _run(decoders, body, max_queue_samples=64, max_queue_delay_us=100_000)
    assert n == 60 and recorder.depth == 0



def test_request_split_across_merged_batches_gets_the_bytes_it_would_get_alone(vae):
    version, decoders = vae
    sizes = {1: 20, 2: 20, 3: 50, 4: 30}  # batches of 64: [20 + 20 + 24 of 50] and [26 of 50 + 30]

    async def body(batcher):
        futures = [batcher.submit(n, _latents(version, seed, n), "uint8") for seed, n in sizes.items()]
        return [d.images for d in await asyncio.gather(*futures)]

    images, recorder = _run(decoders, body, max_queue_delay_us=200_000)
    assert recorder.batches == [64, 56]
    for (seed, n), got in zip(sizes.items(), images):
        alone = np.empty((n, 1, 28, 28), np.uint8)
        decoders["uint8"].decode_into(_latents(version, seed, n)(), alone)
        assert got.tobytes() == alone.tobytes()
    # Whole requests in a merged batch are answered with their rows of its output, not copies; the split one
    # has its own array.
    assert images[0].base is not None and images[0].base is images[1].base
    assert images[2].base is None


def test_adaptive_delay_never_holds_a_lone_call(vae):
    """One call in flight at a time: with an adaptive cap of 10 minutes, a call that waited for company would
    never come back within the minute each is given; and each batch holds exactly its one request."""
    version, decoders = vae

    async def one_at_a_time(batcher):
        for seed in range(4):
            await asyncio.wait_for(batcher.submit(1, _latents(version, seed, 1), "uint8"), 60)

    _, recorder = _run(decoders, one_at_a_time, max_queue_delay_us=0, adaptive_queue_delay_us=600_000_000)
    assert recorder.batches == [1, 1, 1, 1]


def _closed_loop(version, callers: int, calls: int):
    async def body(batcher):
        async def caller(index):
            for call in range(calls):
                await batcher.submit(1, _latents(version, index * 1000 + call, 1), "uint8")
                await asyncio.sleep(0.002 * index)  # the callers come back one after another, not at once
        await asyncio.gather(*(caller(i) for i in range(callers)))
    return body


def test_adaptive_delay_merges_callers_that_keep_coming_back(vae):
    """Eight callers in a closed loop, coming back 0 … 14 ms after their answer: once a batch merged several of
    them, the next one waits (here up to 2 s) for the callers it answered, so batches hold all eight instead
    of whichever caller happened to be back first (without the delay: batches of one or two)."""
    version, decoders = vae
    _, adaptive = _run(decoders, _closed_loop(version, 8, 12), max_queue_delay_us=0, adaptive_queue_delay_us=2_000_000)
    assert sum(adaptive.batches) == 96
    assert len(adaptive.batches) <= 24  # 96 calls in batches of 4 or more on average; all eight once merged
    assert max(adaptive.batches) == 8


def test_small_batches_run_on_the_single_threaded_session_with_the_same_bytes(model_repository):
    version = load_version(model_repository, "digits-vae")
    m = version.manifest
    device = Device("cpu", ExecutionConfig(device="cpu", intra_op_threads=2, small_batch_samples=16))
    runner = DecoderRunner(version.graph_path("decoder"), device, m.latent_dim, tuple(m.image_shape),
                           np.dtype("float32"), 64)
    assert runner.small_graph is not None
    assert runner.session_for(16) is runner.small_graph and runner.session_for(17) is runner.graph
    assert runner.small_graph.session.get_session_options().intra_op_num_threads == 1
    latents = _latents(version, 3, 40)()
    big = np.empty((40, *m.image_shape), np.float32)
    runner.decode_into(latents, big)  # 40 rows: the default session
    for first in range(0, 40, 10):  # 10 rows at a time: the single-threaded one
        small = np.empty((10, *m.image_shape), np.float32)
        runner.decode_into(np.ascontiguousarray(latents[first:first + 10]), small)
        assert small.tobytes() == big[first:first + 10].tobytes()
    one = Device("cpu", ExecutionConfig(device="cpu", intra_op_threads=1, small_batch_samples=16))
    off = Device("cpu", ExecutionConfig(device="cpu", intra_op_threads=2, small_batch_samples=0))
    for device in (one, off):  # already single-threaded, or switched off: one session
        runner = DecoderRunner(version.graph_path("decoder"), device, m.latent_dim, tuple(m.image_shape),
                               np.dtype("float32"), 64)
        assert runner.small_graph is None and runner.session_for(1) is runner.graph


def test_large_batches_run_on_a_spinning_pool_with_the_same_bytes(model_repository):
    version = load_version(model_repository, "digits-vae")
    m = version.manifest
    device = Device("cpu", ExecutionConfig(device="cpu", intra_op_threads=2, small_batch_samples=16,
                                           spin_batch_samples=48))
    runner = DecoderRunner(version.graph_path("decoder"), device, m.latent_dim, tuple(m.image_shape),
                           np.dtype("float32"), 128)

    def spins(graph) -> str:
        try:
            return graph.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default, which spins
            return "1"

    assert runner.session_for(16) is runner.small_graph and runner.session_for(47) is runner.graph
    assert runner.session_for(48) is runner.spin_graph and runner.session_for(128) is runner.spin_graph
    assert runner.session_for(128, requests=2) is runner.graph  # merged: calls are queuing, no spinning
    assert runner.session_for(16, requests=2) is runner.small_graph
    assert spins(runner.graph) == "0" and spins(runner.spin_graph) != "0"
    latents = _latents(version, 5, 96)()
    spun, pooled = np.empty((96, *m.image_shape), np.float32), np.empty((96, *m.image_shape), np.float32)
    runner.decode_into(latents, spun)
    runner.decode_into(latents, pooled, requests=3)
    assert pooled.tobytes() == spun.tobytes()
    # Spinning switched off, or larger than any batch: no spinning session.
    for spin in (0, 129):
        runner = DecoderRunner(version.graph_path("decoder"), Device("cpu", ExecutionConfig(
            device="cpu", intra_op_threads=2, small_batch_samples=16, spin_batch_samples=spin)),
            m.latent_dim, tuple(m.image_shape), np.dtype("float32"), 128)
        assert runner.spin_graph is None and runner.session_for(128) is runner.graph


class _Threads:
    """A decoder that decodes with the real one and notes which thread each batch ran on."""

    def __init__(self, decoder) -> None:
        self.decoder, self.threads = decoder, []
        self.latent_dim, self.image_shape, self.dtype = decoder.latent_dim, decoder.image_shape, decoder.dtype

    def decode_into(self, latents, out, requests=1):
        self.threads.append(threading.get_ident())
        self.decoder.decode_into(latents, out, requests)


def test_lone_small_calls_are_decoded_on_the_event_loop_and_merged_ones_by_the_thread(vae):
    version, decoders = vae
    loop_thread = threading.get_ident()

    def run(body, **config):
        spied = {k: _Threads(d) for k, d in decoders.items()}
        result, recorder = _run(spied, body, **config)
        return result, recorder, spied["uint8"].threads

    async def calls(batcher):
        lone = (await batcher.submit(3, _latents(version, 5, 3), "uint8")).images
        together = await asyncio.gather(*(batcher.submit(1, _latents(version, s, 1), "uint8") for s in (6, 7, 8)))
        after = (await batcher.submit(3, _latents(version, 5, 3), "uint8")).images  # the previous batch merged 3
        large = await batcher.submit(40, _latents(version, 9, 40), "uint8")  # above the 32 of a lone small call
        return lone, after, together, large

    (lone, after, _, _), recorder, threads = run(calls, inline_batch_samples=32)
    # Calls that arrive in the same turn of the event loop still merge, on the loop.
    assert recorder.batches == [3, 3, 3, 40]
    assert threads[:2] == [loop_thread, loop_thread]
    assert threads[2] != loop_thread and threads[3] != loop_thread
    assert lone.tobytes() == after.tobytes()  # the same bytes on the loop and on the thread
    # Switched off, or with a fixed delay: every batch on the thread.
    for config in ({"inline_batch_samples": 0}, {"inline_batch_samples": 32, "max_queue_delay_us": 1000}):
        (off, _, _, _), _, threads = run(calls, **config)
        assert loop_thread not in threads and off.tobytes() == lone.tobytes()
