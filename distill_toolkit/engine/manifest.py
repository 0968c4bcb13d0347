"""Checkpoint integrity: a manifest of every file's size and SHA-256, checked before anything is read.

:func:`seal` runs once every rank has written its files: it writes ``MANIFEST.json`` and then
the ``COMPLETE`` marker, which holds the manifest's own SHA-256 (so a damaged manifest or
marker is caught too). :func:`manifest_problems` lists what is wrong with a folder: a missing,
truncated or altered file, a file the manifest does not list, or any pickle, which
distill_toolkit never writes and never loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "MANIFEST.json"
MARKER = "COMPLETE"  # written last, after the manifest: a folder without it was never finished
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint (or the output folder holding it) cannot be used; the message names the file and the fix."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def seal(folder: Path) -> str:
    """Write MANIFEST.json (``{relative path: {size, sha256}}`` of every file) and then the COMPLETE marker.

    The marker holds the manifest's SHA-256, which is returned.
    """
    entries = {}
    for path in _files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel not in (MANIFEST, MARKER):
            entries[rel] = {"size": path.stat().st_size, "sha256": sha256(path)}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": entries}, indent=1))
    digest = sha256(folder / MANIFEST)
    (folder / MARKER).write_text(digest)
    return digest


def manifest_problems(folder: Path) -> list[str]:
    """What is wrong with sealed ``folder``, one line per file; empty when it is intact.

    Pickles are reported first and their content is never read. Then the manifest must match
    the SHA-256 in the marker, and every file must match its manifest entry.
    """
    pickles = [p.relative_to(folder).as_posix() for p in _files(folder) if p.suffix == ".pkl"]
    if pickles:
        return [f"{name}: a pickle file; distill_toolkit never writes one into a checkpoint and will not load it "
                "(unpickling can run arbitrary code)" for name in pickles]
    entries, problem = _read_manifest(folder)
    if problem:
        return [problem]
    problems = [_entry_problem(folder, rel, entry) for rel, entry in sorted(entries.items())]
    problems = [p for p in problems if p]
    listed = set(entries) | {MANIFEST, MARKER}
    for path in _files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: unexpected file, not written with this checkpoint (not in {MANIFEST})")
    return problems


def _read_manifest(folder: Path) -> tuple[dict, str]:
    """The manifest's entries, or a problem naming MANIFEST.json / COMPLETE."""
    if not (folder / MANIFEST).is_file():
        return {}, f"{MANIFEST}: missing (the checkpoint was written by an older distill_toolkit, or damaged)"
    try:
        recorded = (folder / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        return {}, f"{MARKER}: unreadable ({err})"
    if sha256(folder / MANIFEST) != recorded:
        return {}, (f"{MANIFEST} or {MARKER}: damaged (the manifest's SHA-256 is not the one {MARKER} records, "
                    "so no file of this checkpoint can be trusted)")
    try:
        entries = json.loads((folder / MANIFEST).read_text())["files"]
        if not isinstance(entries, dict):
            raise ValueError("`files` is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return {}, f"{MANIFEST}: unreadable ({err})"
    return entries, ""


def _entry_problem(folder: Path, rel: str, entry: dict) -> str:
    """One manifest entry checked: '' when the file is there with its recorded size and hash."""
    path = folder / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"{rel}: path outside the checkpoint folder in {MANIFEST}"
    if path.is_symlink() or not path.is_file():
        return f"{rel}: missing" if not path.exists() and not path.is_symlink() else f"{rel}: not a regular file"
    try:
        size, digest = int(entry["size"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        return f"{rel}: malformed entry in {MANIFEST}"
    actual = path.stat().st_size
    if actual != size:
        kind = "truncated" if actual < size else "grown"
        return f"{rel}: {kind} ({actual} bytes, {size} when written)"
    if sha256(path) != digest:
        return f"{rel}: content changed since it was written (same size, different SHA-256): the file is damaged"
    return ""
