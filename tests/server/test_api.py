"""Every RPC of aegen.v1.GeneratorService against a real server process and a real exported repository."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from client.client import AegenClient
from export.repository import Manifest, load_version
from protos.aegen.v1 import generator_pb2 as pb
from server.core.samplers import draw, seed_rows
from server.protocols.wire import encode_varint, with_bytes_fields

VAE, AE = "digits-vae", "digits-ae"


@pytest.fixture(scope="module")
def client(aegen_server) -> AegenClient:
    with AegenClient(aegen_server.target, timeout=60) as c:
        yield c


def test_list_models_names_both_exported_models(client, aegen_server):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {VAE, AE}
    for name, kind in ((VAE, "vae"), (AE, "ae")):
        manifest = load_version(aegen_server.repository, name).manifest
        assert (models[name].kind, models[name].latent_dim) == (kind, manifest.latent_dim)
        assert models[name].versions == (manifest.version,) and models[name].default_version == manifest.version


def test_model_info_returns_the_manifest_verbatim_and_the_provider(client, aegen_server):
    info = client.model_info(VAE)
    on_disk = load_version(aegen_server.repository, VAE).manifest
    assert Manifest.from_json(info.manifest_json) == on_disk
    assert (info.device, info.execution_provider) == ("cpu", "CPUExecutionProvider")
    assert [pb.Sampler.Name(s).removeprefix("SAMPLER_").lower() for s in info.samplers] == list(on_disk.samplers)


# SHA-256 of the float32 latents GenerateSamples(seed=7, num_samples=8) draws for the 8-d test model with the
# default sampler: pinned, so that moving code around cannot change what a seed means without a test noticing.
SEED_7_LATENTS_SHA256 = "96809cb108ff152b9c44f727e093b24f1633d546350e46b5122cb6570c73c8d2"


def test_a_seed_draws_the_pinned_latents(client):
    samples = client.generate(VAE, 8, seed=7, dtype="float32", return_latents=True)
    assert samples.latents.shape == (8, 8)
    assert hashlib.sha256(samples.latents.tobytes()).hexdigest() == SEED_7_LATENTS_SHA256


def test_generated_images_are_the_decoded_latents_of_the_seed(client, aegen_server):
    version = load_version(aegen_server.repository, VAE)
    samples = client.generate(VAE, 10, seed=123, dtype="float32", return_latents=True)
    expected_latents = draw(None, "standard_normal", *seed_rows(123, 0, 10), version.manifest.latent_dim)
    assert np.array_equal(samples.latents, expected_latents)
    session = ort.InferenceSession(str(version.graph_path("decoder")), providers=["CPUExecutionProvider"])
    (expected_images,) = session.run(None, {session.get_inputs()[0].name: expected_latents})
    assert samples.images.shape == (10, *version.manifest.image_shape)
    np.testing.assert_allclose(samples.images, expected_images, atol=1e-6)
    assert (samples.model_name, samples.model_version, samples.seed) == (VAE, version.version, 123)


def test_uint8_samples_round_the_float_samples(client):
    as_float = client.generate(VAE, 16, seed=5, dtype="float32").images
    as_uint8 = client.generate(VAE, 16, seed=5, dtype="uint8").images
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(np.int16) - np.round(as_float * 255)).max() <= 1


def test_server_draws_a_seed_when_none_is_given_and_it_reproduces(client):
    drawn = client.generate(VAE, 4)
    again = client.generate(VAE, 4, seed=drawn.seed)
    assert np.array_equal(drawn.images, again.images)
    assert client.generate(VAE, 4).seed != drawn.seed


def test_every_sampler_the_model_offers_generates(client):
    info = client.model_info(VAE)
    for sampler in info.samplers:
        name = pb.Sampler.Name(sampler).removeprefix("SAMPLER_").lower()
        samples = client.generate(VAE, 8, seed=1, sampler=name, temperature=0.8)
        assert samples.sampler == name and samples.images.shape[0] == 8


def test_same_seed_same_samples_alone_and_under_concurrent_load(client):
    alone = client.generate(VAE, 37, seed=7).images
    alone_float = client.generate(VAE, 300, seed=8, dtype="float32").images  # 300 > batch of 256: split
    jobs = [(VAE, n, seed, dtype) for seed, n, dtype in
            [(s, 1 + (s * 13) % 90, "uint8" if s % 2 else "float32") for s in range(100, 140)]]
    jobs[10], jobs[25] = (VAE, 37, 7, "uint8"), (VAE, 300, 8, "float32")
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda j: client.generate(j[0], j[1], seed=j[2], dtype=j[3]).images, jobs))
    assert results[10].tobytes() == alone.tobytes()
    assert results[25].tobytes() == alone_float.tobytes()


def test_stream_concatenates_to_the_samples_of_one_call(client):
    whole = client.generate(VAE, 700, seed=3).images
    chunks = list(client.stream(VAE, 700, chunk=256, seed=3))
    assert [c.offset for c in chunks] == [0, 256, 512]
    assert [len(c.images) for c in chunks] == [256, 256, 188]
    assert np.concatenate([c.images for c in chunks]).tobytes() == whole.tobytes()


def test_encode_returns_mean_and_log_variance_for_a_vae_and_the_code_for_an_ae(client, aegen_server):
    images = client.generate(VAE, 6, seed=1).images
    latent_dim = load_version(aegen_server.repository, VAE).manifest.latent_dim
    vae = client.encode(VAE, images)
    assert vae.latents.shape == vae.log_variance.shape == (6, latent_dim)
    ae = client.encode(AE, images.astype(np.float32) / 255)
    assert ae.log_variance is None and ae.latents.shape[0] == 6
    assert np.allclose(client.encode(VAE, images.astype(np.float32) / 255).latents, vae.latents, atol=1e-5)


def test_reconstruct_decodes_the_code_of_the_images(client, aegen_server):
    images = client.generate(AE, 5, seed=2, dtype="float32").images
    code = client.encode(AE, images).latents
    version = load_version(aegen_server.repository, AE)
    session = ort.InferenceSession(str(version.graph_path("decoder")), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: code})
    reconstruction = client.reconstruct(AE, images, dtype="float32")
    np.testing.assert_allclose(reconstruction, expected, atol=1e-5)
    assert client.reconstruct(AE, images).dtype == np.uint8


def test_reflection_lists_the_service(aegen_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(aegen_server.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "aegen.v1.GeneratorService" in services and "grpc.health.v1.Health" in services


def test_health_says_serving_for_the_server_and_the_service(aegen_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(aegen_server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aegen.v1.GeneratorService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("rows", [0, 1, 3, 2_700])  # 0 bytes; 1- and 2-byte lengths; > 2**21 bytes (4-byte length)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_prebuilt_wire_bytes_parse_into_the_message_protobuf_builds(rows, dtype):
    images = np.random.default_rng(rows).random((rows, 1, 28, 28)).astype(dtype)
    latents = np.random.default_rng(rows + 1).standard_normal((rows, 16)).astype(np.float32)
    fields = {"shape": images.shape, "dtype": pb.DTYPE_FLOAT32, "latents_shape": latents.shape, "model_name": VAE,
                  "model_version": 3, "sampler": pb.SAMPLER_MIXTURE, "seed": 2**64 - 1}
    cases = [
        (pb.GenerateSamplesResponse(**fields), {"samples": images, "latents": latents}),
        (pb.StreamSamplesResponse(**fields, offset=2**40), {"samples": images, "latents": b""}),
        (pb.ReconstructResponse(shape=images.shape, model_name=AE, model_version=1), {"images": images}),
    ]
    for head, payloads in cases:
        expected = type(head)()
        expected.CopyFrom(head)
        for name, payload in payloads.items():
            setattr(expected, name, payload.tobytes() if isinstance(payload, np.ndarray) else payload)
        wire = with_bytes_fields(head, **payloads)
        assert type(head).FromString(wire) == expected
        assert len(wire) == expected.ByteSize()  # same records, nothing extra (e.g. no empty latents)
    assert images.nbytes < 2**21 or len(encode_varint(images.nbytes)) == 4


def test_prebuilt_wire_bytes_refuse_a_field_set_twice_and_a_non_contiguous_array():
    with pytest.raises(ValueError, match="samples"):
        with_bytes_fields(pb.GenerateSamplesResponse(samples=b"x"), samples=np.zeros(3, np.uint8))
    with pytest.raises(TypeError):
        with_bytes_fields(pb.GenerateSamplesResponse(), samples=np.zeros((4, 4), np.uint8)[:, :2])
    with pytest.raises(TypeError, match="not a singular bytes field"):
        with_bytes_fields(pb.GenerateSamplesResponse(), shape=np.zeros(3, np.uint8))
