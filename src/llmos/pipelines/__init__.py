"""Pipelines: data-flow graphs of jobs with cached steps, gates, triggers and promotion.

The public surface: :class:`PipelineService` (what the faces call) and the file's model
(:func:`load`). Inside: ``spec`` (the file), ``plan`` (checks before running), ``steps``
and ``control`` (what each program means), ``engine`` (runs move forward), ``triggers``
and ``schedule`` (runs start on their own), ``expr`` (the ``when:`` language), ``lineage``.
"""

from llmos.pipelines.service import PipelineService
from llmos.pipelines.spec import PipelineSpec, load

__all__ = ["PipelineService", "PipelineSpec", "load"]
