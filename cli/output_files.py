"""Every file a command writes goes through here: `export odm|fhir|csv|ics --out`, `report …
--out` (and the demo's reports, written by the report commands), `audit log --csv FILE`.

- **Never through a link.** A target whose last component is a symbolic link is refused
  (exit 2, `bad_output_path`) before anything is written, whether the link dangles or points
  at a file: `os.replace` would replace the link rather than follow it, but a link where an
  output is to go is a mistake or a trap (planted to make trialflow overwrite another file),
  and either way the user should hear of it. The folder of `export csv` is refused so too and
  opened with `O_NOFOLLOW`, so no file of the export lands elsewhere. A target that is a
  device (`/dev/null`), a pipe or a socket is refused as well: replacing it would put a
  regular file in its place. (`-` is how `audit log --csv` writes to stdout.)
- **Atomically.** The data go to a temporary file created beside the target with
  `O_CREAT | O_EXCL | O_NOFOLLOW` under a random name (nobody can have planted it), are
  flushed and `fsync`ed, and the temporary file is renamed over the target (`os.replace`)
  relative to the folder opened once at the start (the folder cannot be swapped in between);
  the folder is then `fsync`ed so the rename survives a crash. A reader sees the old file or the
  whole new one, never a part; a failure at any step (a full disk, Ctrl-C, an error while the
  data are produced) removes the temporary file and leaves the old file as it was.
- A new file gets the permissions any new file gets (0666 minus the umask), like `open(…,
  "w")`; a replaced file gets them too.

An `OSError` becomes one sentence naming the option (`cli.errors.output_error`: exit 1 when
the system refuses the write, 2 for a path that cannot be written as a file). POSIX only, like
the rest of trialflow (directory descriptors, `fsync` of a folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from workflow.errors import InvalidInput

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMPORARY_STEM = 64  # bytes of the target's name kept in the temporary file's name


PRIVATE = 0o600  # exports hold clinical data: readable by their owner only


def _shown(path: Path | str) -> str:
    """A path for a message: whole up to 200 characters, else its start and its end (where the
    file's own name is)."""
    name = str(path) or "''"
    return name if len(name) <= 200 else name[:60] + "…" + name[-120:]


def _is_link(path: Path | str, *, dir_fd: int | None = None) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def _check_kind(path: Path | str, option: str, shown: Path, *, dir_fd: int | None = None
                ) -> None:
    """Refuse a link, and anything that exists and is neither a regular file nor a folder (a
    device such as /dev/null, a pipe, a socket: replacing it would put a file in its place).
    A folder passes here; where a file is meant, replacing it fails with its own error."""
    try:
        mode = os.lstat(path, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise _link_refused(option, shown)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InvalidInput(f"{option} {_shown(shown)} is not a regular file (a device, a pipe "
                           "or a socket), and trialflow writes an output only as a file of its "
                           "own: give the path of a regular file; nothing was written.",
                           rule="bad_output_path", field=option.lstrip("-"))


def _link_refused(option: str, path: Path | str) -> InvalidInput:
    return InvalidInput(f"{option} {_shown(path)} is a symbolic link, and trialflow never writes "
                        "an output through one: give the path of a regular file or folder; "
                        "nothing was written.", rule="bad_output_path",
                        field=option.lstrip("-"))


def check_target(path: Path, option: str = "--out") -> None:
    """Refuse (exit 2) `path` when it is a symbolic link (dangling or not), a device, a pipe
    or a socket: called before any work, and again when the file is written. A name the
    system cannot even look at (too long) is refused as `output_error` says."""
    from cli.errors import output_error

    try:
        _check_kind(path, option, path)
    except OSError as error:
        raise output_error(option, path, error) from error


def output_file(path: Path, option: str = "--out") -> Path:
    """The folder the file `path` goes to, refused (exit 2) before any work when that folder
    does not exist, when `path` names a folder, or when it is a symbolic link."""
    from cli.errors import output_error

    check_target(path, option)
    folder = path.parent if str(path.parent) else Path(".")
    field = option.lstrip("-")
    try:
        is_folder, is_file_name = folder.is_dir(), not path.is_dir()
    except OSError as error:  # a name too long
        raise output_error(option, path, error) from error
    if not is_folder:
        raise InvalidInput(f"{option} {path}: the folder {folder} does not exist.", field=field)
    if not is_file_name:
        raise InvalidInput(f"{option} {path}: a folder, not a file.", field=field)
    return folder


def output_folder(path: Path, option: str = "--out") -> Path:
    """The folder `path` (of `export csv`), made with its parents if missing; refused (exit 2)
    when it is a symbolic link."""
    from cli.errors import output_error

    check_target(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(option, path, error) from error
    check_target(path, option)  # made a link in between: refused all the same
    return path


@contextlib.contextmanager
def replacing(path: Path, option: str = "--out", mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary stream whose bytes replace `path` atomically when the block ends without an
    error; with an error the temporary file is removed, the target left as it was, and an
    `OSError` reported as `output_error`."""
    with (_folder(path.parent, option, follow=True) as folder,
          _replacing_in(folder, path, option, mode) as stream):
        yield stream


def write_file(path: Path, data: bytes, option: str = "--out", mode: int = 0o666) -> None:
    """Replace `path` by `data` atomically, never through a link; a new file gets `mode`
    (less the umask): PRIVATE for clinical data."""
    with replacing(path, option, mode) as stream:
        stream.write(data)


def write_files(folder: Path, files: Mapping[str, bytes], option: str = "--out",
                mode: int = 0o666) -> None:
    """Write each of `files` (name -> bytes) into `folder` (made if missing), each one
    atomically; the folder is opened once without following a link, and a file name that is
    a link in it is refused."""
    output_folder(folder, option)
    with _folder(folder, option, follow=False) as descriptor:
        for name, data in files.items():
            with _replacing_in(descriptor, folder / name, option, mode) as stream:
                stream.write(data)


# --- the steps -------------------------------------------------------------------------------


@contextlib.contextmanager
def _folder(folder: Path, option: str, *, follow: bool) -> Iterator[int]:
    """A descriptor of `folder` (the working folder for ''), closed at the end."""
    from cli.errors import output_error

    flags = _FOLDER_FLAGS if follow else _FOLDER_FLAGS | os.O_NOFOLLOW
    try:
        descriptor = os.open(str(folder) or ".", flags)
    except OSError as error:
        if not follow and _is_link(folder):
            raise _link_refused(option, folder) from None
        raise output_error(option, folder, error) from error
    try:
        yield descriptor
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _replacing_in(folder: int, path: Path, option: str, mode: int) -> Iterator[BinaryIO]:
    """Write to a new temporary file in the folder `folder`, then rename it to `path`'s name
    there."""
    from cli.errors import output_error

    name = path.name
    try:
        if not name or name in (".", ".."):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        _check_kind(name, option, path, dir_fd=folder)
        descriptor, temporary = _new_temporary(folder, name, mode)
    except OSError as error:
        raise output_error(option, path, error) from error
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        if isinstance(error, OSError):  # e.g. a full disk, or the name of a folder
            raise output_error(option, path, error) from error
        raise
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder: the file is
        os.fsync(folder)  # written and renamed all the same


def _new_temporary(folder: int, name: str, mode: int) -> tuple[int, str]:
    """A new file beside `name`, under a random name nobody else holds (O_EXCL): its
    descriptor and name."""
    stem = name.encode("utf-8", "surrogateescape")[:_TEMPORARY_STEM].decode("utf-8", "ignore")
    for _ in range(100):
        temporary = f".{stem}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(temporary, _NEW_FILE_FLAGS, mode, dir_fd=folder), temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))  # 100 names taken: never
