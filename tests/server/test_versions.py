"""Version policies: several versions served at once, any served version named in a request, every
version's state in the repository index, and a refused version retried once it is fixed in place."""

from __future__ import annotations

import grpc
import pytest

from client.client import AegenClient
from export.repository import GRAPH_FILES
from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from tests.plugins.server import copy_repository, publish_copy, wait_for_log, wait_until

VAE = "digits-vae"


def _index(target: str) -> dict[tuple[str, str], tuple[str, str]]:
    with grpc.insecure_channel(target) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(oip.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in reply.models}


@pytest.fixture
def two_version_repository(model_repository, tmp_path):
    repository = copy_repository(model_repository, tmp_path / "repository")
    publish_copy(repository, VAE, 1)  # version 2: the same graphs under a new number
    return repository


def test_latest_two_serves_both_versions_and_a_request_may_name_either(server_factory, two_version_repository):
    server = server_factory("--version-policy", "latest:2", repository=two_version_repository)
    with AegenClient(server.target, timeout=30) as client:
        listed = {m.name: m for m in client.list_models()}[VAE]
        assert (listed.versions, listed.default_version) == ((1, 2), 2)
        one, two = client.generate(VAE, 4, seed=3, version=1), client.generate(VAE, 4, seed=3, version=2)
        assert (one.model_version, two.model_version) == (1, 2)
        assert one.images.tobytes() == two.images.tobytes()
        assert client.generate(VAE, 1).model_version == 2  # no version named: the newest served
    index = _index(server.target)
    assert index[(VAE, "1")][0] == index[(VAE, "2")][0] == "READY"
    assert index[(VAE + ".decoder", "2")][0] == "READY"


def test_default_policy_serves_only_the_newest_and_reports_the_older_as_not_served(server_factory,
                                                                                   two_version_repository):
    server = server_factory(repository=two_version_repository)
    with AegenClient(server.target, timeout=30) as client:
        assert {m.name: m.versions for m in client.list_models()}[VAE] == (2,)
        with pytest.raises(grpc.RpcError) as error:
            client.generate(VAE, 1, version=1)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND and "serving versions 2" in error.value.details()


def test_specific_policy_serves_exactly_the_listed_versions(server_factory, two_version_repository):
    server = server_factory("--version-policy", "specific:1,7", repository=two_version_repository)
    with AegenClient(server.target, timeout=30) as client:
        assert {m.name: m.versions for m in client.list_models()}[VAE] == (1,)
    index = _index(server.target)
    assert index[(VAE, "7")] == ("UNAVAILABLE", "not in the model repository")
    assert (VAE, "2") not in index


def test_a_refused_version_fixed_in_place_is_retried_on_the_next_poll(server_factory, model_repository, tmp_path):
    server = server_factory("--repository-poll-seconds", "0.2")
    repository = server.repository
    broken = publish_copy(repository, VAE, 1)
    decoder = broken.path / GRAPH_FILES["decoder"]
    good_bytes = decoder.read_bytes()
    damaged = bytearray(good_bytes)
    damaged[len(damaged) // 2] ^= 0xFF
    decoder.write_bytes(bytes(damaged))
    wait_for_log(server, "model version refused", broken.version)
    state, reason = _index(server.target)[(VAE, str(broken.version))]
    assert state == "UNAVAILABLE" and "SHA-256" in reason
    with AegenClient(server.target, timeout=30) as client:
        assert client.generate(VAE, 1).model_version == 1  # the old version kept serving
        decoder.write_bytes(good_bytes)  # fixed in place, same version number
        wait_until(lambda: client.generate(VAE, 1).model_version == broken.version, "the fixed version to serve")
    assert _index(server.target)[(VAE, str(broken.version))] == ("READY", "")


@pytest.mark.parametrize("policy", ["latest:0", "newest", "specific:", "specific:a", "all:3"])
def test_a_bad_version_policy_is_a_configuration_error(policy):
    from server.config import ConfigError, ServerConfig

    with pytest.raises(ConfigError, match="--version-policy"):
        ServerConfig.from_args(["--version-policy", policy], {})
