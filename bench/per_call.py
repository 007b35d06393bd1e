"""Benchmark h: the server's own work per call, in process: CPU microseconds per one-sample call of aegen.v1
GenerateSamples and of the Open Inference Protocol's ModelInfer, from the servicer through the data plane,
the batcher and the decode to the reply's wire bytes, with K calls at once (asyncio tasks), no gRPC.

gRPC's own work and the load generator's are left out on purpose: on a shared 2-core VM the rates of the
end-to-end benchmarks move by up to 2× between minutes, while CPU time per call in one process stays within
a few percent. That makes this the benchmark to compare two versions of the server's code with:
`--compare COMMIT` runs that commit's server code (from `git archive`) beside the work tree's, alternating.

    python -m bench.per_call [--repository R --model M] [--tasks 1,64] [--seconds 2] [--rounds 3]
                             [--compare COMMIT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import (
    PYTHON,
    RESULTS_DIR,
    ROOT,
    BenchError,
    add_model_arguments,
    bench_model,
    checkout,
    fmt,
    machine_details,
    markdown_table,
    report_or_fail,
    write_result,
)
from protos.cli import OneLineParser

PATHS = ("aegen.v1 GenerateSamples", "OIP ModelInfer")

# Runs in a child process with the measured tree first on sys.path, so that an older commit's server code can
# be measured by the same procedure. It only uses what every version of the server since the Open Inference
# Protocol has: the registry, the data plane and the two servicers (with an admission where they take one).
_WORKER = r'''
import asyncio, inspect, json, sys, time
tree, repository, model_name, path, tasks, seconds, rounds = sys.argv[1:8]
tasks, seconds, rounds = int(tasks), float(seconds), int(rounds)
sys.path.insert(0, tree)
from protos.aegen.v1 import generator_pb2
from protos.inference import grpc_service_pb2 as oip_pb2
from server.config import ServerConfig
from server.core.dataplane import DataPlane
from server.core.registry import ModelRegistry
from server.core.runner import select_device
from server.protocols.aegen_v1 import servicer as aegen_v1
from server.protocols.grpc_calls import parse_request
from server.protocols.oip import grpc_servicer as oip_grpc
from server.protocols.oip.models import OipModels
from server.telemetry.metrics import ServerMetrics


class Context:  # what the handlers read of a grpc.aio ServicerContext: no deadline
    def time_remaining(self):
        return None

    async def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def admitted(cls, *args):
    try:
        from server.core.admission import Admission
    except ImportError:
        return cls(*args)
    takes = "admission" in inspect.signature(cls.__init__).parameters
    return cls(*args, Admission(0, 0)) if takes else cls(*args)


async def main():
    config = ServerConfig.from_args(["--repository", repository, "--device", "cpu", "--repository-poll-seconds", "0"])
    metrics = ServerMetrics()
    registry = ModelRegistry(config.core, select_device(config.core.execution), metrics)
    plane = DataPlane(registry, config.core)
    await registry.load_initial()
    if path == "aegen.v1 GenerateSamples":
        servicer = admitted(aegen_v1.GeneratorServicer, plane, metrics.calls("aegen_v1"))
        message, method = generator_pb2.GenerateSamplesRequest, servicer.GenerateSamples
        raw = message(model_name=model_name, num_samples=1).SerializeToString()
    else:
        servicer = admitted(oip_grpc.InferenceServicer, OipModels(plane), metrics.calls("oip_grpc"))
        message, method = oip_pb2.ModelInferRequest, servicer.ModelInfer
        raw = message(model_name=model_name,
                      inputs=[message.InferInputTensor(name="SEED", datatype="UINT64", shape=[1, 1])],
                      outputs=[message.InferRequestedOutputTensor(name="IMAGES")],
                      raw_input_contents=[(7).to_bytes(8, "little")]).SerializeToString()
    parse, context, state = parse_request(message), Context(), {"calls": 0, "stop": False}

    async def caller():
        while not state["stop"]:
            await method(parse(raw), context)  # parsed per call, as gRPC's deserializer does
            state["calls"] += 1
            if tasks == 1:
                await asyncio.sleep(0)  # a lone caller still lets the event loop turn

    async def window(duration):
        state.update(calls=0, stop=False)
        callers = [asyncio.create_task(caller()) for _ in range(tasks)]
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(duration)
        state["stop"] = True
        calls, wall, cpu = state["calls"], time.perf_counter() - wall, time.process_time() - cpu
        await asyncio.gather(*callers)
        return {"cpu_us": cpu / calls * 1e6, "calls_per_s": calls / wall}

    await window(min(seconds, 0.5))  # warm-up
    print(json.dumps([await window(seconds) for _ in range(rounds)]))
    await registry.close()


asyncio.run(main())
'''


def _measure(tree: Path, model, path: str, tasks: int, args: argparse.Namespace) -> list[dict]:
    result = subprocess.run([PYTHON, "-c", _WORKER, str(tree), str(model.repository), model.name, path, str(tasks),
                             str(args.seconds), str(args.rounds)], cwd=tree, capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-8:])
        raise BenchError(f"{path} at {tasks} tasks in {tree} failed:\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    with contextlib.ExitStack() as stack:
        trees = {"work tree": ROOT}
        if args.compare:
            trees = {args.compare: stack.enter_context(checkout(args.compare, "aegen-per-call-")), **trees}
        rows = []
        for path in PATHS:
            for tasks in args.tasks:
                runs: dict[str, list[dict]] = {name: [] for name in trees}
                for _ in range(args.alternations):  # the trees take turns, so both see the same machine
                    for name, tree in trees.items():
                        runs[name] += _measure(tree, model, path, tasks, args)
                for name, windows in runs.items():
                    cpu = [w["cpu_us"] for w in windows]
                    rows.append([path, tasks, name, fmt(statistics.median(cpu), 1), fmt(min(cpu), 1),
                                 fmt(statistics.median(w["calls_per_s"] for w in windows))])
    body = (f"One process, no gRPC: {args.rounds} windows of {args.seconds:g} s per run after a warm-up, "
            f"{args.alternations} runs per tree, the trees taking turns; the median and the least CPU per call "
            f"over all windows. The decode runs where the server runs it (the batcher's inference thread, or the "
            f"event loop for a lone small call); its CPU is counted (process time). Model `{model.name}`, one sample per call, server-drawn seeds (aegen.v1) "
            f"or one given seed (OIP), uint8 images.\n\n"
            + markdown_table(["path", "calls at once", "server code", "CPU µs per call (median)", "least",
                              "calls/s (median)"], rows))
    return write_result("per_call", "Benchmark h: the server's own work per call, in process", body, details,
                        args.out_dir)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--tasks", type=lambda s: tuple(int(x) for x in s.split(",")), default=(1, 64),
                   help="calls at once, comma-separated (default 1,64)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one measured window")
    p.add_argument("--rounds", type=int, default=3, help="measured windows per run")
    p.add_argument("--alternations", type=int, default=2, help="runs per tree, alternating between the trees")
    p.add_argument("--compare", help="also measure the server code of this commit (git archive), side by side")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p


def main(argv: list[str] | None = None) -> int:
    return report_or_fail("bench.per_call", lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
