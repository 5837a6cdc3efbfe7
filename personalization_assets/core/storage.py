"""One storage layer for the landing zone and the lake, for local paths and ``s3://`` URLs alike.

Everything goes through ``pyarrow.fs`` (DuckDB's httpfs extension is not used: it downloads at run
time). DuckDB reads lake tables either natively (local Parquet files) or as Arrow datasets (S3), so
asset code never knows where the lake is.

Lake layout: ``<lake>/<layer>/<table>/[k=v/...]/data.parquet``. A partition is exactly one Parquet
object, which makes writes atomic and idempotent:

* local: the file is written under a temporary name in the same directory and ``os.replace``d;
* S3: the object is uploaded with one (multipart) PUT, which becomes visible only when complete.

Re-materializing a partition therefore replaces it; a reader never sees a half-written partition.

What differs between a local directory and S3 is written once, in two backends (`_LocalBackend`,
`_S3Backend`, chosen by the URL): root and filesystem, atomic and exclusive writes, durable landing writes,
temp files, partition fingerprints, how DuckDB sees a table, and the S3-only conditional requests. The store
classes (`LandingZone`, `LakeStorage`) are written once on top of them; `is_s3` stays for callers outside.

The append-only logs (consent ledger, audit log, …) live in the lake's *log store* (``LakeStorage.log_store()``):
the lake itself, or — in production — a separate bucket with S3 Object Lock. A store with an Object Lock mode
writes each log segment once, with a per-object retention (`If-None-Match: *` + `ObjectLockMode` +
`ObjectLockRetainUntilDate`), and refuses every replace or delete in code (``ImmutableStoreError``).

Temporary files (``_tmp-*``, local only) hold the data being written — raw events included — so a
writer killed mid-write (SIGKILL, OOM, a lost pod) must not leave them behind for ever. Each writer
holds an exclusive ``flock`` on its temp file while it exists; the kernel drops the lock when the process
dies, whatever the cause. ``LakeStorage.sweep_temp_files`` deletes every temp file whose lock can be taken
(its writer is gone); a concurrent run's in-progress file stays locked and is never touched. The
sweep runs when a run starts (resource setup) and in every erasure run, which also counts what is left.
On S3 there are no temp objects (a partition is one multipart PUT); parts of an interrupted upload are
aborted by the bucket's lifecycle rule (infra/terraform/modules/storage/lifecycle.generated.tf).
"""

from __future__ import annotations

import fnmatch
import contextlib
import errno
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator, Mapping, Optional

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr

DATA_FILE = "data.parquet"
_TMP_PREFIX = "_tmp-"  # ignored by pyarrow dataset discovery (leading underscore)
# Without POSIX locks (not the case on Linux) a temp file is only swept once it is this old.
UNLOCKED_SWEEP_AGE_SECONDS = 6 * 3600

log = logging.getLogger(__name__)

try:  # POSIX advisory locks; the platform runs on Linux (local and EKS pods)
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None


@contextlib.contextmanager
def locked_temp_path(parent: str, suffix: str = "") -> Iterator[str]:
    """A fresh temp file name in `parent`, created and exclusively flock-ed for as long as the block runs.

    The lock tells the sweep the writer is alive; the kernel drops it when the process dies (even on
    SIGKILL). A sweep may take the lock in the instant between creating the file and locking it and
    delete the file: the writer notices (the name no longer points at its file) and starts over with a
    new name. The file is removed on exit unless the block renamed it into place."""
    while True:
        path = f"{parent}/{_TMP_PREFIX}{uuid.uuid4().hex}{suffix}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        if fcntl is None:
            break
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # swept before we locked it: try another name
    try:
        try:
            yield path
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still there when the block did not rename it into place
    finally:
        os.close(fd)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2 = None  # libc's renameat2, looked up once (None: not looked up yet; False: unavailable)


