"""Running the step commands as an Argo Workflow: the WorkflowTemplate (`argo`), its checker
(`spec`), a local executor for the same YAML (`local`) and the step commands' workflow mode (`mode`).

Nothing heavy is imported here: the CLI reads `mode` on every command.
"""
