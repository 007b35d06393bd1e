"""The custom MLServer runtime the peer benchmark serves aegen's exported decoder through (MLServer 1.7.1).

What a user would write to put the same model behind Seldon MLServer: `load` opens decoder_uint8.onnx in
onnxruntime (2 intra-op threads, no pool spinning: aegen's large-batch session), `predict` takes the Open
Inference Protocol's SEED tensor ([N, 1] UINT64, one sample per seed), draws each seed's latents exactly as
aegen does (server/core/samplers.py, Philox rows) and answers IMAGES ([N, 1, 28, 28] UINT8) through
MLServer's standard NumpyCodec. With adaptive batching MLServer concatenates the SEED tensors of the
requests it merged and splits IMAGES back.

It runs in its own virtual environment (.venv-mlserver: MLServer pins packages the project must not
downgrade), with the project root on PYTHONPATH; nothing of the project imports it. Each predict's batch
size goes to the JSON file named by the model's `extra.stats` parameter (at most every 0.2 s), so that
the benchmark can report the batch sizes MLServer formed.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from server.core.samplers import draw


class AegenDecoderRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("threads", 2))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.settings.parameters.uri, options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.latent_dim = int(self.session.get_inputs()[0].shape[1])
        self.stats_path = extra.get("stats")
        self.batches, self.samples, self.written = 0, 0, 0.0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        seeds = NumpyCodec.decode_input(payload.inputs[0]).astype(np.uint64).reshape(-1)
        latents = draw(None, "standard_normal", seeds, np.zeros(len(seeds), np.uint64), self.latent_dim)
        (images,) = self.session.run(None, {self.input_name: latents})
        self._count(len(seeds))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("IMAGES", images)])

    def _count(self, n: int) -> None:
        self.batches += 1
        self.samples += n
        now = time.monotonic()
        if self.stats_path and now - self.written > 0.2:
            self.written = now
            temporary = f"{self.stats_path}.{os.getpid()}.tmp"
            with open(temporary, "w") as f:
                json.dump({"batches": self.batches, "samples": self.samples}, f)
            os.replace(temporary, self.stats_path)
