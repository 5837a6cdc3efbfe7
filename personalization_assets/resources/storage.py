"""One storage layer for the landing zone and the lake, for local paths and ``s3://`` URLs alike.

Everything goes through ``pyarrow.fs`` (DuckDB's httpfs extension is not used: it downloads at run
time). DuckDB reads lake tables either natively (local Parquet files) or as Arrow datasets (S3), so
asset code never knows where the lake is.

Lake layout: ``<lake>/<layer>/<table>/[k=v/...]/data.parquet``. A partition is exactly one Parquet
object, which makes writes atomic and idempotent:

* local: the file is written under a temporary name in the same directory and ``os.replace``d;
* S3: the object is uploaded with one (multipart) PUT, which becomes visible only when complete.

Re-materializing a partition therefore replaces it; a reader never sees a half-written partition.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr

DATA_FILE = "data.parquet"
_TMP_PREFIX = "_tmp-"  # ignored by pyarrow dataset discovery (leading underscore)


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

    _fs: Optional[pafs.FileSystem] = PrivateAttr(default=None)
    _s3_client: object = PrivateAttr(default=None)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def root(self) -> str:
        """Root path in the filesystem's own notation (bucket/prefix for S3, absolute path locally)."""
        if self.is_s3:
            return self.url[len("s3://") :].rstrip("/")
        return os.path.abspath(self.url).rstrip("/") or "/"

    def filesystem(self) -> pafs.FileSystem:
        if self._fs is None:
            if self.is_s3:
                kwargs: dict = {"region": self.aws_region}
                if self.s3_endpoint_url:
                    endpoint = self.s3_endpoint_url
                    scheme = "https"
                    if "://" in endpoint:
                        scheme, endpoint = endpoint.split("://", 1)
                    kwargs.update(endpoint_override=endpoint.rstrip("/"), scheme=scheme)
                if self.aws_access_key_id:
                    kwargs.update(access_key=self.aws_access_key_id, secret_key=self.aws_secret_access_key)
                self._fs = pafs.S3FileSystem(**kwargs)
            else:
                self._fs = pafs.LocalFileSystem()
        return self._fs

    def full_path(self, relative: str) -> str:
        relative = relative.strip("/")
        return f"{self.root}/{relative}" if relative else self.root

    def uri(self, relative: str) -> str:
        """Human-readable location for metadata (never contains credentials)."""
        return ("s3://" if self.is_s3 else "") + self.full_path(relative)

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
        return None if self.is_s3 else self.full_path(relative)

    def write_bytes(self, relative: str, data: bytes) -> None:
        fs = self.filesystem()
        path = self.full_path(relative)
        parent = path.rsplit("/", 1)[0]
        if not self.is_s3:
            fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/{_TMP_PREFIX}{uuid.uuid4().hex}"
            with fs.open_output_stream(tmp, compression=None) as out:
                out.write(data)
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path, compression=None) as out:
                out.write(data)

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Write an object only if it does not exist yet (atomically). Returns False if it already existed.

        Local: hard-link a fully written temp file into place (link fails if the name exists). S3: a PUT
        with `If-None-Match: *` (S3 conditional writes), through boto3 because pyarrow cannot send it.
        Append-only logs use this so two concurrent writers can never overwrite each other's segment.
        """
        path = self.full_path(relative)
        if not self.is_s3:
            parent = path.rsplit("/", 1)[0]
            os.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/{_TMP_PREFIX}{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        return self.put_conditional(relative, data, if_none_match=True) is not None

    # --- S3 conditional requests (compare-and-swap on one object); used by the log writer leases ---

    def _s3(self):
        if self._s3_client is None:
            import boto3

            self._s3_client = boto3.client(
                "s3",
                endpoint_url=self.s3_endpoint_url,
                region_name=self.aws_region,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
            )
        return self._s3_client

    @staticmethod
    def _precondition_failed(exc) -> bool:
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404") or status in (404, 409, 412)

    def put_conditional(self, relative: str, data: bytes, if_match: str | None = None, if_none_match: bool = False) -> str | None:
        """S3 only: PUT with `If-None-Match: *` (create) or `If-Match: <etag>` (replace exactly that version).
        Returns the new ETag, or None when the condition failed (someone else created or replaced it)."""
        from botocore.exceptions import ClientError

        if not self.is_s3:
            raise ValueError("put_conditional is for S3 stores")
        bucket, _, key = self.full_path(relative).partition("/")
        kwargs = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            return self._s3().put_object(Bucket=bucket, Key=key, Body=data, **kwargs)["ETag"]
        except ClientError as exc:
            if self._precondition_failed(exc):
                return None
            raise

    def read_with_etag(self, relative: str) -> tuple[bytes, str] | None:
        """S3 only: the object's bytes and ETag, or None if it does not exist."""
        from botocore.exceptions import ClientError

        bucket, _, key = self.full_path(relative).partition("/")
        try:
            obj = self._s3().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read(), obj["ETag"]

    def delete_if_match(self, relative: str, etag: str) -> bool:
        """S3 only: delete the object only if it is still the version `etag` (`If-Match` on DeleteObject)."""
        from botocore.exceptions import ClientError

        bucket, _, key = self.full_path(relative).partition("/")
        try:
            self._s3().delete_object(Bucket=bucket, Key=key, IfMatch=etag)
            return True
        except ClientError as exc:
            if self._precondition_failed(exc):
                return False
            raise

    def delete(self, relative: str) -> None:
        fs = self.filesystem()
        path = self.full_path(relative)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


