"""The one error a teacher cache raises, and the fix its messages end with."""

from __future__ import annotations

__all__ = ["REBUILD", "TeacherCacheError"]

#: the fix named by every message about a stale or corrupted cache
REBUILD = ("Fix: rebuild it with `distill-toolkit cache-teacher CONFIG.yaml --overwrite` "
           "(or build_teacher_cache(..., overwrite=True) in Python)")


class TeacherCacheError(RuntimeError):
    """A teacher cache is missing, unfinished, corrupted or stale; the message names the path and the fix."""
