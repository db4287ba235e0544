"""Training: fit a classifier with PyTorch Lightning and track it in one MLflow run.

`run` is the stage (`train`, `resume`) and its steps; `module` the LightningModule and its
callbacks; `fit` the Trainer; `report` the final evaluation; `mlflow_log` what a run logs besides
the per-epoch metrics. Around them: `models` and `capsnet` (architectures), `weights` (pretrained
weights) and `approach` (what trains), `loader`, `augment` and `balance` (batches), `checkpoints`,
`cluster` (DDP), `retry` (a retried workflow step) and `reuse` (an identical finished training).
Nothing is imported here, so that the light modules (`reuse`, `retry`) do not pull in torch.
"""
