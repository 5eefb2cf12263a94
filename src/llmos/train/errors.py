"""The errors a user can cause in training and evaluation, one type per kind of mistake.

Each is an ``llmos.errors.InvalidRequest`` (the API answers 422 with the message) and a
``ValueError`` (plain Python callers catch what they expect). The kernel shows a failed
job as ``TypeName: message``, so every message names the field, row, file or step at fault.
This module holds no logic.
"""

from __future__ import annotations

from llmos.errors import InvalidRequest


class TrainError(InvalidRequest, ValueError):
    """Base of every error this library raises on purpose."""


class RecipeError(TrainError):
    """A training recipe that cannot run; the message names the field and why."""


class DataError(TrainError):
    """Training or validation rows that cannot be used: a missing column, an empty text,
    an unknown label, bad BIO tags ..."""


class ModelError(TrainError):
    """A model folder that cannot be trained: missing files, weights that are not
    safetensors, a tokenizer that does not fit the model."""


class TrainingDiverged(TrainError):
    """The loss became NaN or infinite; nothing is exported."""
