"""int8 decoders (`aegen-export --int8`): the float32 decoder dynamically quantised by onnxruntime.

onnxruntime.quantization.quantize_dynamic stores the weights of every MatMul/Gemm as int8 and quantises each
batch's activations to uint8 on the fly (DynamicQuantizeLinear → MatMulInteger → float rescale); the
rest of the graph (activations, convolutions it cannot quantise, the output) stays float32. Two graphs:

- decoder_int8:        latent (batch, d) float32 → images float32 in [0, 1], a drop-in for `decoder`;
- decoder_int8_uint8:  the same followed by the uint8 tail of decoder_uint8 (Mul 255, Round, Clip, Cast).

The server decodes with them when started with `--decoder-precision int8`. They are not exact: verification
measures them against the float32 graph (`verify_int8`) and refuses a quantisation off by more than
`int8_atol` anywhere; the export report states the largest difference, in [0, 1] and in grey levels.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.verify import VerificationError

INT8_GRAPHS = {"decoder_int8": "decoder", "decoder_int8_uint8": "decoder_uint8"}  # int8 graph → its fp32 twin
INT8_ATOL = 0.1  # 25 grey levels: a sanity bound (measured: ~0.01); a broken quantisation is far beyond it


def quantize_decoder(decoder: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 decoder with int8 weights for its MatMul/Gemm nodes (per-tensor, symmetric), float32 in/out."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="aegen-int8-") as directory:
            source, target = Path(directory) / "decoder.onnx", Path(directory) / "decoder_int8.onnx"
            onnx.save(decoder, source)
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            quantized = onnx.load(target)
    finally:
        root.setLevel(level)
    del quantized.metadata_props[:]  # annotate() writes the version's metadata afresh
    return quantized


def verify_int8(graphs: dict[str, bytes], latent_dim: int, seed: int = 0, samples: int = 4096,
                threads: int = 1, atol: float = INT8_ATOL) -> dict:
    """Largest |int8 − fp32| over `samples` standard-normal latents, for both int8 graphs; raises beyond atol."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {key: ort.InferenceSession(graphs[key], options, providers=["CPUExecutionProvider"])
                for key in (*INT8_GRAPHS, *INT8_GRAPHS.values())}
    latents = np.random.default_rng(seed).standard_normal((samples, latent_dim)).astype(np.float32)
    out = {key: s.run(None, {s.get_inputs()[0].name: latents})[0] for key, s in sessions.items()}
    diff = float(np.abs(out["decoder_int8"].astype(np.float64) - out["decoder"]).max())
    levels = int(np.abs(out["decoder_int8_uint8"].astype(np.int16) - out["decoder_uint8"]).max())
    if not np.isfinite(out["decoder_int8"]).all() or diff > atol:
        raise VerificationError(f"decoder_int8: differs from the float32 decoder by {diff:.3g} over {samples} "
                                f"latents (tolerance {atol:g})")
    changed = float(np.mean(out["decoder_int8_uint8"] != out["decoder_uint8"]))
    return {"samples": samples, "seed": seed, "atol": atol, "max_abs_diff": diff, "max_grey_levels": levels,
            "pixels_changed": round(changed, 6), "quantization": "dynamic, int8 weights (MatMul/Gemm), uint8 activations"}
