"""The client library's one model default and one vocabulary of sampler and dtype names."""

from __future__ import annotations

import pytest

from client import AegenClient, ModelSummary, NoModelsError, default_model_name
from client.client import dtype_number, sampler_number
from client.loadtest import LoadTestConfig, LoadTestError
from protos.aegen.v1 import generator_pb2 as pb


def _model(name: str, kind: str) -> ModelSummary:
    return ModelSummary(name, (1,), 1, kind, 8)


def test_default_model_is_the_first_vae_listed_else_the_first_model() -> None:
    assert default_model_name([_model("digits-ae", "ae"), _model("a-vae", "vae"), _model("b-vae", "vae")]) == "a-vae"
    assert default_model_name([_model("digits-ae", "ae"), _model("other-ae", "ae")]) == "digits-ae"


def test_no_models_is_a_clear_error() -> None:
    with pytest.raises(NoModelsError, match="no models loaded"):
        default_model_name([])


def test_both_sampler_spellings_name_the_same_enum_and_the_underscore_one_is_kept() -> None:
    assert sampler_number("standard-normal") == sampler_number("standard_normal") == pb.SAMPLER_STANDARD_NORMAL
    assert dtype_number("float32") == pb.DTYPE_FLOAT32
    assert LoadTestConfig(sampler="standard-normal").sampler == "standard_normal"
    with pytest.raises(ValueError, match="unknown sampler 'uniform'; one of standard_normal, gaussian, mixture"):
        sampler_number("uniform")
    with pytest.raises(LoadTestError, match="--sampler must be one of"):
        LoadTestConfig(sampler="uniform")


def test_default_model_asks_the_server(aegen_server) -> None:
    with AegenClient(aegen_server.target, timeout=30) as client:
        assert client.default_model() == "digits-vae"  # it also serves digits-ae
        samples = client.generate("digits-vae", 4, seed=1, sampler="standard-normal")
    assert samples.sampler == "standard_normal"
