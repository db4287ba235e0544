"""Deploy: turn the validated `<name>-onnx` model (alias `deploy`) into what a server loads, or serve it.

In: a registered version that passed Quality Gate 2 (or the int8 gate), verified against its export
record before use. Out: files and manifests; nothing here changes the registry.

    triton.deploy(...)              `champion deploy triton`: a Triton model repository (local or s3://);
                                    `triton_config` writes its config.pbtxt and labels.txt
    kserve.inference_service(...)   `champion deploy kserve`: a KServe InferenceService (`manifests`: YAML)
    serve.serve(...)                `champion serve`: the Open Inference Protocol over HTTP (and gRPC
                                    with --grpc-port) with ONNX Runtime: `model` (load and verify),
                                    `service` (what both protocols share), `app` (HTTP routes),
                                    `grpc_service` and `proto` (gRPC), `oip` (the protocol),
                                    `prepare` (requests to feeds), `batching`, `reload`, `metrics`, `limits`
"""
