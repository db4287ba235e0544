"""`champion run`: every stage in order, each one the same function its step command calls.

ingest → train → Quality Gate 1 → register @champion → export → Quality Gate 2 → register
<name>-onnx @deploy → model card. A Gate 1 rejection skips export (there is no new champion to
ship) but still writes the model card, which records why the candidate lost.
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
        else:  # RESULT stays Gate 1's verdict; GATE2_RESULT and the exit code tell the rest
            out.exit_code = EXIT_GATE2_REJECTED
    else:
        out.exit_code = EXIT_GATE1_REJECTED
    card_path = card.write_card(trained.run_id, card_dir)
    out.outputs["MODEL_CARD"] = str(card_path)
    return out
