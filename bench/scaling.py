"""docs/SCALING.md's model from a results JSON (filled in below)."""


def write(path):  # noqa: ANN001, ANN201
    pass
