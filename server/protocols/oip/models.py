"""What aegen's models look like through the Open Inference Protocol, for both of its transports.

Each served aegen model appears as three OIP models (docs/oip.md):

    <name>            the generator: SEED (UINT64, [n, 1]; row i is drawn from SEED[i]) and an optional
                      TEMPERATURE (FP32, one value) → IMAGES (UINT8 [n, 1, 28, 28]), IMAGES_FP32, LATENTS;
                      request parameter `sampler` (standard_normal, gaussian, mixture, …)
    <name>.decoder    LATENTS (FP32 [n, latent_dim]) → IMAGES, IMAGES_FP32
    <name>.encoder    IMAGES (FP32 in [0, 1], or UINT8) → LATENTS (a VAE's mean), LOG_VARIANCE (VAE only)

A request that names no outputs gets IMAGES alone from the generator and the decoder (the product is the
image; the float32 images cost a second decode and the latents more bytes, so they come when asked) and
every output from the encoder. A real model whose name is `<name>.decoder` wins over the derived one.

Model metadata and configuration are built as the protocol's own messages (protos/inference), which the
HTTP side sends as their JSON form, as Triton does. Everything here is transport-free: the gRPC servicer
and the HTTP endpoints only decode, call `OipModels`, and encode.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protos.aegen.v1.names import canonical
from protos.inference import grpc_service_pb2 as pb
from protos.inference import model_config_pb2 as mc
from server.core.dataplane import DEFAULT_SAMPLER, DataPlane, PackedImages
from server.core.errors import InvalidRequest, ModelNotFound
from server.core.models import ModelInfo
from server.core.registry import VersionState
from server.core.stats import VersionStats
from server.protocols.oip.tensors import datatype_of

GENERATOR, DECODER, ENCODER = "generator", "decoder", "encoder"
ROLE_SUFFIX = {DECODER: ".decoder", ENCODER: ".encoder"}
PLATFORM = "aegen"
SERVER_NAME = "aegen"
# The protocol extensions that work end to end (ServerMetadata lists them; perf_analyzer reads "statistics").
EXTENSIONS = ("model_configuration", "binary_tensor_data", "parameters", "statistics")
BACKEND = "onnxruntime"

SEED, TEMPERATURE, IMAGES, IMAGES_FP32, LATENTS, LOG_VARIANCE = (
    "SEED", "TEMPERATURE", "IMAGES", "IMAGES_FP32", "LATENTS", "LOG_VARIANCE")
DEFAULT_OUTPUTS = {GENERATOR: (IMAGES,), DECODER: (IMAGES,), ENCODER: None}  # None: every output
IMAGE_OUTPUTS = ((IMAGES, "uint8"), (IMAGES_FP32, "float32"))  # output → the decoder dtype that makes it
_MAX_VIEWS = 1024


@dataclass(frozen=True)
class Tensor:
    """An input or output of an OIP model: name, datatype and shape without the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class View:
    """One OIP model: an aegen model version in one role."""

    name: str
    role: str
    model: ModelInfo

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return self._specs[0]

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        return self._specs[1]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._specs[2]

    @property
    def input_specs(self) -> dict[str, Tensor]:
        """The inputs by name."""
        return self._specs[3]

    @functools.cached_property  # (a frozen dataclass still has its __dict__, where this caches)
    def _specs(self) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[str, ...], dict[str, Tensor]]:
        return _tensors(self.role, self.model.kind, tuple(self.model.manifest.image_shape), self.model.latent_dim)


