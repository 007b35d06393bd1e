"""PyTorch model → the ONNX graphs of a model repository version (see export/repository.py).

- encoder:        images (batch, 1, 28, 28) → VAE: mean, log_variance (batch, d); AE: latent (batch, d)
- decoder:        latent (batch, d) → images (batch, 1, 28, 28) float32 in [0, 1]
- decoder_uint8:  the decoder followed by Mul(255) → Round → Clip(0, 255) → Cast(uint8), inside the graph.
                  ONNX Round rounds half to even, as numpy.rint does (not half away from zero as C's round);
                  sigmoid outputs make exact ties practically unreachable, and verify.py checks the tail
                  against numpy bit for bit.
- decoder_fp16:   (--fp16) fp16 weights and arithmetic between a Cast at the input and one at the output:
                  float32 in and out, so it is a drop-in for decoder.onnx; verified with its own tolerance.
- latent_flow:    noise (batch, d) ~ N(0, I) → latent (batch, d): the learned sampler (training/latent_sampler.py),
                  a RealNVP flow's inverse; its output feeds any decoder graph.

Graphs come from torch.onnx.export with the dynamo exporter (onnxscript); if that fails, the TorchScript
exporter. Either way the batch axis is the symbolic dimension "batch", the IR version is at most 10
(onnxruntime 1.31 refuses IR 14, which onnx 1.23's make_model writes by default), and metadata_props carry
kind and latent dimension.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from export.repository import (
    AE_ENCODER_OUTPUTS,
    BATCH,
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    LATENT_FLOW_INPUT,
    LATENT_FLOW_OUTPUT,
    VAE_ENCODER_OUTPUTS,
    expected_graph_io,
)
from training.checkpoint import ModelConfig
from training.latent_sampler import LatentFlow
from training.models import AutoEncoder

DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 13, 21  # 21 is the newest opset that IR version 10 can carry
MAX_IR_VERSION = 10
EXPORTERS = ("auto", "dynamo", "torchscript")

_ELEMENT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8", TensorProto.FLOAT16: "float16"}


class ExportError(Exception):
    """A graph could not be exported or does not have the shape the repository format requires."""


class EncoderGraph(nn.Module):
    """images → (mean, log_variance) for a VAE, → latent for an AE."""

    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(images)


class DecoderGraph(nn.Module):
    """latent → images in [0, 1] (decode applies the sigmoid)."""

    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent)


class HalfDecoderGraph(nn.Module):
    """The decoder in fp16 with float32 at both ends, so that callers need not know."""

    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent.half()).float()


@dataclass(frozen=True)
class ExportedGraph:
    proto: onnx.ModelProto
    exporter: str  # "dynamo" | "torchscript"


def build_graphs(model: AutoEncoder, config: ModelConfig, opset: int = DEFAULT_OPSET, fp16: bool = False,
                 metadata: dict[str, str] | None = None, exporter: str = "auto", int8: bool = False
                 ) -> dict[str, ExportedGraph]:
    """Every graph of a version, keyed as in the manifest, checked and annotated.

    exporter: "auto" (dynamo, TorchScript if dynamo fails), "dynamo" or "torchscript" (~25× faster to run,
    same graphs up to node names; the tests use it where the exporter is not what they test)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET}")
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    model = model.eval()
    encoder_outputs = VAE_ENCODER_OUTPUTS if config.kind == "vae" else AE_ENCODER_OUTPUTS
    images = torch.rand(2, *config.image_shape)
    latent = torch.randn(2, config.latent_dim)
    graphs = {
        "encoder": export_module(EncoderGraph(model), images, ENCODER_INPUT, list(encoder_outputs), opset,
                                 exporter),
        "decoder": export_module(DecoderGraph(model), latent, DECODER_INPUT, [DECODER_OUTPUT], opset, exporter),
    }
    graphs["decoder_uint8"] = ExportedGraph(uint8_decoder(graphs["decoder"].proto), graphs["decoder"].exporter)
    if fp16:
        graphs["decoder_fp16"] = export_module(HalfDecoderGraph(model), latent, DECODER_INPUT, [DECODER_OUTPUT],
                                               opset, exporter)
    if int8:  # export/quantize.py: int8 weights, float32 activations and output
        from export.quantize import quantize_decoder
        quantized = quantize_decoder(graphs["decoder"].proto)
        graphs["decoder_int8"] = ExportedGraph(quantized, graphs["decoder"].exporter)
        graphs["decoder_int8_uint8"] = ExportedGraph(uint8_decoder(quantized), graphs["decoder"].exporter)
    for key, graph in graphs.items():
        _pin_static_dims(graph.proto, key, config)
        annotate(graph.proto, key, config, metadata or {})
        check_graph(graph.proto, key, config)
    return graphs


