"""Deploy: turn the validated `<name>-onnx` model (alias `deploy`) into what a server loads.

One module per target, each with one public entry point that the CLI and the library both call:

    triton.deploy(...)   # `champion deploy triton`: a Triton model repository (local folder or s3://)
    serve.serve(...)     # `champion serve`: the model over the Open Inference Protocol (HTTP), ONNX Runtime
"""
