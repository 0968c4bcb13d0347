"""Teacher cache: an interrupted write followed by a build for something else starts over cleanly; a cache
missing one of its files is refused with the path and the rebuild command."""

import re
import shutil

import pytest
import torch

from distill_toolkit import DistillationConfig, Match
from distill_toolkit.data.cache import TeacherCache, TeacherCacheError, with_ids
from distill_toolkit.teachers import build_teacher_cache

from helpers import ToyTask, collate, tiny_bert

DIST = DistillationConfig(temperature=2.0, matches=[Match(teacher_layer=2, student_layer=1, projection="linear")])


def _build(path, seed, on_shard=None):
    return build_teacher_cache(tiny_bert(2, 32, seed=seed), with_ids(ToyTask(24)), path, collate_fn=collate,
                               distillation=DIST, shard_size=8, batch_size=8, on_shard=on_shard)


class Interrupted(Exception):
    pass


def _interrupt_after(shard):
    def on_shard(index):
        if index == shard:
            raise Interrupted
    return on_shard


def test_interrupted_write_then_other_teacher_starts_over(tmp_path):
    path = tmp_path / "cache"
    with pytest.raises(Interrupted):
        _build(path, seed=1, on_shard=_interrupt_after(1))  # shards 0 and 1 written for teacher 1
    assert not path.exists() and (tmp_path / "cache.partial" / "shards" / "shard-00001" / ".done").is_file()
    with pytest.raises(TeacherCacheError, match="unfinished write"):
        TeacherCache.open(path)
    other = _build(path, seed=2)  # another teacher: the finished shards of teacher 1 must not be reused
    assert other.build_stats == {"shards_written": 3, "shards_reused": 0}
    assert not (tmp_path / "cache.partial").exists()
    fresh = _build(tmp_path / "fresh", seed=2)
    assert TeacherCache.open(path).fingerprint == fresh.fingerprint
    for a, b in zip(other.records(range(24)), fresh.records(range(24))):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other.check(teacher=tiny_bert(2, 32, seed=2))
    # the same teacher again resumes instead: only the missing shard is computed
    with pytest.raises(Interrupted):
        _build(tmp_path / "again", seed=1, on_shard=_interrupt_after(0))
    assert _build(tmp_path / "again", seed=1).build_stats == {"shards_written": 2, "shards_reused": 1}


def test_cache_missing_a_file_is_refused_with_path_and_fix(tmp_path):
    path = tmp_path / "cache"
    _build(path, seed=1)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    arrow = next((broken / "shards" / "shard-00002").glob("*.arrow"))
    arrow.unlink()
    missing = rf"corrupted: {re.escape(str(arrow))} is missing.*cache-teacher CONFIG.yaml --overwrite"
    with pytest.raises(TeacherCacheError, match=missing):
        TeacherCache.open(broken)
    unreadable = rf"teacher cache {re.escape(str(broken))} cannot be read.*cache-teacher"
    with pytest.raises(TeacherCacheError, match=unreadable):
        TeacherCache.open(broken, verify="none")  # not even checked: reading the Arrow data fails, still refused
    # the rebuild the message names replaces it
    rebuilt = build_teacher_cache(tiny_bert(2, 32, seed=1), with_ids(ToyTask(24)), broken, collate_fn=collate,
                                  distillation=DIST, shard_size=8, batch_size=8, overwrite=True)
    assert rebuilt.build_stats["shards_written"] == 3 and len(TeacherCache.open(broken)) == 24
