"""Exceptions for bad input messages. The node catches `InputError`, logs it (throttled) and
counts it by `kind` in its diagnostics; it never stops for one."""
from __future__ import annotations


class InputError(ValueError):
    """A message the node cannot use; `kind` names the counter it goes to."""

    kind = "bad_input"


class EncodingError(InputError):
    kind = "bad_encoding"


class TruncatedDataError(InputError):
    kind = "truncated"


class SizeChangedError(InputError):
    kind = "size_changed"


class NonFiniteError(InputError):
    kind = "non_finite"


class CameraInfoError(InputError):
    kind = "bad_camera_info"


class MissingInputError(InputError):
    """Something a frame needs has not arrived yet (CameraInfo, a transform)."""

    kind = "missing_input"