@functools.lru_cache(maxsize=256)
def _tensors(role: str, kind: str, image: tuple[int, ...], latent_dim: int
             ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[str, ...], dict[str, Tensor]]:
    """A view's inputs, outputs, output names and inputs by name; built once per kind of model, not per
    request. (The dict is shared: read it, never change it.)"""
    d = (latent_dim,)
    if role == GENERATOR:
        inputs = Tensor(SEED, "UINT64", (1,)), Tensor(TEMPERATURE, "FP32", (1,), optional=True)
    elif role == DECODER:
        inputs = (Tensor(LATENTS, "FP32", d),)
    else:
        inputs = (Tensor(IMAGES, "FP32", image),)
    if role == ENCODER:
        outputs = (Tensor(LATENTS, "FP32", d),)
        if kind == "vae":
            outputs = (*outputs, Tensor(LOG_VARIANCE, "FP32", d))
    else:
        outputs = (Tensor(IMAGES, "UINT8", image), Tensor(IMAGES_FP32, "FP32", image))
        if role == GENERATOR:
            outputs = (*outputs, Tensor(LATENTS, "FP32", d))
    return inputs, outputs, tuple(t.name for t in outputs), {t.name: t for t in inputs}


@dataclass(frozen=True)
class InferResult:
    view: View
    outputs: list[tuple[str, np.ndarray]]  # in the order asked for


