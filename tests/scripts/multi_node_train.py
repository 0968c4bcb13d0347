"""``dist_train.py`` for the multi-node tests, plus what the launcher of this "node" told the rank.

    multi_node_train.py OUTPUT_DIR [dist_train.py options]

Before training, every rank writes OUTPUT_DIR/launch_rank{RANK}.json with the variables torchrun
(under ``accelerate launch``) set for it: its node (GROUP_RANK), its local rank and the number of
processes on its node, the world size and the rendezvous address. Each launcher is one machine, so
two launchers of one process each must show GROUP_RANK 0 and 1, LOCAL_WORLD_SIZE 1 and WORLD_SIZE 2.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
        "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


def _dist_train():
    spec = importlib.util.spec_from_file_location("dist_train", Path(__file__).with_name("dist_train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    seen = {key: os.environ.get(key) for key in KEYS}
    seen["pid"], seen["ppid"] = os.getpid(), os.getppid()
    (out / f"launch_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))
    return _dist_train().run(argv)


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