def build_latent_flow_graph(flow: LatentFlow, config: ModelConfig, opset: int = DEFAULT_OPSET,
                            metadata: dict[str, str] | None = None, exporter: str = "auto") -> ExportedGraph:
    """The learned sampler's graph: noise (batch, d) → latent (batch, d), checked and annotated."""
    if flow.latent_dim != config.latent_dim:
        raise ExportError(f"latent_flow: the flow has {flow.latent_dim} units, the model {config.latent_dim}")
    noise = torch.randn(2, config.latent_dim)
    graph = export_module(flow.eval(), noise, LATENT_FLOW_INPUT, [LATENT_FLOW_OUTPUT], opset, exporter)
    _pin_static_dims(graph.proto, "latent_flow", config)
    annotate(graph.proto, "latent_flow", config,
             {**(metadata or {}), "sampler": "flow", "couplings": str(len(flow.couplings)), "value_range": "real"})
    check_graph(graph.proto, "latent_flow", config)
    return graph


def export_module(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                  opset: int, exporter: str = "auto") -> ExportedGraph:
    """torch.onnx.export, dynamo first; the TorchScript exporter if the dynamo path fails (for "auto")."""
    module = module.eval()
    errors = []
    for name, export in (("dynamo", _export_dynamo), ("torchscript", _export_torchscript)):
        if exporter not in ("auto", name):
            continue
        try:
            proto = export(module, example, input_name, output_names, opset)
            _name_batch_axis(proto)
            proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
            # dynamo may quietly keep opset 18 when asked for less, or emit an op newer than the opset:
            # both count as its failure, so that "auto" moves on to the TorchScript exporter.
            if default_opset(proto) != opset:
                raise ExportError(f"wrote opset {default_opset(proto)} instead of {opset}")
            onnx.checker.check_model(proto, full_check=True)
            return ExportedGraph(proto, name)
        except Exception as exc:  # noqa: BLE001 — any failure of one exporter means: try the next
            errors.append(f"{name}: {_one_line(exc)}")
    raise ExportError(f"torch.onnx.export failed: {'; '.join(errors)}")


def default_opset(proto: onnx.ModelProto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _export_dynamo(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                   opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim(BATCH, min=1)
    with _quiet():
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, opset_version=opset, input_names=[input_name],
            output_names=output_names, dynamic_shapes={input_name: {0: batch}}, verbose=False,
            optimize=True)
    return program.model_proto


def _export_torchscript(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                        opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: BATCH} for name in [input_name, *output_names]}
    with _quiet():
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=output_names, dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


