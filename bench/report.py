"""docs/BENCHMARKS.md and its charts from a results JSON (filled in below)."""


def write(path, before=None):  # noqa: ANN001, ANN201
    pass
