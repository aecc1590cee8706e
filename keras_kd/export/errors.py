"""Errors of the export: a failed conversion or verification, Flex ops."""


class FlexOpsError(ValueError):
    """The converted model needs TensorFlow (Flex / "select TF") ops.

    Such a model only runs with a LiteRT runtime linked with the Flex
    delegate (larger binary, not available on microcontrollers).
    """


class ExportError(RuntimeError):
    """The conversion failed or the converted model failed verification."""


class FloatOpsError(ExportError):
    """An int8 export holds ops that compute in float.

    ``quantize="int8"`` promises a fully int8 file; the converter keeps the
    float kernel of a layer it cannot quantize (wrapped in DEQUANTIZE /
    QUANTIZE) without failing, so the export reads its own file's op list
    and refuses such a file unless ``allow_float_ops=True``.
    """
