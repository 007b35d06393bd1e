"""Bad input gets its status with a clear message, and the next good call succeeds."""

from __future__ import annotations

import dataclasses
import shutil

import grpc
import numpy as np
import pytest

from export.repository import GRAPH_FILES, REQUIRED_GRAPHS, VersionWriter, load_version
from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc

VAE, AE = "digits-vae", "digits-ae"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
IMAGE = (1, 28, 28)


@pytest.fixture(scope="module")
def stub(aegen_server):
    channel = grpc.insecure_channel(aegen_server.target)
    yield generator_pb2_grpc.GeneratorServiceStub(channel)
    channel.close()


def _generate(**fields):
    return "GenerateSamples", pb.GenerateSamplesRequest(**{"model_name": VAE, "num_samples": 4, **fields})


def _encode(shape=(2, *IMAGE), dtype=pb.DTYPE_UINT8, size=None, model=VAE):
    size = int(np.prod(shape)) * (4 if dtype == pb.DTYPE_FLOAT32 else 1) if size is None else size
    return "Encode", pb.EncodeRequest(model_name=model, shape=shape, dtype=dtype, images=bytes(size))


BAD_REQUESTS = {
    "zero samples": (_generate(num_samples=0), INVALID, "number of samples"),
    "negative samples": (_generate(num_samples=-3), INVALID, "number of samples"),
    "above max samples per request": (_generate(num_samples=65537), INVALID, "1..65536"),
    "unknown model": (_generate(model_name="no-such-model"), NOT_FOUND, "no-such-model"),
    "unknown version": (_generate(model_version=999), NOT_FOUND, "version 999"),
    "no model name": (_generate(model_name=""), INVALID, "model_name"),
    "temperature zero": (_generate(temperature=0.0), INVALID, "temperature"),
    "temperature negative": (_generate(temperature=-1.0), INVALID, "temperature"),
    "temperature nan": (_generate(temperature=float("nan")), INVALID, "temperature"),
    "temperature inf": (_generate(temperature=float("inf")), INVALID, "temperature"),
    "sampler out of the enum": (_generate(sampler=42), INVALID, "sampler"),
    "output dtype out of the enum": (_generate(output_dtype=9), INVALID, "output_dtype"),
    "stream of zero samples": (("StreamSamples", pb.StreamSamplesRequest(model_name=VAE, num_samples=0)),
                               INVALID, "num_samples"),
    "stream above its maximum": (("StreamSamples", pb.StreamSamplesRequest(model_name=VAE, num_samples=2**40)),
                                 INVALID, "num_samples"),
    "stream of an unknown model": (("StreamSamples", pb.StreamSamplesRequest(model_name="nope", num_samples=3)),
                                   NOT_FOUND, "nope"),
    "encode too few bytes": (_encode(size=100), INVALID, "bytes"),
    "encode float32 size with uint8 dtype": (_encode(size=2 * 784 * 4), INVALID, "bytes"),
    "encode wrong image shape": (_encode(shape=(2, 1, 32, 32)), INVALID, "shape"),
    "encode flat shape": (_encode(shape=(2, 784)), INVALID, "shape"),
    "encode dtype out of the enum": (_encode(dtype=7), INVALID, "dtype"),
    "encode zero images": (_encode(shape=(0, *IMAGE)), INVALID, "number of samples"),
    "encode unknown model": (_encode(model="nope"), NOT_FOUND, "nope"),
    "reconstruct wrong size": (("Reconstruct", pb.ReconstructRequest(
        model_name=AE, shape=(1, *IMAGE), dtype=pb.DTYPE_FLOAT32, images=bytes(784))), INVALID, "bytes"),
    "model info of an unknown version": (("GetModelInfo", pb.GetModelInfoRequest(model_name=VAE, model_version=77)),
                                         NOT_FOUND, "version 77"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_its_status_and_the_next_call_succeeds(stub, case):
    (method, request), code, words = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        call = getattr(stub, method)(request, timeout=30)
        if method == "StreamSamples":
            list(call)
    assert error.value.code() == code, error.value.details()
    assert words in error.value.details()
    good = stub.GenerateSamples(pb.GenerateSamplesRequest(model_name=VAE, num_samples=2, seed=1), timeout=30)
    assert len(good.samples) == 2 * 784


def test_a_sampler_the_model_does_not_offer_is_invalid(model_repository, server_factory, tmp_path):
    # A version exported without fitted samplers offers standard_normal only.
    source = load_version(model_repository, VAE)
    repository = tmp_path / "standard-normal-only"
    with VersionWriter(repository, VAE) as writer:
        for key in REQUIRED_GRAPHS:
            shutil.copy2(source.graph_path(key), writer.path / GRAPH_FILES[key])
        writer.commit(lambda v: dataclasses.replace(source.manifest, version=v, samplers=("standard_normal",),
                                                    samplers_sha256=None))
    server = server_factory(repository=repository)
    with grpc.insecure_channel(server.target) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        for sampler in (pb.SAMPLER_GAUSSIAN, pb.SAMPLER_MIXTURE):
            with pytest.raises(grpc.RpcError) as error:
                stub.GenerateSamples(pb.GenerateSamplesRequest(model_name=VAE, num_samples=2, sampler=sampler),
                                     timeout=30)
            assert error.value.code() == INVALID and "offers samplers standard_normal" in error.value.details()
        good = stub.GenerateSamples(pb.GenerateSamplesRequest(model_name=VAE, num_samples=2), timeout=30)
        assert good.sampler == pb.SAMPLER_STANDARD_NORMAL
