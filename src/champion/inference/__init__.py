"""The shipped model, used from the terminal: `champion predict` (images → top-k rows) and
`champion evaluate` (a labelled set → accuracy, per-class figures, a confusion matrix, and the drop
against what training recorded).

Both open the model as `champion serve` does (`champion.deploy.model.load_model`: the registry
version, its ONNX file checked against the recorded sha256, the preprocessing the export recorded)
and prepare images with `champion.ingest.decode`, the function training and serving use.

    sources.py   SOURCE (a file, a folder, a list file, s3://bucket/prefix) → images, streamed
    batches.py   images → decoded in parallel → ONNX Runtime in batches → probabilities, in order
    writers.py   rows → CSV, JSONL or Parquet, streamed
    evaluation.py  labelled images → metrics, the report and its comparison with training's figures
"""
