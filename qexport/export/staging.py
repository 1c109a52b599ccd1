"""Staging folders beside an output, and removal of the ones a killed run left behind.

A run writes `.NAME.qexport-PID-XXXX.partial` (the artifact being built) and, while swapping
an old artifact out, `.NAME.qexport-PID-XXXX.old` (holding it as `x`), each with a marker
file written first. The next run on the same output removes such a folder only when it can
prove it is ours: the exact name pattern for that output, owned by this user, the process PID
dead, and either our marker naming this output inside, or nothing inside, or (a staging
folder killed just before its rename) a complete qexport artifact. An `.old` whose output is
missing is put back (the killed run had not replaced it yet).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..manifest import MANIFEST_NAME, ManifestError, read_manifest

STAGING_MARKER = ".qexport-staging"
KINDS = ("partial", "old", "probe")


def staging_prefix(out: Path) -> str:
    return f".{out.name}.qexport-{os.getpid()}-"


def _pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(out.name)}\.qexport-(\d+)-[a-z0-9_]+\.({'|'.join(KINDS)})")


def current_umask() -> int:
    """The process umask (from /proc on Linux; elsewhere set and restored at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path, umask: int) -> None:
    """Give `folder` and everything in it the modes a plain mkdir/open would have had
    (tempfile.mkdtemp makes 0700, and copied files keep their source's mode)."""
    os.chmod(folder, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~umask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~umask)


def marked_folder(out: Path, suffix: str) -> Path:
    """A new staging folder beside `out` with our marker (naming `out`) inside."""
    folder = Path(tempfile.mkdtemp(prefix=staging_prefix(out), suffix=suffix, dir=out.parent))
    os.chmod(folder, 0o777 & ~current_umask())
    (folder / STAGING_MARKER).write_text(f"{out}\n", encoding="utf-8")
    return folder


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` (serialises cleanup and swap between our runs)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def foreign_entry(out: Path) -> str | None:
    """None when `out` is a qexport artifact: its manifest parses and the folder holds only
    the files it lists (and the folders above them); else the reason it is not."""
    try:
        manifest = read_manifest(out)
    except ManifestError as exc:
        return f"its {MANIFEST_NAME} is missing or invalid ({str(exc)[:120]})"
    allowed = {*manifest.files, MANIFEST_NAME}
    folders = {str(p) for f in allowed for p in Path(f).parents} - {"."}
    for dirpath, dirnames, filenames in os.walk(out):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, out)
            if os.path.islink(path):
                return f"it holds the symbolic link {rel!r}"
            if rel not in (folders if os.path.isdir(path) else allowed):
                return f"it holds {rel!r}, which its manifest does not list"
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(folder: Path, out: Path, kind: str) -> bool:
    marker = folder / STAGING_MARKER
    if marker.is_file() and not marker.is_symlink():
        return marker.read_text(encoding="utf-8", errors="replace").strip() == str(out)
    if not any(folder.iterdir()):
        return True
    return kind == "partial" and foreign_entry(folder) is None


def clean_stale(out: Path) -> list[Path]:
    """Remove what killed runs on `out` left beside it (see the module doc); returns what
    was removed. Anything not provably ours, or of a live process, is left alone."""
    removed = []
    with locked(out.parent):
        for entry in os.scandir(out.parent):
            m = _pattern(out).fullmatch(entry.name)
            if not m or entry.is_symlink() or not entry.is_dir() or _alive(int(m[1])):
                continue
            folder = Path(entry.path)
            if entry.stat().st_uid != os.getuid() or not _ours(folder, out, m[2]):
                continue
            if m[2] == "old" and os.path.lexists(folder / "x") and not os.path.lexists(out):
                os.replace(folder / "x", out)  # the killed run had not replaced it yet
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
