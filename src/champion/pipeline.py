"""`champion run`: every stage in order, each one the same function its step command calls.

ingest → train → Quality Gate 1 → register @champion → export → Quality Gate 2 → register
<name>-onnx @deploy → model card. A Gate 1 rejection skips export (there is no new champion to
ship) but still writes the model card, which records why the candidate lost.
With `onnx_int8` in `export.formats`, the int8 gate (`champion.int8_gate`) follows a Gate 2 pass;
its rejection is reported (`INT8_RESULT=failed`), never the run's exit code: the float model has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from champion.config import Config
from champion.errors import EXIT_GATE1_REJECTED, EXIT_GATE2_REJECTED, EXIT_OK


@dataclass
class RunOutcome:
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: int = EXIT_OK


def run(cfg: Config, output_dir: Path, quiet: bool = False, checkpoint: Path | None = None) -> RunOutcome:
    """Every stage; with `checkpoint`, the training stage only evaluates and logs those weights."""
    from champion import card, export, gate, train, validate
    from champion.progress import say

    out = RunOutcome()
    card_dir = card.claim_dir(output_dir / cfg.model.name / "model_card")  # refused before, not after, training
    trained = train.train(cfg, quiet=quiet, checkpoint=checkpoint)
    if trained is None:  # a DDP worker process: rank 0 runs the gates and the rest
        return out
    out.outputs["RUN_ID"] = trained.run_id
    gate1 = gate.promote(trained.run_id, quiet=quiet)
    out.outputs["RESULT"] = gate1.result
    say(f"Quality Gate 1 {gate1.result}: {gate1.decided_by}", quiet)
    if gate1.passed:
        out.outputs["MODEL_VERSION"] = str(gate1.model_version)
        exported = export.export(cfg.model.name, version=gate1.model_version, quiet=quiet)
        out.outputs["EXPORT_RUN_ID"] = exported.export_run_id
        gate2 = validate.validate(exported.export_run_id, quiet=quiet)
        out.outputs["GATE2_RESULT"] = gate2.result
        diff = gate2.report.get("max_abs_diff")
        detail = f"max |diff| {diff:.2e}" if diff is not None else gate2.report.get("failures", [{}])[0].get("check", "")
        say(f"Quality Gate 2 {gate2.result}: {detail}", quiet)
        if gate2.passed:
            out.outputs["ONNX_MODEL_VERSION"] = str(gate2.model_version)
            if "onnx_int8" in cfg.export.formats:  # its verdict is reported, never the run's exit code
                out.outputs.update(_int8(exported.export_run_id, quiet))
        else:  # RESULT stays Gate 1's verdict; GATE2_RESULT and the exit code tell the rest
            out.exit_code = EXIT_GATE2_REJECTED
    else:
        out.exit_code = EXIT_GATE1_REJECTED
    card_path = card.write_card(trained.run_id, card_dir)
    out.outputs["MODEL_CARD"] = str(card_path)
    return out

def _int8(export_run_id: str, quiet: bool) -> dict[str, str]:
    """The int8 gate (`champion.int8_gate`) on a validated export: INT8_RESULT and what it registered.

    A rejection does not fail the run: the float model has shipped, and INT8_RESULT=failed says the
    int8 one did not.
    """
    from champion import int8_gate
    from champion.progress import say

    result = int8_gate.gate(export_run_id, quiet=quiet)
    say(result.summary(), quiet)
    values = {"INT8_RESULT": result.result}
    if result.int8_run_id:
        values["INT8_RUN_ID"] = result.int8_run_id
    if result.model_version:
        values["INT8_MODEL_VERSION"] = result.model_version
    return values
