"""Running the step commands under an orchestrator.

In: a config and options. Out: YAML for the cluster, or a local run of that YAML.

    argo.render(cfg, options)        `champion workflow argo`: the WorkflowTemplate, built with hera
    spec.check(doc)                  is a WorkflowTemplate valid Argo (names, references, keys)?
    local.run(doc, ...)              `champion workflow run-local`: the DAG on this machine (`executor`)
    training_job.training_job(...)   `champion deploy training-job`: a Kubernetes Job
    mode                             workflow mode: how a step tells a rejection from a crash (exit codes)

Nothing heavy is imported here: the CLI reads `mode` on every command.
"""
