"""Every name champion writes into MLflow or a deployment, spelled once.

Aliases, registered-model name suffixes, run and model-version tag keys, and the file names inside
artefacts are a protocol: other steps, other releases and other tools (Argo, Triton, scripts that
search runs) read them. Like `mlflow.utils.mlflow_tags`, this module is the only place a name is
written; every module imports it. Changing a value here changes the protocol.
"""

from __future__ import annotations

# --- aliases ------------------------------------------------------------------------------------
CHAMPION_ALIAS = "champion"  # on <name>: the version Quality Gate 1 promoted
PREVIOUS_ALIAS = "previous_champion"  # on <name>: the champion before the last promotion
DEPLOY_ALIAS = "deploy"  # on <name>-onnx and <name>-onnx-int8: the version to serve

# --- registered-model names ---------------------------------------------------------------------
ONNX_SUFFIX = "-onnx"  # <name>-onnx: exports that passed Quality Gate 2
INT8_SUFFIX = "-onnx-int8"  # <name>-onnx-int8: int8 exports that passed the int8 gate
LEASE_SUFFIX = "@lease"  # <name>@lease: the registered model whose versions are the lease's tickets
RESERVED_SUFFIXES = (INT8_SUFFIX, ONNX_SUFFIX)  # a model.name may end in neither (it would collide)


def onnx_name(model: str) -> str:
    """The registered model that holds `model`'s validated ONNX exports."""
    return f"{model}{ONNX_SUFFIX}"


def int8_name(model: str) -> str:
    """The registered model that holds `model`'s int8 exports that passed the int8 gate."""
    return f"{model}{INT8_SUFFIX}"


def lease_name(model: str) -> str:
    """The registered model that serialises `model`'s alias moves."""
    return f"{model}{LEASE_SUFFIX}"


def is_lease_model(registered_model) -> bool:
    """True for a lease's registered model (by its tag, or by a name champion cannot give a model)."""
    return registered_model.name.endswith(LEASE_SUFFIX) or LEASE_OWNER in (registered_model.tags or {})


def deploy_suffix(registered: str) -> str | None:
    """The suffix of a registered model that holds an @deploy alias, or None for a trained model."""
    for suffix in RESERVED_SUFFIXES:
        if registered.endswith(suffix):
            return suffix
    return None


def served_names(model_name: str) -> tuple[str, str]:
    """(the name servers serve it as, the registered ONNX model) for a --model-name.

    NAME or NAME-onnx: (NAME, NAME-onnx). NAME-onnx-int8: (NAME-int8, NAME-onnx-int8), the int8 model.
    """
    if model_name.endswith(INT8_SUFFIX):
        return f"{model_name.removesuffix(INT8_SUFFIX)}-int8", model_name
    base = model_name.removesuffix(ONNX_SUFFIX)
    return base, onnx_name(base)


def base_name(registered: str) -> str:
    """The trained model's name behind a registered name (`x-onnx`, `x-onnx-int8` and `x` all give `x`)."""
    suffix = deploy_suffix(registered)
    return registered.removesuffix(suffix) if suffix else registered


# --- run and model-version tags -------------------------------------------------------------------
MODEL_URI = "model_uri"  # on training, export and int8 runs: the logged model
RUN_ID = "run_id"  # on a registered version: the run it was registered for (not always MLflow's run_id)
PARENT_RUN_ID = "parent_run_id"  # on export and int8 runs and ONNX versions: the training run
PARENT_MODEL_NAME = "parent_model_name"
PARENT_MODEL_VERSION = "parent_model_version"
PARENT_EXPORT_RUN_ID = "parent_export_run_id"  # on int8 runs and versions: the float export
DATA_DIGEST = "data.digest"  # the cache entry the run trained (or judged) on
DATA_SOURCE = "data.source"
GIT_COMMIT = "git.commit"
GIT_BRANCH = "git.branch"
GIT_DIRTY = "git.dirty"
FINGERPRINT = "training.fingerprint"  # identical-training key (champion.train.reuse)
CHECKPOINT_DATA_DIGEST = "checkpoint.data_digest"  # on a run trained from a checkpoint: what the checkpoint saw
CHECKPOINT_RUN_ID = "checkpoint.run_id"
REUSED_RUN_ID = "reused_run_id"  # on a run that reused an identical one: that run
ATTEMPT = "champion.attempt"  # which process attempt wrote the run (champion.registry.outage)
POLICY = "champion.policy"  # on a registered model: the stored promotion policy
LEASE_OWNER = "champion.lease"  # on <name>@lease: the model whose lease it is
ONNX_SHA256 = "onnx_sha256"  # on <name>-onnx and <name>-onnx-int8 versions: the verified file tree's hash
ONNX_SIZE = "onnx_size_bytes"
MODEL_SHA256 = "model_sha256"  # on <name> versions: the content hash of the registered model's files
MODEL_SIZE = "model_size_bytes"
MODEL_HASH_SCHEME = "model_hash_scheme"
ROLLED_BACK = "rolled_back"  # on a version an alias was rolled back from (with .when, .alias, .event)

GATE1_RESULT = "gate1.result"
GATE1_DECIDED_BY = "gate1.decided_by"
GATE1_METRIC = "gate1.metric"
GATE1_VALUE = "gate1.value"
GATE1_MODEL_VERSION = "gate1.model_version"
GATE1_PREVIOUS_CHAMPION = "gate1.previous_champion"

EXPORT_RUN_ID = "export.run_id"
EXPORT_REASON = "export.reason"
EXPORT_CURRENT_CHAMPION = "export.current_champion_version"  # on the export run: @champion when it was exported
ONNX_EXTERNAL_DATA_TAG = "onnx.external_data"  # on the export run: true when the weights sit beside the graph

GATE2_RESULT = "gate2.result"
GATE2_MODEL_VERSION = "gate2.model_version"
GATE2_DEPLOY = "gate2.deploy"  # why @deploy did not move after a pass

INT8_RESULT = "int8.result"  # on the export run: the int8 gate's verdict
INT8_RUN_ID = "int8.run_id"
INT8_MODEL_VERSION = "int8.model_version"
INT8_MODEL_URI = "int8.model_uri"
INT8_CALIBRATION_SOURCE = "int8.calibration_source"  # on the int8 run
INT8_CALIBRATION_SAMPLES = "int8.calibration_samples"
INT8_GATE_RESULT = "int8_gate.result"  # on a <name>-onnx-int8 version: what deploy triton and serve require
INT8_GATE_DEPLOY = "int8_gate.deploy"  # why @deploy did not move after a pass

WORKFLOW_PREFIX = "workflow."  # every tag a workflow step adds to its runs
WORKFLOW_STEP_ID = "workflow.step_id"
WORKFLOW_SUPERSEDED = "workflow.superseded"

# --- file names inside artefacts ------------------------------------------------------------------
CONFIG_FILE = "config.yaml"  # the training run's resolved config
GATE1_REPORT = "gate_report.json"
GATE2_REPORT = "validation_report.json"
GATE2_FAILURE_REPORT = "validation_failure_report.json"
INT8_REPORT = "int8_gate_report.json"
EXPORT_RECORD = "metadata.json"  # champion.stages.record.ExportRecord, beside the exported files
EVALUATION_FILE = "evaluation.json"
MODEL_CARD_DIR = "model_card"
ONNX_FILE = "model.onnx"
ONNX_EXTERNAL_DATA = "model.onnx.data"
