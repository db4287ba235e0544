"""The Open Inference Protocol's gRPC service definition, and the Python modules protoc made from it.

`grpc_predict_v2.proto` is KServe v2's `inference.GRPCInferenceService`, wire-compatible with KServe's
grpc_predict_v2.proto. `grpc_predict_v2_pb2*.py(i)` are generated, committed, and never edited by hand:
`scripts/gen_grpc.py` rewrites them (grpcio-tools 1.74.0; its docstring says why that version, and
why the messages live in a descriptor pool of their own). They need grpcio, the champion[grpc] extra.
"""