class OipModels:
    """The data plane as the Open Inference Protocol sees it."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        # (OIP name, role) → its View of the version last resolved: reused while that version is the one
        # resolved, so that its tensors are looked up once, not on every request. Only loaded models get in.
        self._views: dict[tuple[str, str], View] = {}

    # ------------------------------------------------------------------------------------ naming

    def _split(self, name: str) -> tuple[str, str]:
        """OIP model name → (aegen model name, role); a real model of that name wins over a derived one."""
        if self.plane.model_label(name):
            return name, GENERATOR
        for role, suffix in ROLE_SUFFIX.items():
            base = name.removesuffix(suffix)
            if base != name and self.plane.model_label(base):
                return base, role
        return name, GENERATOR  # unknown: resolving it raises ModelNotFound with the loaded names

    def view(self, name: str, version: str = "") -> View:
        base, role = self._split(name)
        info = self.plane.model(base, parse_version(version))
        view = self._views.get((name, role))
        if view is None or view.model is not info:
            view = View(name, role, info)
            if len(self._views) >= _MAX_VIEWS:  # versions come and go: start again rather than grow
                self._views.clear()
            self._views[name, role] = view
        return view

    def label(self, name: str) -> str:
        """The aegen model behind an OIP name if it is loaded, else "" (a bounded metrics label)."""
        return self.plane.model_label(self._split(name)[0])

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.view(name, version)
        except (ModelNotFound, InvalidRequest):
            return False
        return True

    # ------------------------------------------------------------------------------ descriptions

    def metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        view = self.view(name, version)
        base = self._split(name)[0]
        return pb.ModelMetadataResponse(
            name=view.name, versions=[str(m.version) for m in self.plane.versions(base)], platform=PLATFORM,
            inputs=[_metadata(t) for t in view.inputs], outputs=[_metadata(t) for t in view.outputs])

    def config(self, name: str, version: str = "") -> mc.ModelConfig:
        view = self.view(name, version)
        settings = self.plane.settings
        config = mc.ModelConfig(
            name=view.name, platform=PLATFORM, backend=BACKEND,
            max_batch_size=settings.max_samples_per_request,
            input=[mc.ModelInput(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.datatype}"), dims=t.dims,
                                 optional=t.optional) for t in view.inputs],
            output=[mc.ModelOutput(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.datatype}"), dims=t.dims)
                    for t in view.outputs],
            dynamic_batching=mc.ModelDynamicBatching(
                preferred_batch_size=[settings.max_batch_size],
                max_queue_delay_microseconds=settings.max_queue_delay_us),
            version_policy=_version_policy(settings.policy))
        config.parameters["sampler"].string_value = DEFAULT_SAMPLER
        config.parameters["samplers"].string_value = ",".join(view.model.samplers)
        manifest = view.model.manifest  # what the model was trained on (the latent explorer reads these)
        config.parameters["dataset"].string_value = manifest.dataset
        if manifest.classes is not None:
            config.parameters["classes"].string_value = ",".join(map(str, manifest.classes))
        return config

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=_package_version(), extensions=EXTENSIONS)

    def index_response(self, ready_only: bool = False) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=s.name, version=str(s.version), state=s.state,
                                                  reason=s.reason)
            for s in self.index() if s.state == "READY" or not ready_only])

    def statistics_response(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        """Triton's ModelStatistics: one entry per served version (every model's when `name` is empty)."""
        pairs = self.statistics(name, version) if name else self.all_statistics()
        return pb.ModelStatisticsResponse(model_stats=[_statistics(view, stats) for view, stats in pairs])

    def index(self) -> list[VersionState]:
        """Every (OIP model, version) the repository index lists, with its state and reason."""
        rows = []
        for state in self.plane.states():
            rows.append(state)
            if state.state == "READY":
                rows += [VersionState(state.name + suffix, state.version, state.state, state.reason)
                         for suffix in ROLE_SUFFIX.values() if not self.plane.model_label(state.name + suffix)]
        return sorted(rows, key=lambda s: (s.name, s.version))

    def statistics(self, name: str, version: str = "") -> list[tuple[View, VersionStats]]:
        """Per served version (all of them when `version` is empty); a derived model shares its model's."""
        base, role = self._split(name)
        return [(View(name, role, info), stats)
                for info, stats in self.plane.statistics(base, parse_version(version))]

    def all_statistics(self) -> list[tuple[View, VersionStats]]:
        return [pair for model in self.plane.models() for pair in self.statistics(model.name)]

    # ----------------------------------------------------------------------------------- inference

    async def infer(self, name: str, version: str, inputs: Mapping[str, np.ndarray],
                    parameters: Mapping[str, object], outputs: Sequence[str] | None,
                    deadline: float | None) -> InferResult:
        view = self.view(name, version)
        wanted = _wanted(view, outputs)
        _check_inputs(view, inputs)
        number = view.model.version
        base = view.model.name
        results: dict[str, np.ndarray] = {}
        if view.role == ENCODER:
            images = np.ascontiguousarray(inputs[IMAGES])
            packed = PackedImages(images.shape, "uint8" if images.dtype == np.uint8 else "float32",
                                  memoryview(images).cast("B"))
            encoded = await self.plane.encode(base, number, packed)
            results[LATENTS] = encoded.latents
            if encoded.log_variance is not None:
                results[LOG_VARIANCE] = encoded.log_variance
        elif view.role == DECODER:
            latents = inputs[LATENTS]
            asked = [(o, d) for o, d in IMAGE_OUTPUTS if o in wanted]
            decoded = await _together([self.plane.decode(base, number, latents, dtype=d, deadline=deadline)
                                       for _, d in asked])
            results.update((o, r.images) for (o, _), r in zip(asked, decoded))
        else:
            seeds = inputs[SEED].reshape(-1)
            if inputs[SEED].ndim != 2 or inputs[SEED].shape[1] != 1:
                raise InvalidRequest(f"input SEED must have shape [n, 1], got {list(inputs[SEED].shape)}")
            sampler = _sampler(parameters)
            temperature = _temperature(inputs.get(TEMPERATURE))
            asked = [(o, d) for o, d in IMAGE_OUTPUTS if o in wanted]
            if not asked:  # LATENTS alone: drawn, nothing decoded
                results[LATENTS] = await self.plane.latents_per_seed(base, number, seeds, sampler=sampler,
                                                                     temperature=temperature)
            # Both image outputs: two decodes (the uint8 graph's bytes are aegen.v1's), queued together.
            generated = await _together([self.plane.generate_per_seed(
                base, number, seeds, sampler=sampler, temperature=temperature, dtype=d, deadline=deadline)
                for _, d in asked])
            for (output, _), result in zip(asked, generated):
                results[output], results[LATENTS] = result.images, result.latents
        return InferResult(view, [(output, results[output]) for output in wanted])


