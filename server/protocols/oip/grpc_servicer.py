"""inference.GRPCInferenceService (the Open Inference Protocol over gRPC) on the same server as aegen.v1.

Each handler decodes the request, calls `OipModels` (models.py), and encodes; core errors become statuses
in server/protocols/grpc_calls.py. Inference replies carry their outputs as `raw_output_contents`, appended
as wire bytes (the images are copied once). The methods aegen does not implement (model load/unload,
shared memory, trace and log settings) answer UNIMPLEMENTED with a message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from server.core.admission import Admission
from server.core.errors import ServerError
from server.protocols.grpc_calls import (
    Call,
    CallObserver,
    Unparsable,
    add_service,
    check_parsed,
    deadline_of,
    rpc,
    status_of,
)
from server.protocols.oip.models import InferResult, OipModels
from server.protocols.oip.tensors import datatype_of, decode_grpc_inputs
from server.protocols.wire import append_repeated_bytes, encode_varint, serialize_response

log = logging.getLogger("aegen.server.oip")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
_STREAM_IN_FLIGHT = 64  # requests of one ModelStreamInfer call being answered at once
# An embedded message is a length-delimited record (wire type 2), like bytes.
_INFER_RESPONSE_TAG = encode_varint(
    pb.ModelStreamInferResponse.DESCRIPTOR.fields_by_name["infer_response"].number << 3 | 2)


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, oip: OipModels, calls: CallObserver, admission: Admission | None = None) -> None:
        self.oip = oip
        self.calls = calls
        self.admission = admission

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context, call: Call):
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context, call: Call):
        return pb.ServerReadyResponse(ready=self.oip.plane.ready())

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context, call: Call):
        call.model = self.oip.label(request.name)
        return pb.ModelReadyResponse(ready=self.oip.ready(request.name, request.version))

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context, call: Call):
        return self.oip.server_metadata()

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context, call: Call):
        call.model = self.oip.label(request.name)
        return self.oip.metadata(request.name, request.version)

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context, call: Call):
        call.model = self.oip.label(request.name)
        return pb.ModelConfigResponse(config=self.oip.config(request.name, request.version))

    @rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context, call: Call):
        call.model = self.oip.label(request.name)
        return self.oip.statistics_response(request.name, request.version)

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context, call: Call):
        return self.oip.index_response(ready_only=request.ready)

    @rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context, call: Call):
        call.model = self.oip.label(request.model_name)
        return await self._infer(request, call.deadline)

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context
                               ) -> AsyncIterator[bytes]:
        """Each request's answer (or its error message, as Triton does) in the order the answers are ready;
        they carry the request's `id`. Up to 64 requests of the stream are answered at once."""
        self.calls.call_started()
        answers: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(_STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task] = set()
        code = "OK"

        async def answer(request: pb.ModelInferRequest) -> None:
            admitted, deadline = False, deadline_of(context)
            try:
                if self.admission is not None:  # each message of the stream is one inference
                    self.admission.admit(deadline)
                    admitted = True
                reply = await self._infer(request, deadline)
                await answers.put(_stream_reply(reply))
            except ServerError as exc:
                await answers.put(pb.ModelStreamInferResponse(error_message=f"{status_of(exc).name}: {exc}"))
            except Exception:
                log.exception("unexpected error", extra={"method": "ModelStreamInfer"})
                await answers.put(pb.ModelStreamInferResponse(error_message="internal error; see the server log"))
            finally:
                if admitted:
                    self.admission.release()
                slots.release()

        async def read() -> None:
            async for request in requests:
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(answer(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            await answers.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        started = asyncio.get_running_loop().time()
        try:
            while (reply := await answers.get()) is not None:
                yield reply
            await reader
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()
            self.calls.call_finished("ModelStreamInfer", "", code, asyncio.get_running_loop().time() - started)

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> bytes:
        check_parsed(request)  # a stream's message may not parse either
        inputs = decode_grpc_inputs(request)
        outputs = [o.name for o in request.outputs] or None
        result = await self.oip.infer(request.model_name, request.model_version, inputs,
                                      _parameters(request.parameters), outputs, deadline)
        return _infer_reply(request, result)


def _infer_reply(request: pb.ModelInferRequest, result: InferResult) -> bytes:
    """The reply's wire bytes: the records every answer of this model and these outputs' shapes shares
    (serialized once, cached), the request's id, then each output's raw contents."""
    outputs = result.outputs
    parts = [_reply_head(request.model_name, result.view.model.version,
                         tuple((name, datatype_of(array.dtype), array.shape) for name, array in outputs))]
    if request.id:
        parts.append(pb.ModelInferResponse(id=request.id).SerializeToString())
    return append_repeated_bytes(pb.ModelInferResponse, parts, "raw_output_contents",
                                 [np.ascontiguousarray(array) for _, array in outputs])


@functools.lru_cache(maxsize=256)
def _reply_head(model_name: str, version: int, outputs: tuple[tuple[str, str, tuple[int, ...]], ...]) -> bytes:
    head = pb.ModelInferResponse(model_name=model_name, model_version=str(version))
    for name, datatype, shape in outputs:
        head.outputs.add(name=name, datatype=datatype, shape=shape)
    return head.SerializeToString()


def _stream_reply(infer_reply: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: <the reply's wire bytes>} without re-parsing them."""
    return _INFER_RESPONSE_TAG + encode_varint(len(infer_reply)) + infer_reply


def _parameters(parameters) -> dict[str, object]:
    """A request's InferParameter map as plain values; unknown names are the caller's to ignore."""
    values = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, choice) if choice else None
    return values


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register every method of the service: ours, and UNIMPLEMENTED-with-a-message for the rest; unparsable
    request bytes are INVALID_ARGUMENT (grpc_calls.add_service)."""

    def behaviour(method):
        own = getattr(type(servicer), method.name) is not getattr(
            grpc_service_pb2_grpc.GRPCInferenceServiceServicer, method.name)
        return getattr(servicer, method.name) if own else _unimplemented(method.name)

    add_service(server, SERVICE, pb, behaviour, serialize_response)


def _unimplemented(name: str):
    async def handler(request, context: grpc.aio.ServicerContext):
        if isinstance(request, Unparsable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"aegen does not implement {name}: models are loaded from the model repository by "
                            "its version policy and polling, and tensors travel in the request")

    return handler