class _quiet:
    """The exporters warn about torchvision ops and deprecations we cannot act on; keep the log readable."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        logging.disable(self._level)
        self._warnings.__exit__(*exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _name_batch_axis(proto: onnx.ModelProto) -> None:
    """Both exporters name the batch axis differently at times (s0, batch_size): call it "batch" everywhere."""
    for value in [*proto.graph.input, *proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = BATCH


def _pin_static_dims(proto: onnx.ModelProto, key: str, config: ModelConfig) -> None:
    """The TorchScript exporter leaves some non-batch output sizes symbolic (after a Slice, say): declare the
    contract's sizes there. Sizes the exporter did fix are left alone, so check_graph still catches a
    mismatch, and verify.py checks the shapes the graph actually returns."""
    inputs, outputs, _ = expected_graph_io(key, config.kind, config.latent_dim, config.image_shape)
    expected = {**inputs, **outputs}
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name not in expected or len(dims) != len(expected[value.name]):
            continue
        for dim, size in zip(list(dims)[1:], expected[value.name][1:]):
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = size


def uint8_decoder(decoder: onnx.ModelProto) -> onnx.ModelProto:
    """The decoder with uint8 output: images = Cast(Clip(Round(images_float · 255), 0, 255))."""
    proto = copy.deepcopy(decoder)
    graph = proto.graph
    float_name = "images_float"
    for node in graph.node:
        node.output[:] = [float_name if o == DECODER_OUTPUT else o for o in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(_scalar(255.0), "uint8_scale"),
        numpy_helper.from_array(_scalar(0.0), "uint8_low"),
        numpy_helper.from_array(_scalar(255.0), "uint8_high"),
    ])
    graph.node.extend([
        helper.make_node("Mul", [float_name, "uint8_scale"], ["images_scaled"], name="uint8_scale"),
        helper.make_node("Round", ["images_scaled"], ["images_rounded"], name="uint8_round"),  # half to even
        helper.make_node("Clip", ["images_rounded", "uint8_low", "uint8_high"], ["images_clipped"],
                         name="uint8_clip"),  # a cast of an out-of-range float is undefined
        helper.make_node("Cast", ["images_clipped"], [DECODER_OUTPUT], name="uint8_cast", to=TensorProto.UINT8),
    ])
    graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8
    del graph.value_info[:]  # stale after the rename; shape inference rebuilds what it needs
    return proto


def uint8_tail(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Just the float → uint8 tail (x: (n,) float32 → (n,) uint8), to check its rounding against numpy."""
    x = helper.make_tensor_value_info(DECODER_OUTPUT, TensorProto.FLOAT, ["n"])
    identity = helper.make_graph([helper.make_node("Identity", ["x"], [DECODER_OUTPUT])], "tail",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])], [x])
    model = helper.make_model(identity, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = MAX_IR_VERSION  # make_model would write IR 14, which onnxruntime 1.31 refuses
    return uint8_decoder(model)


def _scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def annotate(proto: onnx.ModelProto, key: str, config: ModelConfig, extra: dict[str, str]) -> None:
    """metadata_props: what the graph is, readable by any ONNX tool without the manifest."""
    props = {
        "aegen.graph": key,
        "kind": config.kind,
        "latent_dim": str(config.latent_dim),
        "image_shape": ",".join(str(d) for d in config.image_shape),
        "value_range": "0,1",
        **extra,
    }
    helper.set_model_props(proto, props)
    proto.doc_string = f"aegen {config.kind} {key} (latent_dim {config.latent_dim})"


def graph_io(proto: onnx.ModelProto) -> tuple[dict[str, list], dict[str, list], str]:
    """Inputs and outputs as name → shape (BATCH for a symbolic axis), and the output element type."""

    def shapes(values) -> dict[str, list]:
        return {v.name: [d.dim_param if d.HasField("dim_param") else d.dim_value
                         for d in v.type.tensor_type.shape.dim] for v in values}

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    elem_types = {v.type.tensor_type.elem_type for v in proto.graph.output}
    if len(elem_types) != 1 or next(iter(elem_types)) not in _ELEMENT_TYPES:
        raise ExportError(f"graph outputs have element types {sorted(elem_types)}; expected one of float/uint8")
    return shapes(inputs), shapes(proto.graph.output), _ELEMENT_TYPES[elem_types.pop()]


def check_graph(proto: onnx.ModelProto, key: str, config: ModelConfig) -> None:
    """onnx.checker with full_check (which runs strict shape inference) and the repository's I/O contract."""
    if proto.ir_version > MAX_IR_VERSION:
        raise ExportError(f"{key}: IR version {proto.ir_version} > {MAX_IR_VERSION}; onnxruntime 1.31 refuses it")
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{key}: onnx.checker refused the graph: {_one_line(exc)}") from None
    actual = graph_io(proto)
    expected = expected_graph_io(key, config.kind, config.latent_dim, config.image_shape)
    if actual != expected:
        raise ExportError(f"{key}: graph has inputs, outputs, dtype {actual}; the repository format needs {expected}")
