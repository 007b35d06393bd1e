"""The serving half of `make demo`: start the server on a model repository, request samples over gRPC
(aegen.v1, and the Open Inference Protocol over gRPC and HTTP), write the grid PNG, print a metrics
summary, stop the server.

    python -m client.demo --repository model-repository --model digits-vae --out demo-out

Then it prints the address of the latent explorer (the browser page at / on the HTTP port, docs/explorer.md)
and, where Debian's chromium and chromium-driver are installed (`make tools`), opens it headless and saves
what it shows: demo-out/explorer.png (a 2-D model's latent plane, a click and a drawn digit) and
demo-out/explorer-traversal.png (the --model's traversal).

The server runs as a real process (`python -m server`) on 127.0.0.1 with free ports, exactly as
`aegen-serve` would; the requests go through the client library and `aegen-sample`. Without --model the
demo uses the server's default for every client tool (AegenClient.default_model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from client import sample
from client.client import AegenClient, NoModelsError
from client.local import NotServing, free_port, wait_until_serving
from protos.cli import OneLineParser, fail, run_async

PROG = "python -m client.demo"


class DemoError(Exception):
    pass


async def _concurrent_requests(target: str, model: str, calls: int, n: int) -> int:
    """Many small concurrent calls, so that the batcher has something to merge. A call the server's admission
    control refuses (RESOURCE_EXHAUSTED: the wait ahead is longer than a call may wait, as on a busy machine)
    is tried again after a pause, as its message advises; returns how many refusals there were."""
    from protos.aegen.v1 import generator_pb2 as pb
    from protos.aegen.v1 import generator_pb2_grpc as pb_grpc

    refused = 0

    async def one(stub, seed: int) -> None:
        nonlocal refused
        for attempt in range(6):
            try:
                await stub.GenerateSamples(pb.GenerateSamplesRequest(model_name=model, num_samples=n, seed=seed))
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == 5:
                    raise
                refused += 1
                await asyncio.sleep(0.25 * 2**attempt)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        await asyncio.gather(*(one(stub, i) for i in range(calls)))
    return refused


def oip_requests(target: str, http_url: str, model: str, seeds: list[int]) -> list[str]:
    """One Open Inference Protocol request over HTTP (plain JSON, as curl would send it) and one over gRPC
    (inference.GRPCInferenceService), each asking for one sample per seed; both must equal aegen.v1's."""
    from protos.inference import grpc_service_pb2 as oip
    from protos.inference import grpc_service_pb2_grpc as oip_grpc

    body = json.dumps({"id": "demo", "inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [len(seeds), 1],
                                                 "data": seeds}]}).encode()
    request = urllib.request.Request(f"{http_url}/v2/models/{model}/infer", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        reply = json.loads(r.read())
    (images,) = [o for o in reply["outputs"] if o["name"] == "IMAGES"]
    over_http = np.array(images["data"], np.uint8).reshape(images["shape"])
    with grpc.insecure_channel(target) as channel:
        answer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(oip.ModelInferRequest(
            model_name=model, inputs=[oip.ModelInferRequest.InferInputTensor(
                name="SEED", datatype="UINT64", shape=[len(seeds), 1])],
            raw_input_contents=[np.array(seeds, "<u8").tobytes()]), timeout=30)
    shape = list(answer.outputs[0].shape)
    over_grpc = np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(shape)
    with AegenClient(target) as client:
        alone = np.concatenate([client.generate(model, 1, seed=s).images for s in seeds])
    if not (np.array_equal(over_http, alone) and np.array_equal(over_grpc, alone)):
        raise DemoError(f"OIP rows for seeds {seeds} differ from aegen.v1's GenerateSamples(seed=s, 1)")
    return [f"OIP over HTTP: POST {http_url}/v2/models/{model}/infer (JSON) → IMAGES {images['shape']}",
            f"OIP over gRPC: inference.GRPCInferenceService/ModelInfer → IMAGES {shape}",
            f"seeds {seeds}: the same bytes as aegen.v1 GenerateSamples(seed=s, num_samples=1)"]


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
_IDLE = "document.getElementById('busy').hidden"


def explorer_screenshots(http_url: str, plane_model: str | None, model: str, out: Path) -> list[str]:
    """Open the explorer in headless chromium and save two screenshots; lines to print. Without chromium,
    chromedriver or selenium: one line saying what is missing. A page that does not render is a DemoError."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        return [(f"no screenshot of the explorer: {', '.join(missing)} missing (`make tools` installs chromium "
                 "and chromium-driver)")]
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1400", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        return [f"no screenshot of the explorer: chromium did not start ({exc.msg or exc})"]
    lines = []

    def wait(condition: str, what: str) -> None:
        try:
            WebDriverWait(driver, 60, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {condition};"))
        except TimeoutException:
            said = driver.execute_script("return document.getElementById('message').textContent")
            raise DemoError(f"the explorer did not show {what} within 60 s (it says: {said!r})") from None

    def save(name: str) -> None:
        wait(_IDLE, "an idle page")
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
        driver.save_screenshot(str(out / name))
        lines.append(f"explorer screenshot: {out / name}")

    try:
        if plane_model:
            driver.get(f"{http_url}/#model={plane_model}")
            wait("document.getElementById('plane-status').textContent.includes('encoded')", "the latent plane")
            plane = driver.find_element("id", "plane-codes")
            ActionChains(driver).move_to_element_with_offset(plane, plane.size["width"] // 5, -plane.size["height"] // 6
                                                             ).click().perform()
            canvas = driver.find_element("id", "draw-canvas")  # a "1", as a mouse would draw it
            chain = ActionChains(driver).move_to_element_with_offset(canvas, 10, -100).click_and_hold()
            for _ in range(10):
                chain.move_by_offset(-2, 20)
            chain.release().perform()
            wait("document.getElementById('draw-recon').dataset.renders !== '0'", "the drawing's reconstruction")
            save("explorer.png")
        driver.get("about:blank")
        driver.get(f"{http_url}/#model={model}")
        wait("document.getElementById('interp-strip').dataset.renders !== '0'", "the interpolation")
        save("explorer-traversal.png" if plane_model else "explorer.png")
    finally:
        driver.quit()
    return lines


def metrics_summary(exposition: str) -> list[str]:
    sums: dict[str, float] = {}
    info = []
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == "aegen_model_info":
                info.append(f"{s.labels.get('name')} v{s.labels.get('version')} on {s.labels.get('device')} "
                            f"({s.labels.get('execution_provider')})")
            elif s.name.endswith(("_sum", "_count", "_total")) and s.name.startswith("aegen_"):
                sums[s.name] = sums.get(s.name, 0.0) + s.value

    def mean_ms(name: str) -> str:
        count = sums.get(f"{name}_count", 0.0)
        return f"{1e3 * sums.get(f'{name}_sum', 0.0) / count:.2f} ms" if count else "n/a"

    batches = sums.get("aegen_batch_size_samples_count", 0.0)
    return [
        "serving: " + ("; ".join(info) or "n/a"),
        (f"requests: {sums.get('aegen_requests_total', 0):.0f}, "
         f"samples generated: {sums.get('aegen_samples_generated_total', 0):.0f}"),
        (f"batches decoded: {batches:.0f}, mean batch "
         f"{sums.get('aegen_batch_size_samples_sum', 0) / batches if batches else 0:.1f} samples"),
        (f"mean request duration {mean_ms('aegen_request_duration_seconds')}, queue wait "
         f"{mean_ms('aegen_queue_wait_seconds')}, inference {mean_ms('aegen_inference_duration_seconds')}"),
    ]


def run(repository: Path, model: str | None, out: Path, device: str) -> None:
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    target, http_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
    cmd = [sys.executable, "-m", "server", "--repository", str(repository), "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(http_port), "--device", device,
           "--repository-poll-seconds", "0", "--log-level", "WARNING"]
    print(f"starting the server: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        print(f"ready after {wait_until_serving(target, proc):.1f} s (health SERVING)", flush=True)
        with AegenClient(target) as client:
            served = client.list_models()
            for m in served:
                print(f"model {m.name}: kind {m.kind}, latent {m.latent_dim}, versions {list(m.versions)}")
            model = model or client.default_model()
        planes = sorted((m.kind != "vae", m.name) for m in served if m.latent_dim == 2)  # a 2-D VAE first
        grid = out / "served-samples.png"
        code = sample.main(["--target", target, "--model", model, "-n", "64", "--seed", "7",
                                "-o", str(grid)])
        if code != 0:
            raise DemoError(f"aegen-sample failed with exit code {code}")
        for line in oip_requests(target, http_url, model, [7, 8, 9]):
            print(line, flush=True)
        print(f"latent explorer (a browser page, while this server runs): {http_url}/ ; after the demo: "
              f"aegen-serve --repository {repository}, then http://localhost:8000/", flush=True)
        for line in explorer_screenshots(http_url, planes[0][1] if planes else None, model, out):
            print(line, flush=True)
        refused = run_async(_concurrent_requests(target, model, calls=64, n=16))
        print("64 concurrent GenerateSamples calls of 16 samples served"
              + (f" ({refused} refusals by admission control, retried)" if refused else ""), flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            for line in metrics_summary(r.read().decode()):
                print(f"  {line}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
                print(f"server stopped on SIGTERM (exit code {code})")
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print("server did not stop within 60 s; killed", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model-repository"))
    p.add_argument("--model", default=None, help="model to sample (default: the server's first VAE, else its first model)")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    args = p.parse_args(argv)
    if not args.repository.is_dir():
        return fail(PROG, f"{args.repository}: no such model repository (run aegen-export first)")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        run(args.repository, args.model, args.out, args.device)
    except (DemoError, NotServing, NoModelsError, grpc.RpcError, OSError) as exc:
        return fail(PROG, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
