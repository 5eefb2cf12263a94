"""Data: text files become versioned, cleaned, deduplicated and split datasets.

Import from here; the modules behind these names are internals. Names load on first use
(this package is imported by every ingest worker process, which needs none of the store).

- ``parse_recipe`` / ``load_recipe`` -> ``Recipe`` (or ``RecipeError``): check a recipe.
- ``run_ingest(sources, recipe, workdir)``: the ingest itself, without jobs or the store.
- ``DatasetService``, ``IngestRequest``: datasets in the store, as every face uses them.
- ``fetch_dataset(ctx, name, version, dest)``: a version's shards inside a job.
- ``Step``, ``StepParams``: the base classes of recipe steps (``llmos.data_steps``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Recipe": ("llmos.data.recipe", "Recipe"),
    "RecipeError": ("llmos.data.recipe", "RecipeError"),
    "load_recipe": ("llmos.data.recipe", "load_recipe"),
    "parse_recipe": ("llmos.data.recipe", "parse_recipe"),
    "run_ingest": ("llmos.data.ingest", "run"),
    "DatasetService": ("llmos.data.datasets", "DatasetService"),
    "IngestRequest": ("llmos.data.datasets", "IngestRequest"),
    "fetch_dataset": ("llmos.data.fetch", "fetch_dataset"),
    "Step": ("llmos.data.steps", "Step"),
    "StepParams": ("llmos.data.steps", "StepParams"),
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from llmos.data.datasets import DatasetService, IngestRequest
    from llmos.data.fetch import fetch_dataset
    from llmos.data.ingest import run as run_ingest
    from llmos.data.recipe import Recipe, RecipeError, load_recipe, parse_recipe
    from llmos.data.steps import Step, StepParams


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmos.data' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value
