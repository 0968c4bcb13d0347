"""Build a teacher cache of the toy task; optionally SIGKILL itself after a given shard is saved.

    python cache_build.py CACHE_DIR [--kill-after-shard N] [--in-shard]

``--in-shard`` kills inside the next shard's save instead (after its Arrow file is half made).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import ToyTask, collate, tiny_bert  # noqa: E402

from distill_toolkit import DistillationConfig, Match  # noqa: E402
from distill_toolkit.data.cache import with_ids  # noqa: E402
from distill_toolkit.teachers import cache_build  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir")
    parser.add_argument("--kill-after-shard", type=int)
    parser.add_argument("--in-shard", action="store_true")
    args = parser.parse_args()

    def on_shard(index):
        if index != args.kill_after_shard:
            return
        if not args.in_shard:
            os.kill(os.getpid(), signal.SIGKILL)
        original = cache_build.write_shard

        def dying(final, columns, kinds):  # leave a half-made shard folder behind, then die
            tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
            tmp.mkdir(parents=True)
            (tmp / "data-00000-of-00001.arrow").write_bytes(b"\0" * 100)
            os.kill(os.getpid(), signal.SIGKILL)
            original(final, columns, kinds)

        cache_build.write_shard = dying

    cache = build(args.cache_dir, on_shard)
    print("built", cache.build_stats)


def build(cache_dir, on_shard=None):
    distillation = DistillationConfig(temperature=2.0, matches=[Match(teacher_layer=4, student_layer=2,
                                                                      projection="linear")])
    return cache_build.build_teacher_cache(
        tiny_bert(4, 48, seed=1), with_ids(ToyTask(40)), cache_dir, collate_fn=collate,
        distillation=distillation, shard_size=8, batch_size=4, on_shard=on_shard)


if __name__ == "__main__":
    main()
