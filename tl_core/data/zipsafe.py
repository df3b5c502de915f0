"""Read an untrusted .zip safely: no zip slip, no zip bomb, one capped member at a time."""

from __future__ import annotations

import errno
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from tl_core.data.imageprep import ImageSkip
from tl_core.errors import DataError

__all__ = [
    "ByteBudget",
    "check_zip",
    "declared_size",
    "extract_member",
    "open_zip",
    "safe_parts",
]

_CHUNK = 1024 * 1024
_SPOOL_BYTES = 32 * 1024 * 1024  # members up to this size stay in memory
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The parts of a relative file name, or None if it is absolute or climbs out with '..'."""
    if not name or "\x00" in name or name[0] in "/\\" or _DRIVE.match(name):
        return None
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    return None if ".." in parts else parts


def _human_bytes(n: int) -> str:
    """1536 -> '1.5 KB'."""
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def open_zip(zip_file: Path | BinaryIO) -> zipfile.ZipFile:
    """Open the archive's directory (nothing is unpacked yet)."""
    try:
        return zipfile.ZipFile(zip_file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        raise DataError(
            "This file is not a .zip archive, or it is damaged. Make a new .zip of your image "
            "folder (one sub-folder per class) and try again."
        ) from None


def declared_size(infos: list[zipfile.ZipInfo]) -> int:
    """Total unpacked size the archive claims (its headers may lie; see ``ByteBudget``)."""
    return sum(i.file_size for i in infos)


def check_zip(zf: zipfile.ZipFile, max_total_bytes: int, max_files: int) -> list[zipfile.ZipInfo]:
    """The archive's file members, after refusing unsafe or oversized archives outright."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise DataError(
            f"This .zip file holds {len(infos):,} files, more than the limit of {max_files:,}. "
            "Import a smaller selection of images."
        )
    for info in infos:
        if safe_parts(info.filename) is None:
            raise DataError(
                f"This .zip file was refused: it contains '{info.filename}', which would be "
                "unpacked outside its folder (a trick used by harmful archives). Make a new .zip "
                "of your image folder and try again."
            )
    files = [i for i in infos if not i.is_dir()]
    if not files:
        raise DataError(
            "The .zip file is empty. Put one folder per class inside (e.g. cats/…, dogs/…), "
            "zip it again and retry."
        )
    total = declared_size(files)
    if total > max_total_bytes:
        raise DataError(
            f"This .zip file would unpack to {_human_bytes(total)}, more than the limit of "
            f"{_human_bytes(max_total_bytes)}. Import a smaller selection of images."
        )
    return files


class ByteBudget:
    """Counts bytes actually unpacked across members; never trusts the headers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise DataError(
                f"This .zip file unpacks to more than {_human_bytes(self.limit)}, more than its "
                "headers say; it was refused as a possible 'zip bomb'. Make a new .zip of your "
                "image folder and try again."
            )


def extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: ByteBudget, tmp_dir: Path
) -> BinaryIO:
    """One member, streamed into a (spooled) temporary file under the byte budget.

    Raises ImageSkip for a member that cannot be unpacked, DataError when the budget is blown.
    """
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, dir=tmp_dir)  # noqa: SIM115
    try:
        with zf.open(info) as member:
            written = 0
            while chunk := member.read(_CHUNK):
                written += len(chunk)
                budget.take(len(chunk))
                if written > info.file_size:
                    raise ImageSkip("could not be unpacked: its size in the .zip is wrong")
                out.write(chunk)
    except RuntimeError:  # encrypted member
        out.close()
        raise ImageSkip("protected by a password; zip it again without a password") from None
    except NotImplementedError:
        out.close()
        raise ImageSkip("packed in a way that cannot be read; zip it again normally") from None
    except OSError as exc:
        out.close()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk is full, not the .zip damaged
            raise
        raise ImageSkip("could not be unpacked: this part of the .zip is damaged") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        out.close()
        raise ImageSkip("could not be unpacked: this part of the .zip is damaged") from None
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out  # type: ignore[return-value]
