"""The Triton python-backend model bench/serve.py serves beside `champion serve` (not a benchmark itself).

bench/triton_peer.py copies this file into the Triton model repository as `<model>/1/model.py`, next
to the ONNX file `champion serve` loads. Triton's python backend runs it in its stub process, in a
venv holding the onnxruntime version the bench runs (and numpy<2, which the stub needs), so both
servers run the same graph with the same ONNX Runtime version and the same session options.

Triton's dynamic batcher hands `execute` every request it gathered; they are stacked into one ONNX
Runtime run and split back, as champion's batcher does. Without that, dynamic batching would buy the
python backend nothing.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # as champion serve makes its session (champion.deploy.model._session)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        try:
            out = self.session.run([self.output], {self.input: np.concatenate(arrays)})[0]
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        responses, start = [], 0
        for a in arrays:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, out[start : start + len(a)])]))
            start += len(a)
        return responses
