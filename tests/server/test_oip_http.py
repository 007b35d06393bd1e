"""The Open Inference Protocol over HTTP/REST (server/protocols/oip/http.py) against a real server, driven by
tritonclient.http, plain HTTP requests, raw sockets and perf_analyzer.

tritonclient.http is imported here, tritonclient.grpc is not: its generated modules define the same protobuf
symbols as protos/inference and one process cannot hold both (see tests/test_proto.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.client import AegenClient
from client.local import free_port
from server.core.errors import DeadlineExceeded, ModelNotFound, QueueFull, ShuttingDown
from tests.plugins.server import promtool_check_metrics, wait_until

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the dev extra)")
from tritonclient.utils import InferenceServerException

MODEL = "digits-vae"
LATENT = 8  # the test repository's digits-vae
HEADER_LENGTH = "Inference-Header-Content-Length"


def address(server) -> str:
    return urlsplit(server.http_url).netloc


def request(server, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one HTTP request; an error status is returned."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    call = urllib.request.Request(server.http_url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def seeds_input(seeds, binary_data: bool = True) -> httpclient.InferInput:
    array = np.asarray(seeds, np.uint64).reshape(-1, 1)
    tensor = httpclient.InferInput("SEED", list(array.shape), "UINT64")
    tensor.set_data_from_numpy(array, binary_data=binary_data)
    return tensor


def float_input(name: str, array: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "UINT8")
    tensor.set_data_from_numpy(array)
    return tensor


def outputs(*names: str, binary_data: bool = True) -> list[httpclient.InferRequestedOutput]:
    return [httpclient.InferRequestedOutput(name, binary_data=binary_data) for name in names]


def generate_body(seeds: list[int], **extra) -> dict:
    return {"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [len(seeds), 1], "data": seeds}], **extra}


@pytest.fixture(scope="module")
def triton(aegen_server) -> httpclient.InferenceServerClient:
    with httpclient.InferenceServerClient(address(aegen_server), network_timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def aegen(aegen_server) -> AegenClient:
    with AegenClient(aegen_server.target) as client:
        yield client


# ------------------------------------------------------------------------------------- health, metadata


def test_server_is_live_and_ready_and_so_are_its_models(triton, aegen_server):
    assert triton.is_server_live() and triton.is_server_ready()
    for name in (MODEL, f"{MODEL}.decoder", f"{MODEL}.encoder", "digits-ae"):
        assert triton.is_model_ready(name), name
    assert triton.is_model_ready(MODEL, "1")
    assert request(aegen_server, "GET", "/v2/health/ready")[::2] == (200, b'{"ready":true}')
    assert request(aegen_server, "GET", "/v2/health/live")[::2] == (200, b'{"live":true}')


def test_server_metadata_names_aegen_and_its_extensions(triton):
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "aegen" and metadata["version"]
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(metadata["extensions"])


def test_model_metadata_has_numeric_shapes_with_the_batch_dimension(triton):
    metadata = triton.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"] and metadata["platform"] == "aegen"
    assert metadata["inputs"] == [{"name": "SEED", "datatype": "UINT64", "shape": [-1, 1]},
                                  {"name": "TEMPERATURE", "datatype": "FP32", "shape": [-1, 1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("IMAGES", "UINT8", [-1, 1, 28, 28]), ("IMAGES_FP32", "FP32", [-1, 1, 28, 28]),
        ("LATENTS", "FP32", [-1, LATENT])]
    decoder = triton.get_model_metadata(f"{MODEL}.decoder", "1")
    assert decoder["inputs"] == [{"name": "LATENTS", "datatype": "FP32", "shape": [-1, LATENT]}]


def test_model_config_has_numbers_where_perf_analyzer_reads_numbers(triton, aegen_server):
    config = triton.get_model_config(MODEL)
    assert config["name"] == MODEL and isinstance(config["max_batch_size"], int) and config["max_batch_size"] > 1
    assert [(i["name"], i["data_type"], i["dims"], i.get("optional", False)) for i in config["input"]] == [
        ("SEED", "TYPE_UINT64", [1], False), ("TEMPERATURE", "TYPE_FP32", [1], True)]
    assert config["output"][0] == {"name": "IMAGES", "data_type": "TYPE_UINT8", "dims": [1, 28, 28]}
    assert config["dynamic_batching"]["preferred_batch_size"] == [256]  # the tests' --max-batch-size
    assert set(config["parameters"]["samplers"]["string_value"].split(",")) >= {"standard_normal", "gaussian"}
    encoder = triton.get_model_config(f"{MODEL}.encoder")
    assert encoder["input"][0]["dims"] == [1, 28, 28]
    assert [o["name"] for o in encoder["output"]] == ["LATENTS", "LOG_VARIANCE"]
    status, headers, body = request(aegen_server, "GET", f"/v2/models/{MODEL}/versions/1/config")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["max_batch_size"] == config["max_batch_size"]


def test_repository_index_lists_every_model_and_its_decoder_and_encoder(triton, aegen_server):
    index = {(m["name"], m["version"], m["state"]) for m in triton.get_model_repository_index()}
    for name in ("digits-ae", MODEL):
        assert {(name, "1", "READY"), (f"{name}.decoder", "1", "READY"), (f"{name}.encoder", "1", "READY")} <= index
    status, _, body = request(aegen_server, "POST", "/v2/repository/index", {"ready": True})
    assert status == 200 and {m["name"] for m in json.loads(body)} == {n for n, _, _ in index}


# ---------------------------------------------------------------------------------------------- infer


def test_each_seed_row_equals_what_aegen_v1_generates_for_that_seed(triton, aegen):
    seeds = [0, 7, 2**64 - 1, 123456789]
    result = triton.infer(MODEL, [seeds_input(seeds)], outputs=outputs("IMAGES", "IMAGES_FP32", "LATENTS"),
                          request_id="row-check")
    assert result.get_response()["id"] == "row-check"
    assert result.get_response()["model_version"] == "1"
    images, floats, latents = (result.as_numpy(n) for n in ("IMAGES", "IMAGES_FP32", "LATENTS"))
    assert images.dtype == np.uint8 and images.shape == (4, 1, 28, 28) and latents.shape == (4, LATENT)
    for row, seed in enumerate(seeds):
        alone = aegen.generate(MODEL, 1, seed=seed, return_latents=True)
        np.testing.assert_array_equal(images[row], alone.images[0])
        np.testing.assert_array_equal(latents[row], alone.latents[0])
        np.testing.assert_array_equal(floats[row], aegen.generate(MODEL, 1, seed=seed, dtype="float32").images[0])


def test_json_tensors_give_the_same_values_as_binary_ones(triton, aegen_server):
    seeds = [3, 5]
    as_binary = triton.infer(MODEL, [seeds_input(seeds)], outputs=outputs("IMAGES", "LATENTS"))
    as_json = triton.infer(MODEL, [seeds_input(seeds, binary_data=False)],
                           outputs=outputs("IMAGES", "LATENTS", binary_data=False))
    assert all("data" in o for o in as_json.get_response()["outputs"])
    for name in ("IMAGES", "LATENTS"):
        np.testing.assert_array_equal(as_json.as_numpy(name), as_binary.as_numpy(name))
    # No outputs listed: IMAGES alone, as JSON unless the request asks for binary data.
    status, headers, body = request(aegen_server, "POST", f"/v2/models/{MODEL}/infer", generate_body(seeds, id="x"))
    answer = json.loads(body)
    assert status == 200 and HEADER_LENGTH.lower() not in headers and answer["id"] == "x"
    assert [o["name"] for o in answer["outputs"]] == ["IMAGES"]
    assert answer["outputs"][0]["data"] == as_binary.as_numpy("IMAGES").reshape(-1).tolist()


def test_the_sampler_parameter_and_temperature_input_reach_the_sampler(triton, aegen):
    temperature = httpclient.InferInput("TEMPERATURE", [1, 1], "FP32")
    temperature.set_data_from_numpy(np.array([[0.5]], np.float32))
    result = triton.infer(MODEL, [seeds_input([11]), temperature], outputs=outputs("IMAGES"),
                          parameters={"sampler": "gaussian", "an_unknown_parameter": 1})
    expected = aegen.generate(MODEL, 1, seed=11, sampler="gaussian", temperature=0.5)
    np.testing.assert_array_equal(result.as_numpy("IMAGES"), expected.images)


def test_decoding_the_latents_generate_returned_gives_its_images(triton, aegen):
    generated = aegen.generate(MODEL, 16, seed=42, return_latents=True)
    result = triton.infer(f"{MODEL}.decoder", [float_input("LATENTS", generated.latents)],
                          outputs=outputs("IMAGES"))
    np.testing.assert_array_equal(result.as_numpy("IMAGES"), generated.images)


def test_the_encoder_model_gives_the_aegen_v1_encoding(triton, aegen):
    images = aegen.generate(MODEL, 8, seed=9).images
    expected = aegen.encode(MODEL, images)
    for pixels in (images, images.astype(np.float32) / 255):
        result = triton.infer(f"{MODEL}.encoder", [float_input("IMAGES", pixels)])
        np.testing.assert_allclose(result.as_numpy("LATENTS"), expected.latents, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("LOG_VARIANCE"), expected.log_variance, rtol=1e-5, atol=1e-5)


def test_a_large_binary_request_round_trips(triton):
    result = triton.infer(MODEL, [seeds_input(np.arange(1024))], outputs=outputs("IMAGES"))
    assert result.as_numpy("IMAGES").shape == (1024, 1, 28, 28)


# --------------------------------------------------------------------------------------------- errors


def binary_seed_body(rows: int, size: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [rows, 1],
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return header + bytes(size), {HEADER_LENGTH: str(len(header))}


def seed_json(**tensor) -> dict:
    return {"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [1, 1], "data": [1], **tensor}]}


ERRORS = {
    "unknown model": ("/v2/models/nope/infer", generate_body([1]), {}, 404, "no model 'nope'"),
    "unknown version": (f"/v2/models/{MODEL}/versions/9/infer", generate_body([1]), {}, 404, "version"),
    "version not a number": (f"/v2/models/{MODEL}/versions/x/infer", generate_body([1]), {}, 404, "'x'"),
    "wrong datatype": (f"/v2/models/{MODEL}/infer", seed_json(datatype="FP32", data=[1.0]), {}, 400, "UINT64"),
    "wrong shape": (f"/v2/models/{MODEL}/infer", seed_json(shape=[1]), {}, 400, "shape"),
    "data disagrees with the shape": (f"/v2/models/{MODEL}/infer", seed_json(shape=[2, 1]), {}, 400,
                                      "2 elements"),
    "bytes disagree with the shape": (f"/v2/models/{MODEL}/infer", *binary_seed_body(2, 8), 400, "needs 16 bytes"),
    "missing input": (f"/v2/models/{MODEL}/infer", {"inputs": [{"name": "TEMPERATURE", "datatype": "FP32",
                                                                "shape": [1, 1], "data": [1.0]}]}, {}, 400,
                      "needs input 'SEED'"),
    "no inputs": (f"/v2/models/{MODEL}/infer", {}, {}, 400, "no 'inputs'"),
    "unknown input": (f"/v2/models/{MODEL}/infer", {"inputs": [*seed_json()["inputs"], {
        "name": "NOISE", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}, {}, 400, "'NOISE'"),
    "unknown output": (f"/v2/models/{MODEL}/infer", {**generate_body([1]), "outputs": [{"name": "PIXELS"}]}, {},
                       400, "'PIXELS'"),
    "batch over the limit": (f"/v2/models/{MODEL}/infer", *binary_seed_body(65537, 8 * 65537), 400, "65536"),
    "unknown sampler": (f"/v2/models/{MODEL}/infer", generate_body([1], parameters={"sampler": "zzz"}), {}, 400,
                        "zzz"),
    "bad temperature": (f"/v2/models/{MODEL}/infer", {"inputs": [*seed_json()["inputs"], {
        "name": "TEMPERATURE", "datatype": "FP32", "shape": [1, 1], "data": [-1.0]}]}, {}, 400, "TEMPERATURE"),
    "malformed JSON": (f"/v2/models/{MODEL}/infer", b'{"inputs": [', {}, 400, "malformed"),
    "a JSON array": (f"/v2/models/{MODEL}/infer", b"[]", {}, 400, "must be an object"),
    "header length past the body": (f"/v2/models/{MODEL}/infer", json.dumps(generate_body([1])).encode(),
                                    {HEADER_LENGTH: "100000"}, 400, HEADER_LENGTH),
    "header length not a number": (f"/v2/models/{MODEL}/infer", json.dumps(generate_body([1])).encode(),
                                   {HEADER_LENGTH: "ten"}, 400, HEADER_LENGTH),
    "header length short of the JSON": (f"/v2/models/{MODEL}/infer", json.dumps(generate_body([1])).encode(),
                                        {HEADER_LENGTH: "10"}, 400, "malformed"),
    "binary size without the header": (f"/v2/models/{MODEL}/infer", binary_seed_body(1, 0)[0], {}, 400,
                                       HEADER_LENGTH),
    "bad timeout": (f"/v2/models/{MODEL}/infer", generate_body([1], parameters={"timeout": "soon"}), {}, 400,
                    "timeout"),
    "unknown model metadata": ("/v2/models/nope", None, {}, 404, "no model 'nope'"),
    "unknown model config": ("/v2/models/nope/config", None, {}, 404, "no model 'nope'"),
    "unknown model ready": ("/v2/models/nope/ready", None, {}, 404, "no model 'nope'"),
    "unknown model stats": ("/v2/models/nope/versions/1/stats", None, {}, 404, "no model 'nope'"),
    "unknown endpoint": ("/v2/models/digits-vae/load", b"{}", {}, 404, "no such endpoint"),
    "index body not JSON": ("/v2/repository/index", b"{", {}, 400, "not valid JSON"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_bad_request_gets_a_4xx_naming_the_problem_and_the_next_call_succeeds(case, aegen_server, triton):
    path, body, headers, status, words = ERRORS[case]
    got, response_headers, answer = request(aegen_server, "POST" if body is not None else "GET", path, body,
                                            headers)
    assert got == status, answer
    assert response_headers["content-type"] == "application/json"
    assert words in json.loads(answer)["error"]
    assert triton.infer(MODEL, [seeds_input([1])]).as_numpy("IMAGES").shape == (1, 1, 28, 28)


def test_tritonclient_sees_the_status_and_the_message(triton):
    with pytest.raises(InferenceServerException) as raised:
        triton.infer(MODEL, [seeds_input([1])], parameters={"sampler": "zzz"})
    assert raised.value.status() == "400" and "zzz" in raised.value.message()


def test_a_body_over_the_limit_is_413_by_its_length_and_by_what_arrives(server_factory):
    server = server_factory("--max-body-bytes", "2048")
    body, headers = binary_seed_body(512, 8 * 512)  # 4 KiB of seeds
    status, response_headers, answer = request(server, "POST", f"/v2/models/{MODEL}/infer", body, headers)
    assert status == 413 and "2048" in json.loads(answer)["error"]
    assert response_headers["connection"] == "close"
    # Chunked, with no Content-Length: the limit holds on what is received.
    host, port = address(server).split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                f"{HEADER_LENGTH}: {headers[HEADER_LENGTH]}\r\n\r\n").encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                          for i in range(0, len(body), 1000))
        sock.sendall(head + chunks + b"0\r\n\r\n")
        assert read_response(sock)[0] == 413
    small, small_headers = binary_seed_body(4, 32)
    assert request(server, "POST", f"/v2/models/{MODEL}/infer", small, small_headers)[0] == 200


# ----------------------------------------------------------------------------------- stats and metrics


def test_statistics_count_each_successful_infer(triton, aegen_server):
    def success() -> int:
        (entry,) = triton.get_inference_statistics(MODEL, "1")["model_stats"]
        return entry["inference_stats"]["success"]["count"]

    before = success()
    for seed in range(3):
        triton.infer(MODEL, [seeds_input([seed])])
    assert success() == before + 3
    everything = json.loads(request(aegen_server, "GET", "/v2/models/stats")[2])["model_stats"]
    assert {m["name"] for m in everything} == {MODEL, "digits-ae"}
    assert all(isinstance(m["inference_stats"]["queue"]["ns"], int) for m in everything)


def test_http_calls_are_labelled_oip_http_in_the_metrics(triton, aegen_server):
    triton.infer(MODEL, [seeds_input([1])])
    request(aegen_server, "GET", "/v2/models/nope")
    text = aegen_server.metrics_text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def labels(**values: str) -> tuple:
        return tuple(sorted({"protocol": "oip_http", **values}.items()))

    assert samples[("aegen_requests_total", labels(method="ModelInfer", model=MODEL, code="200"))] >= 1
    assert samples[("aegen_requests_total", labels(method="ModelMetadata", model="", code="404"))] >= 1
    assert samples[("aegen_request_duration_seconds_count", labels(method="ModelInfer", model=MODEL, code="200"))] >= 1
    promtool_check_metrics(text)


# ------------------------------------------------------------------------------------------ transport


def read_response(sock: socket.socket) -> tuple[int, bytes, int]:
    """(status, body, how many recv calls it took) of one HTTP/1.1 response with a Content-Length."""
    data, reads = b"", 0
    while b"\r\n\r\n" not in data:
        data += sock.recv(1 << 20)
        reads += 1
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(1 << 20)
        reads += 1
    return int(head.split()[1]), body, reads


def test_each_response_leaves_in_one_write(aegen_server):
    """Status line, headers and body in one send(): the first recv holds the whole response, so no client
    waits on a delayed ACK for its second half (50 calls on one keep-alive connection)."""
    host, port = address(aegen_server).split(":")
    infer = json.dumps({**generate_body([1]), "parameters": {"binary_data_output": True}}).encode()
    calls = [b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n",
             (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(infer)}\r\n\r\n"
              ).encode() + infer]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for index in range(50):
            sock.sendall(calls[index % 2])
            status, body, reads = read_response(sock)
            assert status == 200 and reads == 1, (index, body[:100])
            if index % 2:
                assert len(body) > 784  # the JSON header and the binary IMAGES


def test_a_taken_http_port_is_one_line_and_exit_2(model_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*server_command(model_repository), "--http-port", str(port)], capture_output=True, text=True,
            timeout=120, check=False)
        workers = subprocess.run([*server_command(model_repository), "--workers", "2", "--http-port", str(port)],
                                 capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f"cannot listen on 127.0.0.1:{port} (HTTP): "
                                                             "Address already in use"), result.stderr
    assert workers.returncode == 2, workers.stderr  # the parent refuses before any worker starts
    assert f"cannot listen on 127.0.0.1:{port}" in workers.stderr.strip().splitlines()[-1], workers.stderr


def server_command(repository) -> list[str]:
    return [sys.executable, "-m", "server", "--repository", str(repository), "--host", "127.0.0.1",
            "--port", str(free_port()), "--metrics-port", "0", "--device", "cpu"]


def test_workers_share_the_http_port(server_factory):
    server = server_factory("--workers", "2")

    def every_connection_ready() -> bool:  # new connections, spread over both workers by the kernel
        return all(request(server, "GET", "/v2/health/ready")[0] == 200 for _ in range(10))

    wait_until(every_connection_ready, "both workers' HTTP readiness")
    with httpclient.InferenceServerClient(address(server)) as client:
        assert client.infer(MODEL, [seeds_input([5])]).as_numpy("IMAGES").shape == (1, 1, 28, 28)


def test_sigterm_lets_an_infer_in_flight_finish_then_refuses_connections(server_factory):
    server = server_factory("--grace-seconds", "30")
    body, headers = binary_seed_body(16384, 8 * 16384)  # seconds on one CPU thread: in flight at SIGTERM
    answer: list = []
    call = threading.Thread(target=lambda: answer.append(
        request(server, "POST", f"/v2/models/{MODEL}/infer", body, headers)))
    call.start()
    wait_until(lambda: "aegen_requests_in_flight 1.0" in server.metrics_text(), "the infer in flight")
    server.process.send_signal(signal.SIGTERM)
    call.join(120)
    assert answer and answer[0][0] == 200, answer
    assert server.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(tuple(address(server).split(":")), timeout=5).close()


# -------------------------------------------------------------------------------------- perf_analyzer


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_perf_analyzer_drives_the_http_side_without_errors(mode, perf_analyzer, aegen_server, tmp_path):
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{"SEED": [7], "TEMPERATURE": [1.0]}]}))
    result = perf_analyzer.run(
        "-i", "http", "-u", address(aegen_server), "-m", MODEL, "-b", "4", "--measurement-mode", "count_windows",
        "--measurement-request-count", "20", "-s", "1000", "--max-trials", "3", "--input-data", str(data),
        *(["--async"] if mode == "async" else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Throughput:" in result.stdout
    assert not re.search(r"(?i)error|failed", result.stdout + result.stderr), result.stdout + result.stderr


# ------------------------------------------------------------------- the listener alone, over a stub core


class StubOip:
    """Just what the endpoints call, every model lookup raising `error`; the plane is always ready."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.plane = SimpleNamespace(ready=lambda: True)

    def label(self, name: str) -> str:
        return ""

    def view(self, name: str, version: str = ""):
        raise self.error

    metadata = config = view


