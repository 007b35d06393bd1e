from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sampler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_UNSPECIFIED: _ClassVar[Sampler]
    SAMPLER_STANDARD_NORMAL: _ClassVar[Sampler]
    SAMPLER_GAUSSIAN: _ClassVar[Sampler]
    SAMPLER_MIXTURE: _ClassVar[Sampler]
    SAMPLER_FLOW: _ClassVar[Sampler]

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_UINT8: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
SAMPLER_UNSPECIFIED: Sampler
SAMPLER_STANDARD_NORMAL: Sampler
SAMPLER_GAUSSIAN: Sampler
SAMPLER_MIXTURE: Sampler
SAMPLER_FLOW: Sampler
DTYPE_UNSPECIFIED: Dtype
DTYPE_UINT8: Dtype
DTYPE_FLOAT32: Dtype

class GenerateSamplesRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "num_samples", "seed", "temperature", "sampler", "output_dtype", "return_latents")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_LATENTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    num_samples: int
    seed: int
    temperature: float
    sampler: Sampler
    output_dtype: Dtype
    return_latents: bool
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., output_dtype: _Optional[_Union[Dtype, str]] = ..., return_latents: _Optional[bool] = ...) -> None: ...

class GenerateSamplesResponse(_message.Message):
    __slots__ = ("shape", "dtype", "samples", "latents", "latents_shape", "model_name", "model_version", "sampler", "seed")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    samples: bytes
    latents: bytes
    latents_shape: _containers.RepeatedScalarFieldContainer[int]
    model_name: str
    model_version: int
    sampler: Sampler
    seed: int
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., samples: _Optional[bytes] = ..., latents: _Optional[bytes] = ..., latents_shape: _Optional[_Iterable[int]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class StreamSamplesRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "num_samples", "seed", "temperature", "sampler", "output_dtype", "return_latents", "chunk_samples")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_LATENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    num_samples: int
    seed: int
    temperature: float
    sampler: Sampler
    output_dtype: Dtype
    return_latents: bool
    chunk_samples: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., output_dtype: _Optional[_Union[Dtype, str]] = ..., return_latents: _Optional[bool] = ..., chunk_samples: _Optional[int] = ...) -> None: ...

class StreamSamplesResponse(_message.Message):
    __slots__ = ("shape", "dtype", "samples", "latents", "latents_shape", "offset", "model_name", "model_version", "sampler", "seed")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    samples: bytes
    latents: bytes
    latents_shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    model_name: str
    model_version: int
    sampler: Sampler
    seed: int
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., samples: _Optional[bytes] = ..., latents: _Optional[bytes] = ..., latents_shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "shape", "dtype", "images")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    images: bytes
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., images: _Optional[bytes] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("shape", "latents", "log_variance", "model_name", "model_version")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    LOG_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    latents: bytes
    log_variance: bytes
    model_name: str
    model_version: int
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., latents: _Optional[bytes] = ..., log_variance: _Optional[bytes] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "shape", "dtype", "images", "output_dtype")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    images: bytes
    output_dtype: Dtype
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., images: _Optional[bytes] = ..., output_dtype: _Optional[_Union[Dtype, str]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("shape", "dtype", "images", "model_name", "model_version")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    images: bytes
    model_name: str
    model_version: int
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., images: _Optional[bytes] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "default_version", "kind", "latent_dim")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    default_version: int
    kind: str
    latent_dim: int
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., default_version: _Optional[int] = ..., kind: _Optional[str] = ..., latent_dim: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "kind", "latent_dim", "samplers", "device", "execution_provider", "manifest_json")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    kind: str
    latent_dim: int
    samplers: _containers.RepeatedScalarFieldContainer[Sampler]
    device: str
    execution_provider: str
    manifest_json: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., kind: _Optional[str] = ..., latent_dim: _Optional[int] = ..., samplers: _Optional[_Iterable[_Union[Sampler, str]]] = ..., device: _Optional[str] = ..., execution_provider: _Optional[str] = ..., manifest_json: _Optional[str] = ...) -> None: ...
