"""The Open Inference Protocol over gRPC, driven by clients no one here wrote: NVIDIA's tritonclient.grpc
and perf_analyzer, against a real server process.

tritonclient.grpc registers Triton's own `inference.*` protobuf messages in the default descriptor pool,
as our protos/inference stubs do, so the two cannot live in one process: each tritonclient session runs in
a child interpreter (`_triton`) that prints JSON for the test to check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from client.client import AegenClient
from tests.plugins.server import ROOT

VAE, AE = "digits-vae", "digits-ae"

_PRELUDE = """
import json, sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
c = g.InferenceServerClient(sys.argv[1])

def seeds(values, name="SEED", datatype="UINT64", shape=None):
    array = np.array(values, dtype=np.uint64).reshape(shape or (-1, 1))
    tensor = g.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array if datatype == "UINT64" else array.astype(np.float32))
    return tensor

def error(call):
    try:
        call()
    except InferenceServerException as e:
        return [e.status(), e.message()]
    return None

out = {}
"""


def _triton(target: str, body: str) -> dict:
    code = _PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    result = subprocess.run([sys.executable, "-c", code, target], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def aegen(aegen_server):
    with AegenClient(aegen_server.target, timeout=60) as client:
        yield client


def test_health_metadata_config_and_index_through_tritonclient(aegen_server):
    out = _triton(aegen_server.target, """
        out["live"], out["ready"] = c.is_server_live(), c.is_server_ready()
        out["model_ready"] = [c.is_model_ready(m) for m in ("digits-vae", "digits-vae.decoder", "nope")]
        out["server"] = c.get_server_metadata(as_json=True)
        out["meta"] = c.get_model_metadata("digits-vae", as_json=True)
        out["decoder_meta"] = c.get_model_metadata("digits-vae.decoder", as_json=True)
        out["config"] = c.get_model_config("digits-vae", as_json=True)["config"]
        out["index"] = c.get_model_repository_index(as_json=True)["models"]
    """)
    assert out["live"] and out["ready"] and out["model_ready"] == [True, True, False]
    assert out["server"]["name"] == "aegen" and "statistics" in out["server"]["extensions"]
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in out["meta"]["inputs"]}
    assert inputs == {"SEED": ("UINT64", ["-1", "1"]), "TEMPERATURE": ("FP32", ["-1", "1"])}
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in out["meta"]["outputs"]}
    assert outputs["IMAGES"] == ("UINT8", ["-1", "1", "28", "28"]) and outputs["LATENTS"][1] == ["-1", "8"]
    assert {t["name"] for t in out["decoder_meta"]["inputs"]} == {"LATENTS"}
    config = out["config"]
    assert int(config["max_batch_size"]) == 65536 and "dynamic_batching" in config
    assert next(i for i in config["input"] if i["name"] == "TEMPERATURE")["optional"] is True
    index = {(m["name"], m["version"]): m["state"] for m in out["index"]}
    for name in (VAE, VAE + ".decoder", VAE + ".encoder", AE, AE + ".decoder", AE + ".encoder"):
        assert index[(name, "1")] == "READY"


def test_row_i_is_generate_samples_of_seed_i_byte_for_byte(aegen_server, aegen):
    seeds = [7, 8, 2**64 - 1, 0, 123456789]
    out = _triton(aegen_server.target, f"""
        r = c.infer("digits-vae", [seeds({seeds})], request_id="req-1")
        out["id"] = r.get_response().id
        out["images"] = r.as_numpy("IMAGES").tobytes().hex()
        out["shape"] = list(r.as_numpy("IMAGES").shape)
        out["outputs"] = [o.name for o in r.get_response().outputs]
        m = c.infer("digits-vae", [seeds({seeds})], parameters={{"sampler": "mixture", "unknown": 1}},
                    outputs=[g.InferRequestedOutput("IMAGES_FP32"), g.InferRequestedOutput("LATENTS")])
        out["mixture_fp32"] = m.as_numpy("IMAGES_FP32").tobytes().hex()
        out["mixture_latents"] = m.as_numpy("LATENTS").tobytes().hex()
        out["mixture_outputs"] = [o.name for o in m.get_response().outputs]
    """)
    assert out["id"] == "req-1" and out["shape"] == [5, 1, 28, 28] and out["outputs"] == ["IMAGES"]
    alone = b"".join(aegen.generate(VAE, 1, seed=s).images.tobytes() for s in seeds)
    assert bytes.fromhex(out["images"]) == alone
    assert out["mixture_outputs"] == ["IMAGES_FP32", "LATENTS"]
    mixture = [aegen.generate(VAE, 1, seed=s, sampler="mixture", dtype="float32", return_latents=True) for s in seeds]
    assert bytes.fromhex(out["mixture_fp32"]) == b"".join(m.images.tobytes() for m in mixture)
    assert bytes.fromhex(out["mixture_latents"]) == b"".join(m.latents.tobytes() for m in mixture)


def test_the_decoder_model_gives_back_the_images_of_the_latents_generate_returned(aegen_server, aegen):
    samples = aegen.generate(VAE, 6, seed=11, return_latents=True)
    latents = samples.latents.tolist()
    out = _triton(aegen_server.target, f"""
        latents = np.array({latents}, dtype=np.float32)
        tensor = g.InferInput("LATENTS", list(latents.shape), "FP32"); tensor.set_data_from_numpy(latents)
        r = c.infer("digits-vae.decoder", [tensor])
        out["images"] = r.as_numpy("IMAGES").tobytes().hex()
        images = r.as_numpy("IMAGES")
        pixels = g.InferInput("IMAGES", list(images.shape), "UINT8"); pixels.set_data_from_numpy(images)
        e = c.infer("digits-vae.encoder", [pixels])
        out["encoded"] = e.as_numpy("LATENTS").tobytes().hex()
        out["encoder_outputs"] = [o.name for o in e.get_response().outputs]
    """)
    assert bytes.fromhex(out["images"]) == samples.images.tobytes()
    assert out["encoder_outputs"] == ["LATENTS", "LOG_VARIANCE"]
    assert bytes.fromhex(out["encoded"]) == aegen.encode(VAE, samples.images).latents.tobytes()


def test_stream_infer_answers_every_request_with_its_id(aegen_server, aegen):
    out = _triton(aegen_server.target, """
        import queue
        answers = queue.Queue()
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(8):
            c.async_stream_infer("digits-vae", [seeds([i, i + 100])], request_id=f"s{i}")
        c.async_stream_infer("no-such-model", [seeds([1])], request_id="bad")
        got = {}
        for _ in range(9):
            result, err = answers.get(timeout=60)
            if err is not None:
                got["error"] = str(err)
            else:
                got[result.get_response().id] = result.as_numpy("IMAGES")[1].tobytes().hex()
        c.stop_stream()
        out["got"] = got
    """)
    got = out["got"]
    assert "no-such-model" in got.pop("error")
    assert sorted(got) == [f"s{i}" for i in range(8)]
    assert bytes.fromhex(got["s3"]) == aegen.generate(VAE, 1, seed=103).images.tobytes()


def test_statistics_count_successes_failures_queue_and_compute(aegen_server):
    out = _triton(aegen_server.target, """
        def stats():
            s = c.get_inference_statistics("digits-vae", as_json=True)["model_stats"]
            return {k: s[0][k] for k in ("name", "version", "inference_stats", "execution_count")}
        before = stats()
        for i in range(3):
            c.infer("digits-vae", [seeds([i, i, i])])
        error(lambda: c.infer("digits-vae", [seeds([1])], parameters={"sampler": "no-such-sampler"}))
        out["before"], out["after"] = before, stats()
    """)
    before, after = out["before"]["inference_stats"], out["after"]["inference_stats"]

    def count(stats, key):
        return int(stats.get(key, {}).get("count", 0))

    assert (out["after"]["name"], out["after"]["version"]) == (VAE, "1")
    assert count(after, "success") - count(before, "success") == 3
    assert count(after, "fail") - count(before, "fail") == 1
    assert count(after, "queue") - count(before, "queue") == 3
    assert count(after, "compute_infer") == count(after, "compute_input") == count(after, "compute_output")
    assert int(after["success"]["ns"]) > int(before.get("success", {}).get("ns", 0))


def test_every_bad_request_is_a_clear_status_and_the_next_call_succeeds(aegen_server):
    out = _triton(aegen_server.target, """
        cases = {
            "unknown model": lambda: c.infer("no-such-model", [seeds([1])]),
            "unknown version": lambda: c.infer("digits-vae", [seeds([1])], model_version="99"),
            "wrong datatype": lambda: c.infer("digits-vae", [seeds([1], datatype="FP32")]),
            "wrong shape": lambda: c.infer("digits-vae", [seeds([1, 2, 3, 4], shape=[2, 2])]),
            "missing input": lambda: c.infer("digits-vae", [g.InferInput("TEMPERATURE", [1, 1], "FP32")
                                                            .set_data_from_numpy(np.ones((1, 1), np.float32))]),
            "unknown sampler": lambda: c.infer("digits-vae", [seeds([1])], parameters={"sampler": "uniform"}),
            "bad temperature": lambda: c.infer("digits-vae", [seeds([1]), g.InferInput("TEMPERATURE", [1, 1], "FP32")
                                               .set_data_from_numpy(np.full((1, 1), -1, np.float32))]),
            "batch over the limit": lambda: c.infer("digits-vae", [seeds(np.zeros(65537, np.uint64))]),
            "unknown output": lambda: c.infer("digits-vae", [seeds([1])],
                                              outputs=[g.InferRequestedOutput("NOPE")]),
            "unimplemented": lambda: c.load_model("digits-vae"),
        }
        short = seeds([1, 2])
        short._raw_content = short._raw_content[:8]  # 8 bytes for a [2, 1] UINT64 tensor
        cases["bytes disagree with the shape"] = lambda: c.infer("digits-vae", [short])
        out["errors"] = {name: error(call) for name, call in cases.items()}
        out["after"] = c.infer("digits-vae", [seeds([5])]).as_numpy("IMAGES").shape[0]
    """)
    errors = out["errors"]
    expected = {
        "unknown model": ("StatusCode.NOT_FOUND", "no-such-model"),
        "unknown version": ("StatusCode.NOT_FOUND", "version 99"),
        "wrong datatype": ("StatusCode.INVALID_ARGUMENT", "UINT64"),
        "wrong shape": ("StatusCode.INVALID_ARGUMENT", "shape"),
        "missing input": ("StatusCode.INVALID_ARGUMENT", "SEED"),
        "unknown sampler": ("StatusCode.INVALID_ARGUMENT", "uniform"),
        "bad temperature": ("StatusCode.INVALID_ARGUMENT", "TEMPERATURE"),
        "batch over the limit": ("StatusCode.INVALID_ARGUMENT", "65536"),
        "unknown output": ("StatusCode.INVALID_ARGUMENT", "NOPE"),
        "unimplemented": ("StatusCode.UNIMPLEMENTED", "RepositoryModelLoad"),
        "bytes disagree with the shape": ("StatusCode.INVALID_ARGUMENT", "bytes"),
    }
    for name, (status, words) in expected.items():
        assert errors[name] is not None, name
        assert errors[name][0] == status and words in errors[name][1], (name, errors[name])
    assert out["after"] == 1


def test_metrics_label_oip_grpc_calls(aegen_server):
    _triton(aegen_server.target, 'c.infer("digits-vae", [seeds([1])])')
    lines = [line for line in aegen_server.metrics_text().splitlines()
             if line.startswith("aegen_requests_total{") and 'protocol="oip_grpc"' in line]
    assert any('method="ModelInfer"' in line and 'model="digits-vae"' in line and 'code="OK"' in line
               for line in lines), lines


@pytest.mark.parametrize("mode", [[], ["--async"]])
def test_perf_analyzer_measures_the_generator_over_grpc_without_errors(aegen_server, perf_analyzer, tmp_path, mode):
    data = tmp_path / "seeds.json"
    # One entry per batch element (the shape leaves out the batch dimension); perf_analyzer cycles them.
    data.write_text(json.dumps({"data": [{"SEED": {"content": [seed], "shape": [1]}} for seed in (7, 8, 9)]}))
    result = perf_analyzer.run(
        "-m", VAE, "-i", "grpc", "-u", aegen_server.target, "-b", "4", "--input-data", str(data),
        "--concurrency-range", "2", "--measurement-mode", "count_windows",
        "--measurement-request-count", "20", "-s", "1000", "--max-trials", "3", *mode)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Throughput:" in result.stdout and "error" not in result.stdout.lower()


def test_perf_analyzer_random_inputs_also_work(aegen_server, perf_analyzer):
    """perf_analyzer's default: random bytes for every input it is not told to leave out."""
    result = perf_analyzer.run("-m", VAE, "-i", "grpc", "-u", aegen_server.target, "-b", "8",
                               "--concurrency-range", "1", "--measurement-mode", "count_windows",
                               "--measurement-request-count", "20", "-s", "1000", "--max-trials", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert np.isfinite(float(result.stdout.split("Throughput:")[1].split()[0]))


def test_latents_alone_are_drawn_without_decoding_anything(aegen_server, aegen):
    out = _triton(aegen_server.target, """
        def decoded():
            return int(c.get_inference_statistics("digits-vae", as_json=True)["model_stats"][0]
                       .get("inference_count", 0))
        before = decoded()
        r = c.infer("digits-vae", [seeds([21, 22])], outputs=[g.InferRequestedOutput("LATENTS")])
        out["latents"] = r.as_numpy("LATENTS").tobytes().hex()
        out["decoded"] = decoded() - before
    """)
    assert out["decoded"] == 0
    expected = b"".join(aegen.generate(VAE, 1, seed=s, return_latents=True).latents.tobytes() for s in (21, 22))
    assert bytes.fromhex(out["latents"]) == expected
