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


class MMMergeWarning(UserWarning):
    """Base class of warnings: the CLI prints `warning: <message>` on stderr, whatever --quiet says."""


class UntrainedProjectorWarning(MMMergeWarning):
    """A stitched model's projector is new and was neither loaded nor fitted: its answers are noise."""


class UnsafeOutputError(MMMergeError):
    """Writing the output folder would destroy or change something that must be kept (an input, the working
    folder, a folder mmmerge did not write)."""


class OutputBusyError(MMMergeError):
    """Another mmmerge run holds the lock on the same output folder."""


class RankFailedError(MMMergeError):
    """Under torchrun, another rank failed or stopped answering, so this one stops too."""


class NonFiniteError(MMMergeError):
    """An input tensor (or a value given for the merge) holds NaN or inf."""


class ImageTooLargeError(UnreadableFileError):
    """An image's header declares more pixels than the limit: it is refused before it is decoded."""


class DeviceError(MMMergeError):
    """A device name torch does not know, or one this machine does not have."""
