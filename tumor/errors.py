"""Exception types of the tumor library.

Every failure a person can cause (a bad upload, missing weights) raises one of
these, with a message that says what was wrong and what to do about it.
"""


class TumorError(Exception):
    """Base class for every error the library raises on purpose."""


class InputError(TumorError, ValueError):
    """The image, DICOM or NIfTI the user gave cannot be analysed."""


class WeightsError(TumorError):
    """Model weights are missing, tampered with or do not match the registry."""
