"""The generator writes through the pyarrow filesystem only: an S3 bucket (moto) gets the same bytes as a local dir."""

from __future__ import annotations

import gzip

import pyarrow.fs as pafs
import pytest

from personalization_assets.generator import generate_landing_zone
from tests.generator.zone import END, all_files


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()  # moto 5.2; the bound port is also server._server.server_port
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="x")
        client.create_bucket(Bucket="demo")
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="x", secret_key="x",
                               region="us-east-1")
        yield fs, client
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_generate_into_s3_matches_local(s3, tmp_path):
    s3, client = s3
    kw = {"users": 200, "events": 4000, "seed": 9, "days": 1, "end": END, "bad_fraction": 0.02}
    summary = generate_landing_zone(s3, "demo/landing", **kw)
    local = generate_landing_zone(pafs.LocalFileSystem(), str(tmp_path), **kw)
    infos = [i for i in s3.get_file_info(pafs.FileSelector("demo/landing", recursive=True)) if i.type == pafs.FileType.File]
    remote = {i.path.removeprefix("demo/landing/"): i for i in infos}
    expected = all_files(tmp_path)
    assert set(remote) == set(expected)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="demo") for o in page.get("Contents", [])]
    assert sorted(keys) == sorted(f"landing/{k}" for k in expected), "no directory-marker objects"
    assert summary.to_dict() | {"root": None} == local.to_dict() | {"root": None}
    assert summary.files == len(expected) and summary.event_files == sum(k.startswith("events/") for k in expected)
    for name in ("_generator/manifest.json", next(k for k in expected if k.startswith("events/"))):
        with s3.open_input_stream(f"demo/landing/{name}", compression=None) as f:
            assert f.read() == expected[name]
    lines = 0
    for name in remote:
        if name.startswith("events/"):
            with s3.open_input_stream(f"demo/landing/{name}", compression=None) as f:
                lines += gzip.decompress(f.read()).count(b"\n")
    assert lines == summary.events_written == 4000
