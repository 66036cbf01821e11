"""Errors a user can act on: every one is a single line naming the file, tensor or parameter."""


class MMMergeError(Exception):
    """Base class: the CLI prints `error: <message>` and exits with code 2."""


class UnknownFormatError(MMMergeError):
    """The path exists but matches none of the formats mmmerge reads."""


class UnreadableFileError(MMMergeError):
    """A file exists but cannot be parsed (truncated, corrupt, wrong type)."""


class UnsafeCheckpointError(MMMergeError):
    """A pickle would run code or build objects beyond plain tensors; it is never unpickled."""


class UnsupportedArchitectureError(MMMergeError):
    """A recognised format holds a variant no adapter maps (e.g. an open_clip ViT with attention pooling)."""


class OutputExistsError(MMMergeError):
    """The output folder is not empty and overwriting was not asked for."""


class ShapeMismatchError(MMMergeError):
    """Two tensors that must agree in shape do not."""


class RecipeError(MMMergeError):
    """A recipe or a parameter is invalid."""