async def _together(calls: list) -> list:
    """Await the calls concurrently; one is awaited as it is (asyncio.gather makes a task of each)."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))


def _statistics(view: View, stats: VersionStats) -> pb.ModelStatistics:
    def duration(d) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    return pb.ModelStatistics(
        name=view.name, version=str(view.model.version), last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count, execution_count=stats.execution_count,
        # Input and output handling is part of the decode here: they report the decode's count with 0 ns
        # (perf_analyzer requires the three compute counts to agree).
        inference_stats=pb.InferStatistics(
            success=duration(stats.success), fail=duration(stats.fail), queue=duration(stats.queue),
            compute_input=pb.StatisticDuration(count=stats.compute.count), compute_infer=duration(stats.compute),
            compute_output=pb.StatisticDuration(count=stats.compute.count)))


def _package_version() -> str:
    try:
        return importlib.metadata.version("aegen")
    except importlib.metadata.PackageNotFoundError:
        return "0+checkout"


def parse_version(version: str | int | None) -> int | None:
    """An OIP version string ("" = the default) as aegen's integer version."""
    if version is None or version == "":
        return None
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise ModelNotFound(f"model version {text!r} is not a positive integer version")
    return int(text)


def _wanted(view: View, outputs: Sequence[str] | None) -> list[str]:
    if outputs is None or len(outputs) == 0:
        return list(DEFAULT_OUTPUTS[view.role] or view.output_names)
    unknown = [o for o in outputs if o not in view.output_names]
    if unknown:
        raise InvalidRequest(f"model {view.name} has no output {unknown[0]!r}; outputs: {', '.join(view.output_names)}")
    if len(set(outputs)) != len(outputs):
        raise InvalidRequest("an output is requested twice")
    return list(outputs)


def _check_inputs(view: View, inputs: Mapping[str, np.ndarray]) -> None:
    declared = view.input_specs
    for name in inputs:
        if name not in declared:
            raise InvalidRequest(f"model {view.name} has no input {name!r}; inputs: {', '.join(declared)}")
    for spec in declared.values():
        array = inputs.get(spec.name)
        if array is None:
            if spec.optional:
                continue
            raise InvalidRequest(f"model {view.name} needs input {spec.name!r} ({spec.datatype} {[-1, *spec.dims]})")
        accepted = {spec.datatype, "UINT8"} if view.role == ENCODER else {spec.datatype}
        datatype = datatype_of(array.dtype)
        if datatype not in accepted:
            raise InvalidRequest(f"input {spec.name!r} must be {' or '.join(sorted(accepted))}, got {datatype}")
        if spec.name == TEMPERATURE:
            continue  # one value, checked by _temperature
        if array.ndim != 1 + len(spec.dims) or tuple(array.shape[1:]) != spec.dims:
            raise InvalidRequest(f"input {spec.name!r} must have shape {[-1, *spec.dims]}, got {list(array.shape)}")


def _sampler(parameters: Mapping[str, object]) -> str:
    value = parameters.get("sampler", DEFAULT_SAMPLER)
    if not isinstance(value, str):
        raise InvalidRequest(f"parameter 'sampler' must be a string, got {value!r}")
    return canonical(value)


def _temperature(array: np.ndarray | None) -> float:
    if array is None:
        return 1.0
    values = np.asarray(array, np.float64).reshape(-1)
    if values.size == 0 or not np.all(values == values[0]):
        raise InvalidRequest("input TEMPERATURE must hold one value (the same for every row)")
    value = float(values[0])
    if not (math.isfinite(value) and value > 0):
        raise InvalidRequest(f"TEMPERATURE must be finite and > 0, got {value}")
    return value


def _metadata(tensor: Tensor) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype=tensor.datatype,
                                                   shape=[-1, *tensor.dims])


def _version_policy(policy) -> mc.ModelVersionPolicy:
    if policy.kind == "all":
        return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=policy.versions))
    return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=policy.count))
