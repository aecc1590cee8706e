"""Errors of the export: a failed conversion or verification, Flex ops."""


class FlexOpsError(ValueError):
    """The converted model needs TensorFlow (Flex / "select TF") ops.

    Such a model only runs with a LiteRT runtime linked with the Flex
    delegate (larger binary, not available on microcontrollers).
    """


class ExportError(RuntimeError):
    """The conversion failed or the converted model failed verification."""