class LandingZone(_FileStore):
    """Where CDP batches, CRM exports, the catalog and privacy requests land (read-only for us)."""


def partition_path(partition: Mapping[str, str] | None) -> str:
    if not partition:
        return ""
    return "/".join(f"{k}={v}" for k, v in partition.items())


class LakeStorage(_FileStore):
    """The Parquet lake: one object per partition, atomic and idempotent writes."""

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
        final = self.full_path(relative)
        parent = final.rsplit("/", 1)[0]
        if isinstance(data, pa.Table):
            schema = data.schema
            batches: Iterable[pa.RecordBatch] = data.to_batches(max_chunksize=256_000)
        elif isinstance(data, pa.RecordBatchReader):
            schema = data.schema
            batches = data
        else:
            if schema is None:
                raise ValueError("write_table: pass schema= with an iterable of batches")
            batches = data
        if self.is_s3:
            target = final
        else:
            fs.create_dir(parent, recursive=True)
            target = f"{parent}/{_TMP_PREFIX}{uuid.uuid4().hex}.parquet.inprogress"
        rows = 0
        try:
            with fs.open_output_stream(target, compression=None) as sink:
                with pq.ParquetWriter(sink, schema, compression="snappy", write_statistics=True) as writer:
                    for batch in batches:
                        if batch.num_rows:
                            writer.write_batch(batch, row_group_size=256_000)
                            rows += batch.num_rows
            if not self.is_s3:
                os.replace(target, final)
        except BaseException:
            if not self.is_s3:
                try:
                    os.unlink(target)
                except FileNotFoundError:
                    pass
            raise
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
        """Read one partition (or the single file of an unpartitioned table)."""
        path = self.full_path(self.data_file(layer, table, partition))
        return pq.read_table(path, filesystem=self.filesystem(), columns=columns)

    def parquet_metadata(self, layer: str, table: str, partition: Mapping[str, str] | None = None) -> pq.FileMetaData:
        """The Parquet footer of one partition (row count, schema) without reading its data."""
        with self.filesystem().open_input_file(self.full_path(self.data_file(layer, table, partition))) as f:
            return pq.ParquetFile(f).metadata

    def iter_batches(self, layer: str, table: str, partition: Mapping[str, str] | None = None, batch_rows: int = 65_536,
                     columns: list[str] | None = None, missing_ok: bool = False) -> Iterator[pa.RecordBatch]:
        """One partition in record batches of at most batch_rows rows, in storage order (memory bounded by a batch).
        `missing_ok`: columns the file does not have (written before they were added) are left out."""
        with self.filesystem().open_input_file(self.full_path(self.data_file(layer, table, partition))) as f:
            pf = pq.ParquetFile(f)
            if columns is not None and missing_ok:
                present = set(pf.schema_arrow.names)
                columns = [c for c in columns if c in present]
            yield from pf.iter_batches(batch_size=batch_rows, columns=columns)

    def partition_files(self, layer: str, table: str) -> list[FileInfo]:
        return [f for f in self.list_files(self.table_dir(layer, table)) if f.path.endswith("/" + DATA_FILE)]

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
        fs = self.filesystem()
        path = self.full_path(self.data_file(layer, table, partition))
        if fs.get_file_info(path).type != pafs.FileType.File:
            return False
        fs.delete_file(path)
        return True

    def dataset(self, layer: str, table: str) -> Optional[ds.Dataset]:
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
        if not self.is_s3:
            files = self.partition_files(layer, table)
            if files:
                paths = ", ".join("'" + self.full_path(f.path).replace("'", "''") + "'" for f in files)
                con.execute(
                    f'create or replace temp view "{name}" as select * from read_parquet([{paths}], '
                    "hive_partitioning = false, union_by_name = true)"
                )
                return True
        else:
            dataset = self.dataset(layer, table)
            if dataset is not None:
                con.register(f"__ds_{name}", dataset)
                con.execute(f'create or replace temp view "{name}" as select * from "__ds_{name}"')
                return True
        if empty_schema is None:
            raise FileNotFoundError(f"lake table {layer}/{table} has no data at {self.uri(self.table_dir(layer, table))}")
        con.register(f"__empty_{name}", empty_schema.empty_table())
        con.execute(f'create or replace temp view "{name}" as select * from "__empty_{name}"')
        return False

    def iter_partition_tables(self, layer: str, table: str) -> Iterator[tuple[dict[str, str], pa.Table]]:
        for part in self.partitions(layer, table):
            yield part, self.read_table(layer, table, part)
