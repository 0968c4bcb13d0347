"""Teachers are placed, not trained: the runner (the only place a teacher forward runs), placement
(replicated / zero3 / fsdp / cpu_offload), the teacher-cache build and sequence-level KD data."""

from distill_toolkit.teachers.cache_build import build_teacher_cache
from distill_toolkit.teachers.completions import teacher_completions
from distill_toolkit.teachers.placement import build_teacher, place_teacher, prepare_student_config
from distill_toolkit.teachers.runner import TeacherRunner, freeze, named_teachers
from distill_toolkit.teachers.served import ServedTeacher, ServedTeacherError, served_teacher_from_spec

__all__ = ["ServedTeacher", "ServedTeacherError", "TeacherRunner", "build_teacher", "build_teacher_cache", "freeze",
           "named_teachers", "place_teacher", "prepare_student_config", "served_teacher_from_spec",
           "teacher_completions"]
