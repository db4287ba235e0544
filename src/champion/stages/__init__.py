"""The stages after training, one module each, each with one entry point the CLI and `champion run` call.

    promote.promote(run_id)            Quality Gate 1: beat the champion -> `<name>` @champion
    export.export(name, version)       the champion to ONNX (and TorchScript) in an export run
    validate.validate(export_run_id)   Quality Gate 2: ONNX Runtime matches PyTorch -> `<name>-onnx` @deploy
    quantize.gate(export_run_id)       the int8 gate (with `int8`, the quantizer) -> `<name>-onnx-int8` @deploy
    card.write_cards(run_id, ...)      the model card: the run's own, and the champion's at a stable path

In: run ids and registered versions (never a config: each stage reads the one its training run
logged). Out: MLflow runs, registered versions and alias moves (through `champion.registry.release`),
reports logged as artefacts, and a result dataclass the CLI prints as KEY=value lines.
"""
