"""The learned latent sampler (a RealNVP flow, exported as the version's latent_flow graph) served like the
others: offered on both APIs, seeded per (seed, row), batched, and equal to the graph applied to the seed's
standard-normal rows."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from client.client import AegenClient
from export.repository import LATENT_FLOW_INPUT, load_version
from protos.aegen.v1 import generator_pb2 as pb
from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from server.core.samplers import draw, seed_rows
from tests.plugins.repository import export_for_tests
from tests.plugins.server import start_aegen_server

FLOWED = "digits-flow"


@pytest.fixture(scope="module")
def flow_repository(tmp_path_factory: pytest.TempPathFactory, flow_checkpoint: Path) -> Path:
    repository = tmp_path_factory.mktemp("flow-repository")
    export_for_tests(flow_checkpoint, repository, FLOWED)
    return repository


@pytest.fixture(scope="module")
def flow_server(flow_repository, tmp_path_factory):
    server = start_aegen_server(flow_repository, tmp_path_factory.mktemp("flow-server"))
    yield server
    server.stop()


def test_the_flow_is_offered_and_draws_the_graph_of_the_seed_rows(flow_server, flow_repository):
    version = load_version(flow_repository, FLOWED)
    with AegenClient(flow_server.target, timeout=60) as client:
        info = client.model_info(FLOWED)
        assert pb.SAMPLER_FLOW in info.samplers and pb.SAMPLER_MIXTURE in info.samplers
        samples = client.generate(FLOWED, 12, seed=5, sampler="flow", dtype="float32", return_latents=True)
        alone = client.generate(FLOWED, 1, seed=5, sampler="flow", return_latents=True)
    session = ort.InferenceSession(str(version.graph_path("latent_flow")), providers=["CPUExecutionProvider"])
    noise = draw(None, "standard_normal", *seed_rows(5, 0, 12), version.manifest.latent_dim)
    (expected,) = session.run(None, {LATENT_FLOW_INPUT: noise})
    np.testing.assert_allclose(samples.latents, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(samples.latents, noise)  # the flow really moved them
    assert alone.latents.tobytes() == samples.latents[:1].tobytes()
    assert samples.sampler == "flow"


def test_the_flow_over_the_open_inference_protocol_matches_aegen_v1(flow_server):
    seeds = np.array([3, 4, 5], "<u8")
    with grpc.insecure_channel(flow_server.target) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(oip.ModelInferRequest(
            model_name=FLOWED, parameters={"sampler": oip.InferParameter(string_param="flow")},
            inputs=[oip.ModelInferRequest.InferInputTensor(name="SEED", datatype="UINT64", shape=[3, 1])],
            raw_input_contents=[seeds.tobytes()]), timeout=60)
    with AegenClient(flow_server.target, timeout=60) as client:
        alone = b"".join(client.generate(FLOWED, 1, seed=int(s), sampler="flow").images.tobytes() for s in seeds)
    assert reply.raw_output_contents[0] == alone


def test_a_version_without_a_flow_refuses_the_flow_sampler(aegen_server):
    with AegenClient(aegen_server.target, timeout=60) as client:
        assert pb.SAMPLER_FLOW not in client.model_info("digits-vae").samplers
        with pytest.raises(grpc.RpcError) as error:
            client.generate("digits-vae", 1, sampler="flow")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "flow" in error.value.details()