class RecordedCalls:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str, str]] = []
        self.in_flight = 0

    def call_started(self) -> None:
        self.in_flight += 1

    def call_finished(self, method: str, model: str, code: str, seconds: float) -> None:
        self.in_flight -= 1
        self.finished.append((method, model, code))


def with_listener(error: BaseException, scenario, **settings):
    """Run `scenario(listener, server)` (blocking HTTP calls, on a thread) against an in-process listener."""
    from server.config import ServerConfig
    from server.protocols.oip.http import HttpListener

    config = ServerConfig.of(host="127.0.0.1", http_port=free_port(), **settings)
    calls = RecordedCalls()

    async def run():
        listener = HttpListener(config, StubOip(error), calls, reuse_port=False)
        await listener.start()
        try:
            await asyncio.to_thread(scenario, listener, SimpleNamespace(http_url=f"http://127.0.0.1:{config.http.http_port}"))
        finally:
            await listener.drain(1)
            await listener.stop()

    asyncio.run(run())
    return calls


@pytest.mark.parametrize("error, status, retry", [
    (QueueFull("the queue of digits-vae version 1 is full"), 429, "1"),
    (ShuttingDown("digits-vae version 1 was retired"), 503, "1"),
    (DeadlineExceeded("the deadline passed after 5 ms in the queue"), 504, None),
    (RuntimeError("a bug"), 500, None),
])
def test_each_core_error_has_its_status_and_an_unexpected_one_is_500_without_details(error, status, retry, caplog):
    answers = []
    calls = with_listener(error, lambda _, server: answers.append(request(server, "GET", f"/v2/models/{MODEL}")))
    ((got, headers, body),) = answers
    assert (got, headers.get("retry-after")) == (status, retry)
    message = json.loads(body)["error"]
    if status == 500:
        assert message == "internal error; the server log has the details" and "a bug" not in message
        assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
    else:
        assert message == str(error)
    assert calls.finished == [("ModelMetadata", "", str(status))] and calls.in_flight == 0


def test_readiness_is_503_until_set_serving_and_again_once_draining():
    def scenario(listener, server):
        assert request(server, "GET", "/v2/health/ready")[0] == 503
        assert request(server, "GET", "/v2/health/live")[0] == 200
        listener.set_serving()
        assert request(server, "GET", "/v2/health/ready")[0] == 200

    with_listener(ModelNotFound("none"), scenario)
