"""Verification inside the export: the exact bytes about to be published, run by onnxruntime (CPU), against
the PyTorch model they came from. Any failure stops the export before anything is published.

- encoder: real validation images; decoder graphs: N(0, I) seeds; at each batch size in `batch_sizes`.
- fp32 graphs: max |onnxruntime − torch| ≤ atol (1e-5).
- decoder_uint8: equal to round(torch fp32 · 255) (half to even, numpy.rint) at every pixel whose float lies
  more than `boundary_margin` (1e-4) from a rounding boundary (k + ½)/255, where the two legitimately may
  differ by one; and its Mul/Round/Clip/Cast tail alone equal to numpy bit for bit on a dense grid of [0, 1]
  that includes every exact tie.
- decoder_fp16: max |onnxruntime fp16 − torch fp32| ≤ fp16_atol (5e-3, about 1.3 grey levels of 255).
- latent_flow: N(0, I) noise through the graph and through the PyTorch flow, max |difference| ≤
  flow_atol (1e-4: latents are O(1)–O(10), and a flow of eight exp couplings compounds float32 rounding).
- big batch: decoder_uint8 once at `big_batch` (16,384 by default; a conv decoder at 65,536 needs ~5 GB)
  to exercise the dynamic axis at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_graphs import uint8_tail
from training.latent_sampler import LatentFlow
from training.models import AutoEncoder

PROVIDER = "CPUExecutionProvider"


class VerificationError(Exception):
    """An exported graph disagrees with the PyTorch model beyond tolerance."""


@dataclass(frozen=True)
class VerifyConfig:
    batch_sizes: tuple[int, ...] = (1, 7, 1024)
    atol: float = 1e-5
    fp16_atol: float = 5e-3
    flow_atol: float = 1e-4
    boundary_margin: float = 1e-4
    big_batch: int = 16384  # one full-size run (the tests do 65,536 on a small model); 0 skips it
    seed: int = 0
    threads: int = 1


def verify_graphs(graphs: dict[str, bytes], model: AutoEncoder, val_images: np.ndarray,
                  config: VerifyConfig = VerifyConfig()) -> dict:
    """Run every graph against `model`; returns the measurements for the manifest, raises on failure."""
    if len(val_images) == 0:
        raise VerificationError("no validation images to verify the encoder with")
    sessions = {key: _session(key, data, config.threads) for key, data in graphs.items()}
    rng = np.random.default_rng(config.seed)
    latent_dim = model.config.latent_dim
    report: dict = {"provider": PROVIDER, "onnxruntime": ort.__version__,
                    "batch_sizes": list(config.batch_sizes),
                    "tolerances": {"fp32_atol": config.atol, "fp16_atol": config.fp16_atol,
                                   "uint8_boundary_margin": config.boundary_margin},
                    "checker": "onnx.checker full_check + strict shape inference"}
    encoder, decoder, uint8, fp16 = {}, {}, {}, {}
    for batch in config.batch_sizes:
        images = np.resize(val_images, (batch, *val_images.shape[1:])).astype(np.float32)  # repeats if short
        encoder[str(batch)] = _check_encoder(sessions["encoder"], model, images, config.atol)
        seeds = rng.standard_normal((batch, latent_dim)).astype(np.float32)
        expected = _torch_decode(model, seeds)
        decoder[str(batch)] = _check_float(sessions["decoder"], "decoder", seeds, expected, config.atol)
        uint8[str(batch)] = _check_uint8(sessions["decoder_uint8"], seeds, expected, config.boundary_margin)
        if "decoder_fp16" in sessions:
            fp16[str(batch)] = _check_float(sessions["decoder_fp16"], "decoder_fp16", seeds, expected,
                                            config.fp16_atol)
    report.update(encoder=encoder, decoder=decoder, decoder_uint8=uint8)
    if fp16:
        report["decoder_fp16"] = fp16
    report["uint8_rounding"] = check_uint8_rounding()
    if config.big_batch:
        report["big_batch"] = _check_big_batch(sessions["decoder_uint8"], sessions["decoder"], rng,
                                               config.big_batch, latent_dim)
    return report


@torch.no_grad()
def verify_latent_flow(graph: bytes, flow: LatentFlow, config: VerifyConfig = VerifyConfig()) -> dict:
    """The latent_flow graph against the PyTorch flow at every batch size; raises VerificationError."""
    session = _session("latent_flow", graph, config.threads)
    rng = np.random.default_rng(config.seed + 1)
    diffs = {}
    for batch in config.batch_sizes:
        noise = rng.standard_normal((batch, flow.latent_dim)).astype(np.float32)
        (actual,) = _run(session, "latent_flow", noise)
        expected = flow(torch.from_numpy(noise)).numpy()
        diffs[str(batch)] = {"max_abs_diff": _max_diff("latent_flow", "latent", actual, expected, config.flow_atol)}
    return {**diffs, "tolerance": config.flow_atol}


def _session(key: str, data: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, options, providers=[PROVIDER])
    except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own untyped errors
        raise VerificationError(f"{key}: onnxruntime cannot load the graph: {str(exc).strip()[:300]}") from None


def _run(session: ort.InferenceSession, key: str, feed: np.ndarray) -> list[np.ndarray]:
    try:
        return session.run(None, {session.get_inputs()[0].name: feed})
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"{key}: onnxruntime failed at batch {len(feed)}: {str(exc).strip()[:300]}") from None


@torch.no_grad()
def _torch_decode(model: AutoEncoder, seeds: np.ndarray) -> np.ndarray:
    return model.decode(torch.from_numpy(seeds)).numpy()


@torch.no_grad()
def _check_encoder(session: ort.InferenceSession, model: AutoEncoder, images: np.ndarray, atol: float) -> dict:
    expected = model.encode(torch.from_numpy(images))
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    actual = _run(session, "encoder", images)
    diffs = {}
    for out, got, want in zip(session.get_outputs(), actual, expected):
        diffs[out.name] = _max_diff("encoder", out.name, got, want, atol)
    return {"max_abs_diff": diffs}


def _check_float(session: ort.InferenceSession, key: str, seeds: np.ndarray, expected: np.ndarray,
                 atol: float) -> dict:
    (actual,) = _run(session, key, seeds)
    return {"max_abs_diff": _max_diff(key, "images", actual, expected, atol)}


def _max_diff(key: str, name: str, actual: np.ndarray, expected: np.ndarray, atol: float) -> float:
    if actual.shape != expected.shape:
        raise VerificationError(f"{key}: output {name} has shape {actual.shape}, PyTorch gives {expected.shape}")
    if not np.all(np.isfinite(actual)):
        raise VerificationError(f"{key}: output {name} holds non-finite values")
    diff = float(np.abs(actual.astype(np.float64) - expected).max())
    if diff > atol:
        raise VerificationError(f"{key}: output {name} differs from PyTorch by {diff:.3g} "
                                f"at batch {len(actual)} (tolerance {atol:g})")
    return diff


def _check_uint8(session: ort.InferenceSession, seeds: np.ndarray, expected_float: np.ndarray,
                 margin: float) -> dict:
    (actual,) = _run(session, "decoder_uint8", seeds)
    if actual.dtype != np.uint8 or actual.shape != expected_float.shape:
        raise VerificationError(f"decoder_uint8: returns {actual.dtype} {actual.shape}, "
                                f"expected uint8 {expected_float.shape}")
    expected = np.rint(expected_float * np.float32(255)).astype(np.uint8)
    near = near_rounding_boundary(expected_float, margin)
    wrong = (actual != expected) & ~near
    if wrong.any():
        raise VerificationError(f"decoder_uint8: {int(wrong.sum())} pixels differ from round(fp32 · 255) "
                                f"at batch {len(actual)} away from any rounding boundary")
    return {"pixels": int(actual.size), "near_boundary": int(near.sum()),
            "differ_near_boundary": int((actual != expected).sum())}


def near_rounding_boundary(images: np.ndarray, margin: float) -> np.ndarray:
    """True where a float pixel x lies within `margin` of a boundary (k + ½)/255 between two uint8 values."""
    scaled = images.astype(np.float64) * 255.0
    return np.abs(scaled - np.floor(scaled) - 0.5) < margin * 255.0


def check_uint8_rounding(points: int = 1_000_001) -> dict:
    """The uint8 tail against numpy.rint(x · 255) on a grid of [0, 1] plus every tie and its neighbours."""
    grid = np.linspace(0.0, 1.0, points, dtype=np.float32)
    ties = ((np.arange(255) + 0.5) / 255).astype(np.float32)
    x = np.concatenate([grid, ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(1))])
    session = ort.InferenceSession(uint8_tail().SerializeToString(), providers=[PROVIDER])
    (actual,) = session.run(None, {"x": x})
    expected = np.rint(x * np.float32(255)).astype(np.uint8)  # numpy rounds half to even, like ONNX Round
    if not np.array_equal(actual, expected):
        raise VerificationError(f"decoder_uint8: the Round/Cast tail disagrees with numpy.rint at "
                                f"{int((actual != expected).sum())} of {len(x)} points")
    exact_ties = int(((x * np.float32(255)) % 1 == 0.5).sum())  # in float32, as the graph's Mul computes
    return {"points": len(x), "rounding": "half to even", "exact_ties_checked": exact_ties}


def _check_big_batch(uint8: ort.InferenceSession, decoder: ort.InferenceSession, rng: np.random.Generator,
                     batch: int, latent_dim: int) -> dict:
    """The full-size batch through the uint8 graph; a few rows again alone must give the same pixels."""
    seeds = rng.standard_normal((batch, latent_dim)).astype(np.float32)
    (images,) = _run(uint8, "decoder_uint8", seeds)
    if images.shape[0] != batch:
        raise VerificationError(f"decoder_uint8: batch {batch} returned {images.shape[0]} images")
    rows = [0, batch // 2, batch - 1]
    (alone,) = _run(uint8, "decoder_uint8", seeds[rows])
    (alone_float,) = _run(decoder, "decoder", seeds[rows])
    differs = alone != images[rows]
    if np.any(differs & ~near_rounding_boundary(alone_float, 1e-4)):
        raise VerificationError(f"decoder_uint8: rows of a batch of {batch} differ from the same rows alone")
    return {"batch": batch, "rows_rechecked": len(rows)}
