"""Where a tournament's stage outputs, data splits and rows live: a local directory or any URI that
``pyarrow.fs`` opens (``s3://``, ``gs://``, ``hdfs://``), the model of Ray Train/Tune's ``storage_path``.

Actors on other nodes read and write the same storage, so nothing a stage needs lives only on the
driver's disk. Writes are whole objects: a local file is written beside its name and renamed (readers
never see half a file), an object store's PUT is atomic by itself.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

from .params import ArenaError


class StorageError(ArenaError):
    pass


def is_uri(text: str) -> bool:
    return "://" in text


class Storage:
    """One storage root; every method takes a path relative to it, with ``/`` separators."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        if not is_uri(text) and not Path(text).is_absolute():
            text = str(Path(text).resolve())
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(text if is_uri(text) else Path(text).as_uri())
        except (ValueError, OSError, TypeError) as e:  # pyarrow: ArrowInvalid (a ValueError), OSError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StorageError(f"storage {text}: cannot open it ({first}); expected an absolute path or a URI "
                               "pyarrow.fs opens (s3://, gs://, hdfs://)") from None
        self.uri = text
        self.base = self.base.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path | None:
        return Path(self.base) if self.is_local else None

    def child(self, rel: str) -> Storage:
        """A storage rooted at ``rel`` below this one (the stage cache under the rows)."""
        sub = Storage.__new__(Storage)
        sub.fs, sub.base = self.fs, self.full(rel)
        head, sep, query = self.uri.partition("?")  # options such as ?endpoint_override= stay at the end
        sub.uri = head.rstrip("/") + "/" + rel.strip("/") + sep + query
        return sub

    def url(self, rel: str) -> str:
        """``rel`` as a URI for messages (without the query options, which hold endpoints, not places)."""
        return self.uri.partition("?")[0].rstrip("/") + "/" + rel.strip("/")

    def full(self, rel: str) -> str:
        return posixpath.join(self.base, rel.strip("/")) if rel.strip("/") else self.base

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.full(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.full(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.full(rel)
        parent = posixpath.dirname(path)
        self.fs.create_dir(parent, recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = posixpath.join(parent, f".tmp-{os.getpid()}-{posixpath.basename(path)}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)

    def list(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Files under ``rel`` (paths relative to this root), none when it does not exist."""
        sel = pafs.FileSelector(self.full(rel), recursive=recursive, allow_not_found=True)
        n = len(self.base.rstrip("/")) + 1 if self.base != "/" else 1
        return sorted(i.path[n:] for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def move(self, src: str, dst: str) -> None:
        self.fs.create_dir(posixpath.dirname(self.full(dst)), recursive=True)
        self.fs.move(self.full(src), self.full(dst))

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.full(rel))
        except FileNotFoundError:
            pass
