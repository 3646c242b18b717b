"""neuroseg.storage on local folders and on a real S3 API (moto server)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from neuroseg import storage
from neuroseg.storage import UnsafeKeyError


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "cell_id": np.array([1, 2, 3], dtype=np.int32),
            "area_px": np.array([10.5, 20.0, 3.25]),
            "touches_border": [True, False, True],
        }
    )


def _tmp_files(folder) -> list[str]:
    return [
        os.path.join(d, f)
        for d, _, fs in os.walk(folder)
        for f in fs
        if f.endswith(".neuroseg-tmp")
    ]


# ----------------------------------------------------------------------------- options


def test_storage_options_local_is_empty(tmp_path):
    assert storage.storage_options(str(tmp_path)) == {}
    assert storage.storage_options(f"file://{tmp_path}") == {}


def test_storage_options_read_from_environment_at_call_time(monkeypatch):
    for var in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    ):
        monkeypatch.delenv(var, raising=False)
    assert storage.storage_options("s3://b/k") == {}

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "TOKEN")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    opts = storage.storage_options("s3://b/k")
    assert opts == {
        "client_kwargs": {"endpoint_url": "http://general:9000", "region_name": "eu-west-1"},
        "key": "AKID",
        "secret": "SECRET",
        "token": "TOKEN",
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    assert storage.storage_options("s3://b")["client_kwargs"]["endpoint_url"] == (
        "http://s3-only:9000"
    )


def test_filesystem_paths(tmp_path, s3_bucket):
    fs, path = storage.filesystem(str(tmp_path / "a.txt"))
    assert fs.protocol[0] in ("file", "local")
    assert path == str(tmp_path / "a.txt")
    fs, path = storage.filesystem(s3_bucket + "/x/y.png")
    assert "s3" in fs.protocol
    assert path == s3_bucket[len("s3://") :] + "/x/y.png"


# ----------------------------------------------------------------------------- join


def test_join_local_and_s3():
    assert storage.join("/data/root", "uploads", "P001/a.png") == "/data/root/uploads/P001/a.png"
    assert storage.join("/data/root/", "x") == "/data/root/x"
    assert storage.join("rel", "x") == "rel/x"
    assert storage.join("s3://bucket", "a/b.json") == "s3://bucket/a/b.json"
    assert storage.join("s3://bucket/prefix/", "c") == "s3://bucket/prefix/c"
    assert storage.join("file:///tmp/r", "k") == "file:///tmp/r/k"
    assert storage.join("s3://bucket") == "s3://bucket"


@pytest.mark.parametrize(
    "key",
    ["..", "../x", "a/../../b", "a/..", "/etc/passwd", "a\\b", "..\\x", "", "a//b", "a/", "a\x00b",
     "./a", "s3://other/x", "C:/x"],
)  # fmt: skip
def test_join_refuses_unsafe_keys(key):
    with pytest.raises(UnsafeKeyError):
        storage.join("s3://bucket/root", key)
    with pytest.raises(ValueError):  # UnsafeKeyError is a ValueError
        storage.join("/tmp/root", "ok", key)


def test_join_refuses_non_string_key():
    with pytest.raises(UnsafeKeyError):
        storage.join("/tmp", 3)


# ----------------------------------------------------------------------------- local files


def test_local_bytes_round_trip_creates_parents(tmp_path):
    uri = storage.join(str(tmp_path), "deep/er/file.bin")
    data = bytes(range(256)) * 10
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    storage.write_bytes(uri, b"new")  # replace
    assert storage.read_bytes(uri) == b"new"
    assert storage.read_bytes(f"file://{uri}") == b"new"
    assert _tmp_files(tmp_path) == []


def test_local_write_respects_umask(tmp_path):
    uri = str(tmp_path / "m.txt")
    storage.write_bytes(uri, b"x")
    old = os.umask(0o022)
    os.umask(old)
    assert os.stat(uri).st_mode & 0o777 == 0o666 & ~old


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    uri = str(tmp_path / "keep.json")
    storage.write_json(uri, {"v": 1})

    def failing(f):
        f.write(b'{"v": 2, "half')
        raise OSError(errno.ENOSPC, "disk full")

    with pytest.raises(OSError, match="disk full"):
        storage._atomic_write_local(uri, failing)
    assert storage.read_json(uri) == {"v": 1}
    assert os.listdir(tmp_path) == ["keep.json"]


def test_json_sorted_indented_and_numpy(tmp_path):
    uri = str(tmp_path / "j" / "s.json")
    obj = {"b": np.int64(3), "a": np.float32(0.5), "arr": np.arange(3), "n": None, "s": "µm"}
    storage.write_json(uri, obj)
    text = storage.read_bytes(uri).decode("utf-8")
    assert (
        text
        == json.dumps(
            {"a": 0.5, "arr": [0, 1, 2], "b": 3, "n": None, "s": "µm"},
            sort_keys=True,
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    assert storage.read_json(uri)["arr"] == [0, 1, 2]


def test_read_json_corrupt_names_file(tmp_path):
    uri = str(tmp_path / "bad.json")
    storage.write_bytes(uri, b"{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        storage.read_json(uri)


def test_local_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "nope"))
    assert not storage.exists(str(tmp_path / "nope"))


def test_local_exists_delete_copy(tmp_path):
    src = str(tmp_path / "a" / "src.txt")
    dst = str(tmp_path / "b" / "dst.txt")
    storage.write_bytes(src, b"hello")
    assert storage.exists(src)
    assert storage.exists(str(tmp_path / "a"))
    storage.copy(src, dst)
    assert storage.read_bytes(dst) == b"hello"
    storage.delete(src)
    assert not storage.exists(src)
    storage.delete(src)  # missing is fine by default
    with pytest.raises(FileNotFoundError):
        storage.delete(src, missing_ok=False)
    with pytest.raises(IsADirectoryError):
        storage.delete(str(tmp_path / "b"))
    storage.delete(str(tmp_path / "b"), recursive=True)
    assert not storage.exists(str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError):
        storage.copy(src, dst)


def _populate(root: str) -> None:
    for key in ["b.png", "a.PNG", "notes.txt", "sub/c.tif", "sub/deeper/d.tiff", "sub/e.png"]:
        storage.write_bytes(storage.join(root, key), key.encode())


def _check_listing(root: str) -> None:
    j = lambda k: storage.join(root, k)  # noqa: E731
    assert storage.list_files(root) == sorted(
        j(k) for k in ["a.PNG", "b.png", "notes.txt", "sub/c.tif", "sub/deeper/d.tiff", "sub/e.png"]
    )
    assert storage.list_files(root, suffixes=".png") == [j("a.PNG"), j("b.png"), j("sub/e.png")]
    assert storage.list_files(root, suffixes=("tif", ".tiff")) == [
        j("sub/c.tif"),
        j("sub/deeper/d.tiff"),
    ]
    assert storage.list_files(root, recursive=False) == [j("a.PNG"), j("b.png"), j("notes.txt")]
    assert storage.list_files(root + "/", suffixes=[".txt"]) == [j("notes.txt")]
    assert storage.list_files(j("sub"), recursive=False) == [j("sub/c.tif"), j("sub/e.png")]
    assert storage.list_files(j("missing")) == []
    for uri in storage.list_files(root):
        assert storage.read_bytes(uri) == uri[len(root) + 1 :].encode()


def test_list_files_local_absolute(tmp_path):
    root = str(tmp_path / "root")
    _populate(root)
    (tmp_path / "root" / ".x.png.abc.neuroseg-tmp").write_bytes(b"partial")
    _check_listing(root)


def test_list_files_local_relative_and_file_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _populate("rel")
    _check_listing("rel")
    assert all(not u.startswith("/") for u in storage.list_files("rel"))
    url = f"file://{tmp_path}/rel"
    _check_listing(url)
    assert all(u.startswith("file://") for u in storage.list_files(url))


def test_list_files_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        storage.list_files(str(tmp_path), suffixes=["."])


def test_parquet_round_trip_local(tmp_path):
    uri = str(tmp_path / "t" / "cells.parquet")
    df = _frame()
    storage.write_parquet(df, uri)
    back = storage.read_parquet(uri)
    pd.testing.assert_frame_equal(back, df)
    assert storage.read_parquet(uri, columns=["cell_id"])["cell_id"].tolist() == [1, 2, 3]
    assert _tmp_files(tmp_path) == []


def test_hive_partitioned_read_with_filters_local(tmp_path):
    root = str(tmp_path / "cells")
    for plate in ("P001", "P002"):
        df = _frame().assign(image_id=[f"{plate}-{i}" for i in range(3)])
        storage.write_parquet(
            df, storage.join(root, f"plate_id={plate}", "img.parquet"), index=False
        )
    got = storage.read_parquet(root, filters=[("plate_id", "==", "P002")])
    assert sorted(got["image_id"]) == ["P002-0", "P002-1", "P002-2"]


def test_sha256_known_answer():
    assert storage.sha256_bytes(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert storage.sha256_bytes(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_bad_uri_and_data(tmp_path):
    with pytest.raises(ValueError, match="empty URI"):
        storage.read_bytes("")
    with pytest.raises(TypeError):
        storage.write_bytes(str(tmp_path / "x"), "text, not bytes")


def test_storage_is_light():
    code = "import sys, neuroseg.storage; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- S3


def test_s3_bytes_json_round_trip(s3_bucket):
    uri = storage.join(s3_bucket, "a/b/data.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    juri = storage.join(s3_bucket, "meta.json")
    storage.write_json(juri, {"z": 1, "a": [1, 2]})
    assert storage.read_json(juri) == {"a": [1, 2], "z": 1}
    assert storage.read_bytes(juri).decode().startswith('{\n  "a"')
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(s3_bucket, "missing.bin"))


def test_s3_listing_sees_fresh_writes(s3_bucket, s3_server):
    import boto3

    _populate(s3_bucket)
    _check_listing(s3_bucket)
    assert all(u.startswith("s3://") for u in storage.list_files(s3_bucket))
    # a write by another client (not through this process's s3fs cache) is seen at once
    bucket = s3_bucket[len("s3://") :]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").put_object(
        Bucket=bucket, Key="sub/z.png", Body=b"z"
    )
    assert storage.join(s3_bucket, "sub/z.png") in storage.list_files(s3_bucket, suffixes=".png")
    assert storage.exists(storage.join(s3_bucket, "sub/z.png"))
    storage.write_bytes(storage.join(s3_bucket, "sub/new.png"), b"n")
    assert storage.join(s3_bucket, "sub/new.png") in storage.list_files(
        storage.join(s3_bucket, "sub")
    )
    storage.delete(storage.join(s3_bucket, "sub/new.png"))
    assert storage.join(s3_bucket, "sub/new.png") not in storage.list_files(s3_bucket)
    assert not storage.exists(storage.join(s3_bucket, "sub/new.png"))


def test_s3_copy_and_delete(s3_bucket, tmp_path):
    local = str(tmp_path / "l.txt")
    storage.write_bytes(local, b"local")
    s3a = storage.join(s3_bucket, "x/a.txt")
    s3b = storage.join(s3_bucket, "y/b.txt")
    storage.copy(local, s3a)  # local -> s3
    storage.copy(s3a, s3b)  # s3 -> s3
    back = str(tmp_path / "back" / "b.txt")
    storage.copy(s3b, back)  # s3 -> local
    assert storage.read_bytes(s3b) == b"local"
    assert storage.read_bytes(back) == b"local"
    with pytest.raises(IsADirectoryError):
        storage.delete(storage.join(s3_bucket, "x"))
    storage.delete(storage.join(s3_bucket, "x"), recursive=True)
    assert storage.list_files(s3_bucket) == [s3b]


def test_s3_parquet_round_trip_and_partitions(s3_bucket):
    uri = storage.join(s3_bucket, "cells.parquet")
    df = _frame()
    storage.write_parquet(df, uri)
    pd.testing.assert_frame_equal(storage.read_parquet(uri), df)
    root = storage.join(s3_bucket, "cells")
    for plate in ("P001", "P002"):
        part = _frame().assign(image_id=[f"{plate}-{i}" for i in range(3)])
        storage.write_parquet(
            part, storage.join(root, f"plate_id={plate}", "i.parquet"), index=False
        )
    got = storage.read_parquet(root, filters=[("plate_id", "==", "P001")])
    assert sorted(got["image_id"]) == ["P001-0", "P001-1", "P001-2"]
    # the documented user path: pandas with storage_options
    direct = pd.read_parquet(uri, storage_options=storage.storage_options(uri))
    pd.testing.assert_frame_equal(direct, df)


# ----------------------------------------------------------------------------- errors


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def _real_socket_timeout() -> TimeoutError:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=0.05) as client:
            try:
                client.recv(1)  # the server never sends
            except TimeoutError as exc:
                return exc
    raise AssertionError("recv did not time out")


def _transient_cases():
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )
    from s3fs.errors import translate_boto_error

    return [
        TimeoutError("timed out"),
        _real_socket_timeout(),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        OSError(errno.ETIMEDOUT, "timed out"),
        OSError(errno.ECONNRESET, "reset"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        _client_error("InternalError", 500),
        _client_error("ServiceUnavailable", 503),
        _client_error("SlowDown", 503),
        _client_error("ThrottlingException", 400),
        translate_boto_error(_client_error("SlowDown", 503)),
        translate_boto_error(_client_error("InternalError", 500)),
        translate_boto_error(_client_error("BadGateway", 502)),
    ]


def _permanent_cases():
    from s3fs.errors import translate_boto_error

    from neuroseg.images import ImageDecodeError

    return [
        FileNotFoundError(errno.ENOENT, "missing"),
        PermissionError(errno.EACCES, "denied"),
        ValueError("corrupt"),
        ImageDecodeError("x.png", "truncated PNG"),
        UnsafeKeyError("bad key"),
        _client_error("AccessDenied", 403),
        _client_error("NoSuchKey", 404),
        translate_boto_error(_client_error("AccessDenied", 403)),
        translate_boto_error(_client_error("NoSuchKey", 404)),
        OSError(errno.ENOSPC, "disk full"),
        RuntimeError("bug"),
    ]


def test_is_transient_classification():
    for exc in _transient_cases():
        assert storage.is_transient(exc), repr(exc)
    for exc in _permanent_cases():
        assert not storage.is_transient(exc), repr(exc)
    assert isinstance(TimeoutError(), storage.TRANSIENT_ERRORS)
    assert isinstance(ConnectionResetError(), storage.TRANSIENT_ERRORS)
    assert not isinstance(FileNotFoundError(), storage.TRANSIENT_ERRORS)


def test_real_s3_errors_classified(s3_bucket):
    import s3fs

    with pytest.raises(FileNotFoundError) as missing:
        storage.read_bytes(storage.join(s3_bucket, "nope.png"))
    assert not storage.is_transient(missing.value)
    # nothing listens on this port: a genuine connection failure from botocore/s3fs
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": dead},
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1},
        skip_instance_cache=True,
    )
    fs.retries = 1
    with pytest.raises(Exception) as down:
        fs.cat_file(s3_bucket[len("s3://") :] + "/x")
    assert storage.is_transient(down.value), repr(down.value)
