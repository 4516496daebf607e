"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any


# In every temporary file name: a cleanup must never take a user's `.history.20241128.json`.
_TEMPORARY_MARK = "kcap-tmp-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` on success.

    The temporary name keeps the final suffix, so writers that look at it
    (Keras wants `.keras` / `.weights.h5`) accept it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{_TEMPORARY_MARK}", suffix="".join(path.suffixes))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            _fsync(tmp_path)
        except Exception as error:
            if _is_out_of_space(error):
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on device while writing {path} "
                    f"({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there). The file it "
                    "replaces is untouched: free some space and rerun the same command.",
                ) from error
            raise
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_temporary_name(name_pattern: str) -> re.Pattern:
    """What `atomic_path` names its temporary files for final names matching `name_pattern`.

    `*` in the pattern stands for any characters. A killed writer leaves such a
    file behind; nothing else matches, so a cleanup never touches a user's files.

    Example: `atomic_temporary_name("model.keras").match(".model.kcap-tmp-k3x_9q2a.keras")`
    matches; `.model_notes.txt` and `.model.backup_1.keras` do not.
    """
    name = PurePath(name_pattern)
    suffixes = "".join(name.suffixes)
    stem = name.name[: len(name.name) - len(name.suffix)]
    # mkstemp's random part: eight of [a-z0-9_].
    return re.compile(rf"^\.{_glob(stem)}\.{_TEMPORARY_MARK}[a-z0-9_]{{8}}{_glob(suffixes)}$")


def _glob(text: str) -> str:
    return re.escape(text).replace(r"\*", "[^/]*")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary directory that replaces `path` once the block succeeds.

    With `replace=False`, a `path` that holds files by then (another process wrote
    it meanwhile) is left as it is, and the block's work is dropped with an error.
    The temporary folders (`.NAME.xxxx`, and `.NAME.old.xxxx` while an old `path` is
    swapped out) name their process and host in their own name, so a folder is never
    without its owner, even for a process killed the instant it made the folder; the
    next `atomic_directory` for the same `path` removes those whose process has died.
    """
    path = Path(path)
    resolved, here = path.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        # Replaced whole, it would leave the shell in a deleted folder.
        raise ValueError(
            f"{resolved} is the current folder{'' if resolved == here else ' or holds it'}, which would be "
            f"replaced whole; give a folder below it, e.g. {Path(path, 'out')}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(path)
    tmp = _make_staging(path, "")
    try:
        yield tmp
        if not replace and path.is_dir() and any(path.iterdir()):
            raise FileExistsError(
                f"{path} was written by another process while this one worked; it is left as it is. "
                "Run again with --force to replace it."
            )
        if path.exists():
            old = _make_staging(path, "old.")
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive_use(folder: str | Path, what: str = "kcap process") -> Iterator[None]:
    """Holds an exclusive lock on `folder` for the block; a second holder is refused at once.

    The lock is the operating system's (`flock` on the folder itself), so it ends with
    its process however that ends: a killed run never leaves a stale lock. Where the
    file system has no such locks (some network file systems), the block runs unlocked.

    Example: `with exclusive_use("runs/a"): ...` while `kcap train` writes `runs/a`.
    """
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"{folder} is in use by another {what}; wait for it to finish, or choose another folder."
            ) from None
        except OSError:
            pass  # no locks on this file system
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _host_tag() -> str:
    # A digest, not the host name itself: a host name may hold characters a file name should not.
    return hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:12]


def _make_staging(path: Path, kind: str) -> Path:
    # mkdtemp creates the folder under its final name in one step, owner included: no window
    # in which a kill leaves a folder that names nobody.
    owner = f".kcap-{os.getpid()}-{_host_tag()}"
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{kind}", suffix=owner))
    # mkdtemp creates 0700; the folder it becomes gets what a plain mkdir would give (a model
    # server running as another user must be able to read an export).
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def remove_abandoned_staging(path: str | Path) -> list[Path]:
    """Removes `atomic_directory`'s temporary folders for `path` left by dead processes on this host.

    Folders of live processes, of other hosts (a shared file system) or not named the
    way kcap names them are left alone. Returns the folders removed.
    """
    path = Path(path)
    staging_name = re.compile(re.escape(f".{path.name}.") + r"(?:old\.)?[a-z0-9_]+\.kcap-(\d+)-([0-9a-f]{12})")
    removed = []
    for folder in path.parent.iterdir():
        owner = staging_name.fullmatch(folder.name)
        if owner is None or not folder.is_dir():
            continue
        pid, host = int(owner.group(1)), owner.group(2)
        if host != _host_tag() or _process_alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # os.kill would signal a process group: treat as alive, keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _is_out_of_space(error: BaseException) -> bool:
    # h5py and TensorFlow report ENOSPC in their own exception types, errno inside the message.
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_json(path: str | Path, what: str = "File") -> Any:
    """Parses a JSON file; a missing file or bad JSON is an error naming the path (and line).

    Example: `read_json("space.json", "Search space file")`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{what} {path} is a folder; give the JSON file itself.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}).") from None