def _rename_noreplace(src: str, dst: str) -> bool | None:
    """Rename `src` to `dst` only if `dst` does not exist (Linux renameat2 RENAME_NOREPLACE): True when renamed,
    False when `dst` exists, None when this system or file system cannot (the caller falls back to a hard link)."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = (fn, ctypes)
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return None
    fn, ctypes = _renameat2
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return None
    raise OSError(err, os.strerror(err), dst)


def _delete_if_writer_gone(path: str, mtime_ns: int) -> bool:
    """Delete a temp file when no live process holds its lock (i.e. its writer died). Returns whether deleted."""
    if fcntl is None:
        if time.time_ns() - mtime_ns < UNLOCKED_SWEEP_AGE_SECONDS * 1e9:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            return True
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer
        try:
            os.unlink(path)  # while holding the lock: a writer that just created it re-checks and retries
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


OBJECT_LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
MAX_OBJECT_LOCK_DAYS = 36_500  # S3 accepts retention periods of up to 100 years
# rows per Parquet row group of every lake file; DuckDB results are streamed into `write_table` in batches of this size
ROW_GROUP_ROWS = 256_000


# objects of the lake that hold no table data and are read without an audit row (`LakeStorage.read_marker`)
LOG_HEAD_FILE = "_head.json"  # where a hash-chained log ends (core/hash_chain.py)
CONTROL_OBJECTS = (LOG_HEAD_FILE,)


class ImmutableStoreError(RuntimeError):
    """A replace or delete was attempted on a write-once (Object Lock) store."""


@dataclass(frozen=True)
class WriteResult:
    path: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class FileInfo:
    path: str  # path relative to the store root, '/'-separated
    size: int
    mtime_ns: int


class _FileStore(dg.ConfigurableResource):
    """A local directory or an s3://bucket/prefix, accessed through pyarrow.fs."""

    url: str = Field(description="Local directory or s3://bucket/prefix.")
    s3_endpoint_url: Optional[str] = Field(default=None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")
    aws_region: str = Field(default="us-east-1")
    aws_access_key_id: Optional[str] = Field(default=None, description="From dg.EnvVar; unset = default AWS chain.")
    aws_secret_access_key: Optional[str] = Field(default=None, description="From dg.EnvVar.")
    object_lock_mode: Optional[str] = Field(
        default=None,
        description="S3 Object Lock mode (COMPLIANCE | GOVERNANCE) of every object created with create_exclusive; "
        "set = the store is write-once (replace and delete are refused). Unset = an ordinary store.",
    )
    object_lock_days: int = Field(default=0, description="Retention of each locked object, in days from its creation.")

    _fs: Optional[pafs.FileSystem] = PrivateAttr(default=None)
    _s3: object = PrivateAttr(default=None)

    @property
    def _backend(self) -> _LocalBackend | _S3Backend:
        """What differs between a local directory and S3 (`_LocalBackend` / `_S3Backend`), chosen by the URL.
        Built on each use (a few attribute reads): a copy of the resource never shares its original's backend."""
        return _backend_for(self)

    @property
    def is_write_once(self) -> bool:
        return self.object_lock_mode is not None

    def _check_lock_config(self) -> None:
        if self.object_lock_mode is None:
            return
        if self.object_lock_mode not in OBJECT_LOCK_MODES:
            raise ValueError(f"object_lock_mode={self.object_lock_mode!r}: expected one of {', '.join(OBJECT_LOCK_MODES)}")
        if not self._backend.is_s3:
            raise ValueError(f"object_lock_mode={self.object_lock_mode} needs an s3:// store (Object Lock is an S3 feature); "
                             f"{self.url!r} is a local path")
        if not 1 <= self.object_lock_days <= MAX_OBJECT_LOCK_DAYS:
            raise ValueError(f"object_lock_days={self.object_lock_days}: expected 1..{MAX_OBJECT_LOCK_DAYS}")

    def _refuse_if_write_once(self, what: str, relative: str) -> None:
        if self.is_write_once:
            raise ImmutableStoreError(
                f"refusing to {what} {self.uri(relative)}: this store is write-once (S3 Object Lock, "
                f"{self.object_lock_mode} mode, {self.object_lock_days} days); log segments are only ever created"
            )

    def s3_client(self):
        """The boto3 S3 client of this store, from dagster-aws's S3Resource (same endpoint, region and credentials
        as the pyarrow filesystem). Used for what pyarrow cannot send: conditional writes and Object Lock."""
        if self._s3 is None:
            from dagster_aws.s3 import S3Resource

            self._s3 = S3Resource(
                region_name=self.aws_region,
                endpoint_url=self.s3_endpoint_url,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
            ).get_client()
        return self._s3

    @property
    def is_s3(self) -> bool:
        return self._backend.is_s3

    @property
    def root(self) -> str:
        """Root path in the filesystem's own notation (bucket/prefix for S3, absolute path locally)."""
        return self._backend.root()

    def filesystem(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = self._backend.filesystem()
        return self._fs

    def full_path(self, relative: str) -> str:
        relative = relative.strip("/")
        return f"{self.root}/{relative}" if relative else self.root

    def uri(self, relative: str) -> str:
        """Human-readable location for metadata (never contains credentials)."""
        return self._backend.scheme + self.full_path(relative)

    def list_files(self, relative: str, suffixes: tuple[str, ...] = ()) -> list[FileInfo]:
        fs = self.filesystem()
        base = self.full_path(relative)
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        out = []
        prefix_len = len(self.root) + 1
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            name = info.path.rsplit("/", 1)[-1]
            if name.startswith((".", "_")):
                continue
            if suffixes and not name.endswith(suffixes):
                continue
            out.append(FileInfo(path=info.path[prefix_len:], size=info.size or 0, mtime_ns=int(info.mtime_ns or 0)))
        return sorted(out, key=lambda f: f.path)

    def read_bytes(self, relative: str) -> bytes:
        with self.filesystem().open_input_stream(self.full_path(relative), compression=None) as f:
            return f.read()

    def local_path(self, relative: str) -> Optional[str]:
        """The file's path on the local disk, when the store is local (lets DuckDB read it directly)."""
        return self._backend.local_path(self.full_path(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        self._refuse_if_write_once("overwrite", relative)
        self._backend.write_bytes(self.filesystem(), self.full_path(relative), data)

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Write an object only if it does not exist yet (atomically). Returns False if it already existed.

        Local: rename a fully written temp file into place exclusively (renameat2 RENAME_NOREPLACE; a hard link,
        which fails if the name exists, where the file system cannot), so the file is never touched once
        visible (its listing fingerprint, ctime included, stays what a reader first saw). S3: a PUT
        with `If-None-Match: *` (S3 conditional writes) through the client of dagster-aws's S3Resource,
        because pyarrow cannot send it. On a write-once store the same PUT also locks the object
        (`ObjectLockMode`, `ObjectLockRetainUntilDate` = now + object_lock_days, with the SHA-256 checksum
        S3 requires for Object Lock uploads).
        Append-only logs use this so two concurrent writers can never overwrite each other's segment.
        """
        self._check_lock_config()
        return self._backend.create_exclusive(self.full_path(relative), data)

    # --- S3 conditional requests (compare-and-swap on one object); used by the log writer leases ---

    def put_conditional(self, relative: str, data: bytes, if_match: str | None = None, if_none_match: bool = False) -> str | None:
        """S3 only: PUT with `If-None-Match: *` (create) or `If-Match: <etag>` (replace exactly that version).
        Returns the new ETag, or None when the condition failed (someone else created or replaced it)."""
        return self._backend.put_conditional(self.full_path(relative), data, if_match, if_none_match)

    def read_with_etag(self, relative: str) -> tuple[bytes, str] | None:
        """S3 only: the object's bytes and ETag, or None if it does not exist."""
        return self._backend.read_with_etag(self.full_path(relative))

    def delete_if_match(self, relative: str, etag: str) -> bool:
        """S3 only: delete the object only if it is still the version `etag` (`If-Match` on DeleteObject)."""
        return self._backend.delete_if_match(self.full_path(relative), etag)

    def delete(self, relative: str) -> None:
        self._refuse_if_write_once("delete", relative)
        fs = self.filesystem()
        path = self.full_path(relative)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


class LandingZone(_FileStore):
    """Where CDP batches, CRM exports, the catalog and privacy requests land (read-only for ingestion;
    the collector, `personalization collect`, writes event batches here)."""

    def write_durable(self, relative: str, data: bytes) -> None:
        """Write one object so that it is complete and durable when this returns, and never seen partial.

        Local: a temp file (leading ``_``: listers skip it) written and fsynced, renamed into place, then the
        directory fsynced so the rename itself survives a power loss. S3: one PUT, which is visible only
        once complete and durable when S3 answers.
        """
        self._refuse_if_write_once("overwrite", relative)
        self._backend.write_durable(self.full_path(relative), data)

    def exists(self, relative: str) -> bool:
        return self.filesystem().get_file_info(self.full_path(relative)).type == pafs.FileType.File


# ------------------------------------------------------------------------------------------- backends
# Where a local directory and an S3 bucket differ, and only there. A store picks its backend from its URL
# (`s3://` or a path); every _FileStore / LandingZone / LakeStorage method is written once on top of it.


class _LocalBackend:
    """A local directory: atomic writes are a locked temp file renamed into place, an exclusive create is a hard
    link (fails if the name exists), DuckDB scans the Parquet files natively."""

    is_s3 = False
    scheme = ""

    def __init__(self, store: _FileStore):
        self.store = store

    def root(self) -> str:
        return os.path.abspath(self.store.url).rstrip("/") or "/"

    def filesystem(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def local_path(self, path: str) -> Optional[str]:
        return path

    def lock_path(self, path: str) -> str:
        return path

    def write_bytes(self, fs: pafs.FileSystem, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        with locked_temp_path(parent) as tmp:
            with fs.open_output_stream(tmp, compression=None) as out:
                out.write(data)
            os.replace(tmp, path)

    def write_durable(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        new_dirs = []  # directories created now: their entries in their parents must be synced too
        d = parent
        while not os.path.isdir(d):
            new_dirs.append(d)
            d = os.path.dirname(d)
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        for directory in [parent] + [os.path.dirname(n) for n in new_dirs]:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        parent = path.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        with locked_temp_path(parent) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # an exclusive rename: once the segment is visible nothing touches its inode again (a hard link followed
            # by the removal of the temporary name changed its ctime after it was visible, so a listing in between
            # saw a fingerprint that did not last); a hard link where the file system cannot
            renamed = _rename_noreplace(tmp, path)
            if renamed is not None:
                return renamed
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False

    @contextlib.contextmanager
    def atomic_target(self, fs: pafs.FileSystem, final: str) -> Iterator[str]:
        """A path to write a whole file to; it replaces `final` when the block ends without an error."""
        parent = final.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        with locked_temp_path(parent, ".parquet.inprogress") as target:
            yield target
            os.replace(target, final)

    def temp_files(self, base: str) -> list[FileInfo]:
        out, prefix_len = [], len(self.store.root) + 1
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                if name.startswith(_TMP_PREFIX):
                    p = os.path.join(dirpath, name)
                    try:
                        st = os.stat(p)
                    except FileNotFoundError:
                        continue
                    out.append(FileInfo(path=p[prefix_len:].replace(os.sep, "/"), size=st.st_size, mtime_ns=st.st_mtime_ns))
        return sorted(out, key=lambda f: f.path)

    def partition_fingerprints(self, lake: LakeStorage, layer: str, table: str, strict: bool = False) -> dict[str, str]:
        base = lake.table_dir(layer, table) + "/"
        suffix = "/" + DATA_FILE
        out = {}
        for f in lake.partition_files(layer, table):
            if f.path.startswith(base):
                try:
                    st = os.stat(lake.full_path(f.path))
                except FileNotFoundError:  # deleted since the listing
                    continue
                ctime = f"{st.st_ctime_ns}:" if strict else ""
                out[f.path[len(base) : -len(suffix)]] = f"{st.st_size}:{st.st_mtime_ns}:{ctime}{st.st_ino}"
        return out

    def partition_fingerprints_after(self, lake: LakeStorage, layer: str, table: str, strict: bool, after: str | None,
                                     limit: int | None) -> dict[str, str]:
        # one directory read (names only), then a stat of the chosen partitions' files: not of every partition
        base = lake.full_path(lake.table_dir(layer, table))
        floor = None if after is None else _listing_order(after)
        try:
            with os.scandir(base) as entries:
                names = [e.name for e in entries if "=" in e.name and e.name[0] not in "._"
                         and (floor is None or _listing_order(e.name) > floor)]
        except FileNotFoundError:
            return {}
        out: dict[str, str] = {}
        for name in sorted(names, key=_listing_order):  # only those after `after`: a few on a steady run
            if limit is not None and len(out) >= limit:
                break
            try:
                st = os.stat(os.path.join(base, name, DATA_FILE))
            except (FileNotFoundError, NotADirectoryError):
                continue
            ctime = f"{st.st_ctime_ns}:" if strict else ""
            out[name] = f"{st.st_size}:{st.st_mtime_ns}:{ctime}{st.st_ino}"
        return out

    def create_view(self, con, name: str, paths: list[str], select: str) -> None:
        """View `name` over the Parquet files at `paths` (full paths), scanned natively by DuckDB."""
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        con.execute(f'create or replace temp view "{name}" as select {select} from read_parquet([{files}], '
                    "hive_partitioning = false, union_by_name = true)")

    def _s3_only(self, what: str):
        raise ValueError(f"{what} is for S3 stores; {self.store.url!r} is a local path")

    def put_conditional(self, path: str, data: bytes, if_match: str | None, if_none_match: bool) -> str | None:
        self._s3_only("put_conditional")

    def read_with_etag(self, path: str) -> tuple[bytes, str] | None:
        self._s3_only("read_with_etag")

    def delete_if_match(self, path: str, etag: str) -> bool:
        self._s3_only("delete_if_match")


class _S3Backend:
    """An s3://bucket/prefix: an object is visible only once its (multipart) PUT completes, so writes go straight
    to the final key; exclusive creates, compare-and-swap and Object Lock go through the boto3 client (pyarrow
    cannot send conditional headers); DuckDB reads through a lazily-scanned Arrow dataset."""

    is_s3 = True
    scheme = "s3://"

    def __init__(self, store: _FileStore):
        self.store = store

    def root(self) -> str:
        return self.store.url[len("s3://") :].rstrip("/")

    def filesystem(self) -> pafs.FileSystem:
        s = self.store
        kwargs: dict = {"region": s.aws_region}
        if s.s3_endpoint_url:
            endpoint = s.s3_endpoint_url
            scheme = "https"
            if "://" in endpoint:
                scheme, endpoint = endpoint.split("://", 1)
            kwargs.update(endpoint_override=endpoint.rstrip("/"), scheme=scheme)
        if s.aws_access_key_id:
            kwargs.update(access_key=s.aws_access_key_id, secret_key=s.aws_secret_access_key)
        return pafs.S3FileSystem(**kwargs)

    def local_path(self, path: str) -> Optional[str]:
        return None

    def lock_path(self, path: str) -> str:
        raise ValueError("lock files are local; an S3 store coordinates with lease objects")

    def write_bytes(self, fs: pafs.FileSystem, path: str, data: bytes) -> None:
        with fs.open_output_stream(path, compression=None) as out:
            out.write(data)

    def write_durable(self, path: str, data: bytes) -> None:
        self.write_bytes(self.store.filesystem(), path, data)  # one PUT: complete and durable when S3 answers

    def create_exclusive(self, path: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        store = self.store
        bucket, _, key = path.partition("/")
        put = {"Bucket": bucket, "Key": key, "Body": data, "IfNoneMatch": "*", "ChecksumAlgorithm": "SHA256"}
        if store.object_lock_mode:
            put.update(ObjectLockMode=store.object_lock_mode,
                       ObjectLockRetainUntilDate=datetime.now(timezone.utc) + timedelta(days=store.object_lock_days))
        try:
            store.s3_client().put_object(**put)
            return True
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or exc.response.get(
                "ResponseMetadata", {}
            ).get("HTTPStatusCode") in (409, 412):
                return False
            if store.object_lock_mode and error.get("Code") == "InvalidRequest" and "lock" in str(error.get("Message", "")).lower():
                raise ImmutableStoreError(
                    f"bucket {bucket!r} refused an Object Lock write ({error.get('Message')}). Fix: point "
                    "PERSONALIZATION_LEDGER_URL at the ledger bucket created by infra/terraform (object_lock_enabled), "
                    "or create the bucket with Object Lock enabled."
                ) from exc
            raise

    @contextlib.contextmanager
    def atomic_target(self, fs: pafs.FileSystem, final: str) -> Iterator[str]:
        yield final  # the PUT itself is atomic

    def temp_files(self, base: str) -> list[FileInfo]:
        return []  # no temp objects: an interrupted multipart upload is aborted by the bucket's lifecycle rule

    def partition_fingerprints(self, lake: LakeStorage, layer: str, table: str, strict: bool = False) -> dict[str, str]:
        base = lake.table_dir(layer, table) + "/"
        suffix = "/" + DATA_FILE
        bucket, _, prefix = (lake.full_path(base) + "/").partition("/")
        out = {}
        for page in self.store.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.endswith(suffix) or any(p.startswith((".", "_")) for p in key[len(prefix):].split("/")):
                    continue
                out[key[len(prefix) : -len(suffix)]] = f"{obj['Size']}:{obj['ETag'].strip(chr(34))}"
        return out

    def partition_fingerprints_after(self, lake: LakeStorage, layer: str, table: str, strict: bool, after: str | None,
                                     limit: int | None) -> dict[str, str]:
        # S3 lists keys in UTF-8 order from StartAfter: a request per 1,000 partitions after `after`, not per table
        base = lake.table_dir(layer, table) + "/"
        suffix = "/" + DATA_FILE
        bucket, _, prefix = (lake.full_path(base) + "/").partition("/")
        kwargs = {"Bucket": bucket, "Prefix": prefix}
        if after is not None:
            kwargs["StartAfter"] = prefix + after + "/~"  # past every key of partition `after` ('~' sorts after its files)
        out: dict[str, str] = {}
        for page in self.store.s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                rel = key[len(prefix):]
                if not key.endswith(suffix) or rel.count("/") != 1 or rel.startswith((".", "_")):
                    continue
                if limit is not None and len(out) >= limit:
                    return out
                out[rel[: -len(suffix)]] = f"{obj['Size']}:{obj['ETag'].strip(chr(34))}"
        return out

    def create_view(self, con, name: str, paths: list[str], select: str) -> None:
        dataset = ds.dataset(paths, filesystem=self.store.filesystem(), format="parquet")
        con.register(f"__ds_{name}", dataset)
        con.execute(f'create or replace temp view "{name}" as select {select} from "__ds_{name}"')

    @staticmethod
    def _precondition_failed(exc) -> bool:
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404") or status in (404, 409, 412)

    def put_conditional(self, path: str, data: bytes, if_match: str | None, if_none_match: bool) -> str | None:
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        kwargs = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            return self.store.s3_client().put_object(Bucket=bucket, Key=key, Body=data, **kwargs)["ETag"]
        except ClientError as exc:
            if self._precondition_failed(exc):
                return None
            raise

    def read_with_etag(self, path: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            obj = self.store.s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read(), obj["ETag"]

    def delete_if_match(self, path: str, etag: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            self.store.s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=etag)
            return True
        except ClientError as exc:
            if self._precondition_failed(exc):
                return False
            raise


def _backend_for(store: _FileStore) -> _LocalBackend | _S3Backend:
    return (_S3Backend if store.url.startswith("s3://") else _LocalBackend)(store)


def _listing_order(name: str) -> str:
    """The order in which S3 lists the keys under partition `name` ('name/...' in UTF-8 byte order, which is code
    point order: plain string comparison): the local listing sorts the same way, so that 'after' means the same on
    both stores."""
    return name + "/"


def partition_path(partition: Mapping[str, str] | None) -> str:
    if not partition:
        return ""
    return "/".join(f"{k}={v}" for k, v in partition.items())


# --- audited reads -------------------------------------------------------------------------------------
# Reads of sensitive lake tables (privacy_policies/asset_purposes.yaml `sensitive_assets`) made while a Dagster
# step runs are audited by the lake itself. A step that declared its reads (the privacy layer's AccessAuditor
# appends the audit rows, then calls `declare_audited_reads`) reads them without further cost; any other
# sensitive read is recorded on the spot through the registered audit sink before a byte is read, and without
# a sink it fails. No code path reads a sensitive table during a run without leaving an audit record.
_DECLARED_READS: dict[tuple[str, str], set[str]] = {}  # (run id, step) -> sensitive assets audited by that step
# (run id, step) -> (asset, partition path) pairs audited by that step: reads of exactly those partitions are covered
_DECLARED_PARTITIONS: dict[tuple[str, str], set[tuple[str, str]]] = {}
_AUDIT_SINK = None  # callable(lake, asset, partition, columns) -> None, registered by core.audit


class UnauditedReadError(PermissionError):
    pass


def register_audit_sink(sink) -> None:
    global _AUDIT_SINK
    _AUDIT_SINK = sink


def current_step():
    """(run id, step handle) of the Dagster step running in this thread, or None outside a run."""
    import dagster as dg

    try:
        ctx = dg.OpExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None
    return ctx.run_id, str(ctx.op_handle)


def declare_audited_reads(assets) -> None:
    """The current step has appended audit rows for reads of `assets`: its reads of them are covered."""
    step = current_step()
    if step is not None:
        _DECLARED_READS.setdefault(step, set()).update(assets)


def declare_audited_partitions(partitions) -> None:
    """The current step has appended audit rows for reads of these (asset, partition path) pairs: its reads of
    exactly those partitions are covered (other partitions of the asset are still recorded when read)."""
    step = current_step()
    if step is not None:
        _DECLARED_PARTITIONS.setdefault(step, set()).update(partitions)


class LakeStorage(_FileStore):
    """The Parquet lake: one object per partition, atomic and idempotent writes."""

    sensitive_tables: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of sensitive tables ('raw/*'); reads of them during a run are audited (set from the policy).",
    )

    lock_dir: Optional[str] = Field(default=None, description="Local directory for inter-process locks of the append-only logs.")

    def is_sensitive(self, layer: str, table: str) -> bool:
        name = f"{layer}/{table}"
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.sensitive_tables)

    def _audit_read(self, layer: str, table: str, partition: str | None = None, columns: list[str] | None = None) -> None:
        """Every data read goes through here before touching storage (metadata such as Parquet footers and
        listings does not). `partition`: 'k=v/...', '*' for the whole table, None for an unpartitioned one."""
        if not self.is_sensitive(layer, table):
            return
        step = current_step()
        asset = f"{layer}/{table}"
        if step is None or asset in _DECLARED_READS.get(step, ()) or (asset, partition or "") in _DECLARED_PARTITIONS.get(step, ()):
            return
        if _AUDIT_SINK is None:
            raise UnauditedReadError(f"read of sensitive table {asset} during a run, but no audit sink is registered")
        _AUDIT_SINK(self, asset, partition, columns)

    def _audit_path(self, relative: str) -> None:
        parts = relative.strip("/").split("/")
        if len(parts) >= 2:
            self._audit_read(parts[0], parts[1], "/".join(p for p in parts[2:-1] if "=" in p) or None, None)

    def read_bytes(self, relative: str) -> bytes:
        self._audit_path(relative)
        return super().read_bytes(relative)

    def read_marker(self, relative: str) -> bytes | None:
        """A control object that holds no table data (`CONTROL_OBJECTS`: a log's head hint), or None when it does not
        exist. Like a listing or a Parquet footer, this is not an audited read, so any other path is refused."""
        if relative.rsplit("/", 1)[-1] not in CONTROL_OBJECTS:
            raise ValueError(f"read_marker reads control objects {CONTROL_OBJECTS} only, not {relative!r}: data goes through the audited reads")
        if self.filesystem().get_file_info(self.full_path(relative)).type != pafs.FileType.File:
            return None
        try:
            return super().read_bytes(relative)
        except FileNotFoundError:  # removed between the two calls
            return None

    def local_path(self, relative: str) -> Optional[str]:
        self._audit_path(relative)  # a local path hands the data to whoever opens it
        return super().local_path(relative)

    logs_url: Optional[str] = Field(
        default=None,
        description="Where the append-only logs live (PERSONALIZATION_LEDGER_URL); unset = in the lake itself.",
    )
    logs_object_lock_mode: Optional[str] = Field(default=None, description="Object Lock mode of the log store (COMPLIANCE | GOVERNANCE).")
    logs_object_lock_days: int = Field(default=0, description="Object Lock retention of each log segment, in days.")

    _logs: Optional["LakeStorage"] = PrivateAttr(default=None)

    def log_store(self) -> "LakeStorage":
        """The store of the append-only, hash-chained logs: the lake itself, or the ledger bucket (write-once)."""
        if self.logs_url is None and self.logs_object_lock_mode is None:
            return self
        if self._logs is None:
            store = LakeStorage(
                url=self.logs_url or self.url, s3_endpoint_url=self.s3_endpoint_url, aws_region=self.aws_region,
                aws_access_key_id=self.aws_access_key_id, aws_secret_access_key=self.aws_secret_access_key,
                object_lock_mode=self.logs_object_lock_mode, object_lock_days=self.logs_object_lock_days,
                sensitive_tables=self.sensitive_tables, lock_dir=self.lock_dir,  # reads of the consent ledger are audited too
            )
            store._check_lock_config()
            store._coordination = self
            self._logs = store
        return self._logs

    _coordination: Optional["LakeStorage"] = PrivateAttr(default=None)

    def local_lock_path(self, relative: str) -> str:
        """Path of an advisory lock file (holds no data) in a local store."""
        return self._backend.lock_path(self.full_path(relative))

    def coordination_store(self) -> "LakeStorage":
        """The store that holds the writer locks/leases of the logs in this store: the lake that owns it (a
        write-once log store cannot hold an object that is renewed and deleted)."""
        return self._coordination or self

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # a run starts: remove what writers killed in earlier runs left behind (never a live writer's file)
        try:
            removed = self.sweep_temp_files()
        except OSError as exc:  # a sweep problem must not stop the run; erasure verification still counts them
            log.warning("could not sweep temporary files of interrupted writes under %s: %s", self.uri(""), exc)
            return
        if removed:
            log.warning("removed %d temporary file(s) left by interrupted writes under %s", len(removed), self.uri(""))

    def temp_files(self, relative: str = "") -> list[FileInfo]:
        """Temporary files (``_tmp-*``) under the lake: in-progress writes, or leftovers of killed ones."""
        return self._backend.temp_files(self.full_path(relative))

    def sweep_temp_files(self, relative: str = "") -> list[FileInfo]:
        """Delete the temp files whose writer is gone (their lock is free). Returns those deleted. A
        concurrent run's in-progress file is locked and stays."""
        return [f for f in self.temp_files(relative) if _delete_if_writer_gone(self.full_path(f.path), f.mtime_ns)]

    def table_dir(self, layer: str, table: str) -> str:
        return f"{layer}/{table}"

    def data_file(self, layer: str, table: str, partition: Mapping[str, str] | None = None) -> str:
        part = partition_path(partition)
        return "/".join(p for p in (self.table_dir(layer, table), part, DATA_FILE) if p)

    def write_table(
        self,
        layer: str,
        table: str,
        data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
        partition: Mapping[str, str] | None = None,
        schema: pa.Schema | None = None,
    ) -> WriteResult:
        """Write (replace) one partition atomically. Accepts a table or a stream of batches."""
        fs = self.filesystem()
        relative = self.data_file(layer, table, partition)
        self._refuse_if_write_once("replace", relative)
        final = self.full_path(relative)
        whole = data if isinstance(data, pa.Table) else None
        if whole is not None:
            # written as a table: row groups of ROW_GROUP_ROWS across its chunks (batch by batch, a table of many
            # small chunks, e.g. slices of a bigger one, became as many small row groups: larger files)
            schema = whole.schema
            batches: Iterable[pa.RecordBatch] = []
        elif isinstance(data, pa.RecordBatchReader):
            schema = data.schema
            batches = data
        else:
            if schema is None:
                raise ValueError("write_table: pass schema= with an iterable of batches")
            batches = data
        rows = 0
        with self._backend.atomic_target(fs, final) as target:
            with fs.open_output_stream(target, compression=None) as sink:
                with pq.ParquetWriter(sink, schema, compression="snappy", write_statistics=True) as writer:
                    if whole is not None and whole.num_rows:
                        writer.write_table(whole, row_group_size=ROW_GROUP_ROWS)
                        rows = whole.num_rows
                    for batch in batches:
                        if batch.num_rows:
                            writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
                            rows += batch.num_rows
        size = fs.get_file_info(final).size or 0
        return WriteResult(path=self.uri(relative), rows=rows, bytes=size)

    def exists(self, layer: str, table: str, partition: Mapping[str, str] | None = None) -> bool:
        info = self.filesystem().get_file_info(self.full_path(self.data_file(layer, table, partition)))
        return info.type == pafs.FileType.File

    def read_table(
        self,
        layer: str,
        table: str,
        partition: Mapping[str, str] | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Read one partition (or the single file of an unpartitioned table). The file is opened once: a writer that
        replaces it meanwhile (a new file renamed into place) cannot mix its footer with the old file's pages."""
        self._audit_read(layer, table, partition_path(partition) or None, columns)
        path = self.full_path(self.data_file(layer, table, partition))
        with self.filesystem().open_input_file(path) as f:
            return pq.read_table(f, columns=columns)

    def parquet_metadata(self, layer: str, table: str, partition: Mapping[str, str] | None = None) -> pq.FileMetaData:
        """The Parquet footer of one partition (row count, schema) without reading its data."""
        with self.filesystem().open_input_file(self.full_path(self.data_file(layer, table, partition))) as f:
            return pq.ParquetFile(f).metadata

    def schema(self, layer: str, table: str, partition: Mapping[str, str] | None = None) -> pa.Schema:
        """The Arrow schema of one partition, from its Parquet footer (no data read)."""
        with self.filesystem().open_input_file(self.full_path(self.data_file(layer, table, partition))) as f:
            return pq.ParquetFile(f).schema_arrow

    def read_sample(self, layer: str, table: str, max_rows: int, row_groups: int) -> pa.Table:
        """Up to max_rows rows of an unpartitioned table without reading all of it.

        Small tables are read whole. Larger ones: `row_groups` row groups spread evenly over the file, each
        read on its own and cut to its share, so at most one row group is in memory at a time on top of
        the sample (works the same on local disk and S3)."""
        self._audit_read(layer, table, None, None)
        with self.filesystem().open_input_file(self.full_path(self.data_file(layer, table))) as f:
            pf = pq.ParquetFile(f)
            n = pf.metadata.num_rows
            if n <= max_rows or pf.num_row_groups <= 1:
                t = pf.read()
                return t.slice(0, max_rows) if t.num_rows > max_rows else t
            k = min(row_groups, pf.num_row_groups)
            picks = sorted({round(i * (pf.num_row_groups - 1) / max(k - 1, 1)) for i in range(k)})
            share = max_rows // len(picks)
            parts = [pf.read_row_group(i).slice(0, share) for i in picks]
        return pa.concat_tables(parts)

    def iter_batches(self, layer: str, table: str, partition: Mapping[str, str] | None = None, batch_rows: int = 65_536,
                     columns: list[str] | None = None, missing_ok: bool = False) -> Iterator[pa.RecordBatch]:
        """One partition in record batches of at most batch_rows rows, in storage order (memory bounded by a batch).
        `missing_ok`: columns the file does not have (written before they were added) are left out."""
        self._audit_read(layer, table, partition_path(partition) or None, columns)
        with self.filesystem().open_input_file(self.full_path(self.data_file(layer, table, partition))) as f:
            pf = pq.ParquetFile(f)
            if columns is not None and missing_ok:
                present = set(pf.schema_arrow.names)
                columns = [c for c in columns if c in present]
            yield from pf.iter_batches(batch_size=batch_rows, columns=columns)

    def partition_files(self, layer: str, table: str) -> list[FileInfo]:
        return [f for f in self.list_files(self.table_dir(layer, table)) if f.path.endswith("/" + DATA_FILE)]

    def partition_fingerprints(self, layer: str, table: str, strict: bool = False) -> dict[str, str]:
        """{partition path ('date=D/hour=H'): fingerprint} of every partition file, from the listing alone (no data
        read): locally `size:mtime_ns:inode` (a rewrite is a new file renamed into place: a new inode, even when two
        rewrites fall in the same timestamp tick) — `strict` adds the ctime, which no user call can set, so an edit in
        place that puts size and mtime back is seen too (the consent ledger's checkpoint) —, on S3 `size:ETag` (a new object has a new ETag even within the same
        second). Incremental consumers compare it with what they last consumed to find the partitions that changed."""
        return self._backend.partition_fingerprints(self, layer, table, strict)

    def partition_fingerprints_after(self, layer: str, table: str, after: str | None = None, limit: int | None = None,
                                     strict: bool = False) -> dict[str, str]:
        """Like `partition_fingerprints`, for a table of one partition level ('segment=000000000042'), but only the
        partitions after `after` (None: from the first) in listing order (a partition's path followed by '/', in
        UTF-8 order: S3's key order), at most `limit` of them. Its cost follows what it returns, not the table: the
        append-only logs' checkpoint lists what was appended since it, and a bounded window of the older segments."""
        return self._backend.partition_fingerprints_after(self, layer, table, strict, after, limit)

    def register_partitions(self, con, name: str, layer: str, table: str, partitions: list[Mapping[str, str]],
                            empty_schema: pa.Schema, columns: list[str] | None = None) -> None:
        """Expose the given partitions of a lake table to DuckDB as view `name` (like `register`, but only those
        files: an incremental consumer reads what changed, not the table). Every partition must exist."""
        for part in partitions:
            self._audit_read(layer, table, partition_path(part), columns)
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        paths = [self.full_path(self.data_file(layer, table, part)) for part in partitions]
        if not paths:
            con.register(f"__empty_{name}", empty_schema.empty_table())
            con.execute(f'create or replace temp view "{name}" as select {cols} from "__empty_{name}"')
        else:
            self._backend.create_view(con, name, paths, cols)

    def partitions(self, layer: str, table: str) -> list[dict[str, str]]:
        """Partition values present on storage, from the hive-style folder names."""
        out = []
        base = self.table_dir(layer, table) + "/"
        for f in self.partition_files(layer, table):
            rel = f.path[len(base) : -len("/" + DATA_FILE)] if f.path.startswith(base) else ""
            parts = [p for p in rel.split("/") if "=" in p]
            out.append(dict(p.split("=", 1) for p in parts))
        return out

    def delete_partition(self, layer: str, table: str, partition: Mapping[str, str] | None = None) -> bool:
        """Delete one partition's data file. Returns whether it existed."""
        self._refuse_if_write_once("delete", self.data_file(layer, table, partition))
        fs = self.filesystem()
        path = self.full_path(self.data_file(layer, table, partition))
        if fs.get_file_info(path).type != pafs.FileType.File:
            return False
        fs.delete_file(path)
        return True

    def dataset(self, layer: str, table: str) -> Optional[ds.Dataset]:
        self._audit_read(layer, table, "*")
        return self._dataset(layer, table)

    def _dataset(self, layer: str, table: str) -> Optional[ds.Dataset]:
        files = self.partition_files(layer, table)
        if not files:
            return None
        return ds.dataset(
            [self.full_path(f.path) for f in files],
            filesystem=self.filesystem(),
            format="parquet",
        )

    def register(self, con, name: str, layer: str, table: str, empty_schema: pa.Schema | None = None) -> bool:
        """Expose a lake table to DuckDB as view `name`. Returns False (and an empty view) if absent.

        Local tables are scanned natively by DuckDB (parallel, with filter pushdown); S3 tables go
        through a lazily-scanned Arrow dataset.
        """
        self._audit_read(layer, table, "*")
        files = self.partition_files(layer, table)
        if files:
            self._backend.create_view(con, name, [self.full_path(f.path) for f in files], "*")
            return True
        if empty_schema is None:
            raise FileNotFoundError(f"lake table {layer}/{table} has no data at {self.uri(self.table_dir(layer, table))}")
        con.register(f"__empty_{name}", empty_schema.empty_table())
        con.execute(f'create or replace temp view "{name}" as select * from "__empty_{name}"')
        return False

    def iter_partition_tables(self, layer: str, table: str) -> Iterator[tuple[dict[str, str], pa.Table]]:
        for part in self.partitions(layer, table):
            yield part, self.read_table(layer, table, part)
