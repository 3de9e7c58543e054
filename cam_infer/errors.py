"""The one exception type for errors a user can cause."""


class CamInferError(Exception):
    """A problem with what the user gave (a path, a model, a layer, an image, an option).

    The message says what is wrong and what to do; the CLI prints it on one line.
    """


class UnreadableImage(CamInferError):
    """An image file that does not exist or cannot be decoded; bulk runs record it and go on."""


class NotInImage(CamInferError):
    """What was asked of every image of a run is not in this one (a segmenter's class it does not show); bulk runs
    record it for that image and go on."""


class MethodNotApplicable(CamInferError):
    """A method that cannot run on this bundle (``cam`` on a head that is not GAP→linear, ...)."""


class ClassAgnosticWarning(UserWarning):
    """A class was asked of a class-agnostic method: its one map per image ignores it."""


class PrecisionWarning(UserWarning):
    """The precision asked for is not the one the device runs (OpenVINO on a CPU without bf16 runs f32); the
    maps and the records are at the precision that ran, and say so."""
