"""Repository scripts (benchmarks, data, GPU-machine helpers), run from the repo root as
`python -m scripts.<name>`: the repo root is then on the import path, so none edits sys.path."""
