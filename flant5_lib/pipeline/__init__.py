"""The release pipeline: train, evaluate the candidate and the incumbent on the same test examples, gate on the
paired comparison, register a new version of the same model, deploy. See docs/release-pipeline.md.

`gate` and `registry` are plain Python (fast to test); `steps` is what each pipeline step runs; `graph` turns the
steps into Kubeflow Pipelines v2 components on the project's training image and compiles them; `runner` runs the
graph offline with `kfp.local` or submits it to Vertex AI Pipelines. This room sits above `train` and `vertex`:
nothing in the package imports it but the CLI.
"""
