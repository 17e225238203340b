"""One small exception hierarchy: the CLI turns a `UserError` into one line and exit code 2."""

from __future__ import annotations


class Flant5Error(Exception):
    """Root of every error this project raises on purpose."""


class CheckError(Flant5Error):
    """A step ran but what it produced is wrong or missing (a notebook's final check); names every problem."""


class UserError(Flant5Error):
    """A mistake the user can fix (bad params, missing file, bad JSON...). Exit code 2, no traceback."""

    exit_code = 2


class ParamsError(UserError):
    """Parameters that do not validate; the message names every bad field."""


class DataError(UserError):
    """A dataset that cannot be read: names the file, row or column and the fix."""


class ModelError(UserError):
    """A model or tokenizer folder that cannot be loaded."""


class CloudError(UserError):
    """Google Cloud / Vertex AI settings or API answers the user must act on."""
