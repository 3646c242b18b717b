"""Read and write files by URI: local paths, ``file://`` URLs and ``s3://bucket/key``.

Everything goes through fsspec (s3fs for S3). A *URI* is either a local path (relative or
absolute), a ``file://`` URL or ``s3://bucket/key``. Functions that return URIs keep the form
they were given: local paths in, local paths out; ``s3://`` in, ``s3://`` out.

S3 credentials and the endpoint come from the standard AWS environment variables, read at call
time (never at import): ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL_S3`` (preferred) or ``AWS_ENDPOINT_URL``.

Writes are atomic for local files (a temporary file in the same folder, flushed and fsynced, then
``os.replace``), and parent folders are created. S3 puts are atomic by nature. s3fs caches
listings per filesystem instance; :func:`exists`, :func:`list_files` and :func:`read_parquet`
invalidate that cache first, so they see what other processes wrote in the meantime.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TRANSIENT_ERRORS",
    "UnsafeKeyError",
    "copy",
    "create_exclusive",
    "delete",
    "exists",
    "filesystem",
    "is_local",
    "is_transient",
    "join",
    "list_files",
    "read_bytes",
    "read_json",
    "read_parquet",
    "sha256_bytes",
    "storage_options",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_parquet",
]

_TMP_SUFFIX = ".neuroseg-tmp"
_S3_SCHEMES = ("s3", "s3a")


class UnsafeKeyError(ValueError):
    """A key given to :func:`join` could escape its root or is malformed."""


# ----------------------------------------------------------------------------- URIs


def _scheme(uri: str) -> str:
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[0].lower()


def is_local(uri: str | os.PathLike) -> bool:
    """True for local paths and ``file://`` URLs."""
    return _scheme(os.fspath(uri)) in ("", "file", "local")


def _local_path(uri: str) -> str:
    """The plain path of a local URI (``file://`` prefix removed)."""
    scheme = _scheme(uri)
    if scheme in ("file", "local"):
        return uri.split("://", 1)[1]
    return uri


def _check_uri(uri: str | os.PathLike) -> str:
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"expected a URI string or path, got {type(uri).__name__}")
    if not uri:
        raise ValueError("empty URI: give a local path, file://... or s3://bucket/key")
    if "\x00" in uri:
        raise ValueError(f"{uri!r}: URI contains a NUL character")
    return uri


def storage_options(uri: str | os.PathLike) -> dict[str, Any]:
    """fsspec options for `uri`, read from the environment now.

    Parameters
    ----------
    uri : str
        Local path, ``file://`` URL or ``s3://bucket/key``.

    Returns
    -------
    dict
        ``{}`` for local URIs. For S3: ``client_kwargs.endpoint_url`` from
        ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``client_kwargs.region_name`` from
        ``AWS_DEFAULT_REGION`` and ``key``/``secret``/``token`` from ``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; each only when set. Suitable for
        ``pandas.read_parquet(uri, storage_options=...)``.
    """
    uri = _check_uri(uri)
    if _scheme(uri) not in _S3_SCHEMES:
        return {}
    env = os.environ
    options: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    for option, var in (
        ("key", "AWS_ACCESS_KEY_ID"),
        ("secret", "AWS_SECRET_ACCESS_KEY"),
        ("token", "AWS_SESSION_TOKEN"),
    ):
        if env.get(var):
            options[option] = env[var]
    return options


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it.

    Parameters
    ----------
    uri : str
        Local path, ``file://`` URL or ``s3://bucket/key``.

    Returns
    -------
    fs : fsspec.AbstractFileSystem
        ``LocalFileSystem`` or ``s3fs.S3FileSystem`` (configured by :func:`storage_options`).
    path : str
        The path as `fs` names it (absolute for local files, ``bucket/key`` for S3).
    """
    uri = _check_uri(uri)
    return fsspec.core.url_to_fs(uri, **storage_options(uri))


def _check_key(key: str) -> None:
    if not isinstance(key, str):
        raise UnsafeKeyError(f"key must be a string, got {type(key).__name__}: {key!r}")
    if not key:
        raise UnsafeKeyError("empty key: give a relative name such as 'images/a.png'")
    if "\x00" in key:
        raise UnsafeKeyError(f"key {key!r} contains a NUL character")
    if "\\" in key:
        raise UnsafeKeyError(f"key {key!r} contains a backslash: use '/' to separate parts")
    if key.startswith("/") or "://" in key or (len(key) >= 2 and key[1] == ":"):
        raise UnsafeKeyError(f"key {key!r} is absolute: give a path relative to the root")
    for part in key.split("/"):
        if part == "":
            raise UnsafeKeyError(f"key {key!r} has an empty part ('//' or a trailing '/')")
        if part in (".", ".."):
            raise UnsafeKeyError(f"key {key!r} contains {part!r}: it could leave the root")


def join(root: str | os.PathLike, *keys: str) -> str:
    """Child URI of `root`; keys are relative names and may contain ``/``.

    Parameters
    ----------
    root : str
        Local path, ``file://`` URL or ``s3://bucket[/prefix]``.
    *keys : str
        Relative keys such as ``"uploads"``, ``"P001/a.png"``.

    Returns
    -------
    str
        ``root/key1/key2...`` in the same form as `root`.

    Raises
    ------
    UnsafeKeyError
        A key is empty, absolute, contains ``..``, ``.``, a backslash, an empty part or NUL.
    """
    root = _check_uri(root)
    for key in keys:
        _check_key(key)
    if not keys:
        return root
    tail = "/".join(keys)
    if root.endswith("/"):
        return root + tail
    return root + "/" + tail


# ----------------------------------------------------------------------------- bytes


def _umask() -> int:
    """The process umask without changing it (Linux ``/proc``; 0o022 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _atomic_write_local(path: str, write, *, exclusive: bool = False) -> bool:
    """Call ``write(fileobj)`` on a temp file beside `path`, fsync, then ``os.replace`` it onto
    `path`; with `exclusive`, ``os.link`` it there instead, which fails on an existing name
    (then False, and `path` is left as it was). True when `path` now holds the new content."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(path) + ".", suffix=_TMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename; not all systems allow it
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return True


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of the file at `uri`.

    Raises
    ------
    FileNotFoundError
        No such file.
    """
    uri = _check_uri(uri)
    if is_local(uri):
        with open(_local_path(uri), "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `uri`, replacing any file there.

    Local files are written atomically (temp file in the same folder, fsync, ``os.replace``)
    and missing parent folders are created. S3 objects are put in one request.
    """
    uri = _check_uri(uri)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{uri}: data must be bytes, got {type(data).__name__}")
    if is_local(uri):
        path = _local_path(uri)
        if path.endswith(("/", os.sep)):
            raise ValueError(f"{uri}: names a folder, not a file")
        _atomic_write_local(path, lambda f: f.write(data))
        return
    fs, path = filesystem(uri)
    fs.pipe_file(path, bytes(data))
    fs.invalidate_cache(path)


def create_exclusive(uri: str | os.PathLike, data: bytes) -> bool:
    """Write `data` to `uri` only if nothing is there: True if this call created the file,
    False if it existed. Atomic: of concurrent callers exactly one gets True, and a reader
    never sees a partial file.

    Local files: a complete temp file hard-linked to the name (``link`` fails on an existing
    name). S3: a put with ``If-None-Match: *`` (AWS S3 since 2024, MinIO, moto).
    """
    uri = _check_uri(uri)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{uri}: data must be bytes, got {type(data).__name__}")
    if is_local(uri):
        return _atomic_write_local(_local_path(uri), lambda f: f.write(data), exclusive=True)
    fs, path = filesystem(uri)
    try:
        fs.pipe_file(path, bytes(data), mode="create")
    except FileExistsError:
        return False
    finally:
        fs.invalidate_cache(path)
    return True


def to_jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays to Python, tuples to lists, NaN/inf to None.

    For results that are both stored and shown (printing ``np.float64(0.5)`` helps nobody).
    """
    import math

    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(obj: Any) -> Any:
    """JSON for numpy scalars/arrays, paths and dates."""
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def read_json(uri: str | os.PathLike) -> Any:
    """Parse the JSON file at `uri`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not valid UTF-8 JSON (the message names the file).
    """
    uri = _check_uri(uri)
    data = read_bytes(uri)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{uri}: not valid JSON ({exc})") from exc


def write_json(uri: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as JSON (sorted keys, indent 2, trailing newline), atomically.

    numpy scalars and arrays, paths, dates and sets are converted to plain JSON.
    """
    uri = _check_uri(uri)
    text = json.dumps(obj, sort_keys=True, indent=2, default=_json_default, ensure_ascii=False)
    write_bytes(uri, (text + "\n").encode("utf-8"))


def exists(uri: str | os.PathLike) -> bool:
    """True when a file or folder (an S3 prefix with objects, or a bucket) exists at `uri`."""
    uri = _check_uri(uri)
    if is_local(uri):
        return os.path.exists(_local_path(uri))
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def delete(uri: str | os.PathLike, *, recursive: bool = False, missing_ok: bool = True) -> None:
    """Delete the file at `uri` (or the folder tree with ``recursive=True``).

    Parameters
    ----------
    recursive : bool
        Also delete folders and everything under them. Without it a folder raises
        ``IsADirectoryError``.
    missing_ok : bool
        When False, a missing `uri` raises ``FileNotFoundError``.
    """
    uri = _check_uri(uri)
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        if missing_ok:
            return
        raise FileNotFoundError(errno.ENOENT, "no such file", uri)
    if fs.isdir(path):
        if not recursive:
            raise IsADirectoryError(errno.EISDIR, "is a folder; pass recursive=True", uri)
        fs.rm(path, recursive=True)
    else:
        fs.rm_file(path)
    fs.invalidate_cache(path)


def copy(src_uri: str | os.PathLike, dst_uri: str | os.PathLike) -> None:
    """Copy one file; `src_uri` and `dst_uri` may be on different filesystems.

    Local destinations are written atomically; S3 to S3 copies stay on the server.
    """
    src_uri, dst_uri = _check_uri(src_uri), _check_uri(dst_uri)
    src_fs, src_path = filesystem(src_uri)
    if is_local(dst_uri):

        def write(f):
            with src_fs.open(src_path, "rb") as src:
                while chunk := src.read(1 << 22):
                    f.write(chunk)

        src_fs.invalidate_cache(src_path)
        if not src_fs.isfile(src_path):
            raise FileNotFoundError(errno.ENOENT, "no such file", src_uri)
        _atomic_write_local(_local_path(dst_uri), write)
        return
    dst_fs, dst_path = filesystem(dst_uri)
    if dst_fs is src_fs:
        src_fs.copy(src_path, dst_path)
    elif is_local(src_uri):
        dst_fs.put_file(_local_path(src_uri), dst_path)
    else:
        dst_fs.pipe_file(dst_path, read_bytes(src_uri))
    dst_fs.invalidate_cache(dst_path)


def _normalise_suffixes(suffixes: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if suffixes is None:
        return None
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    out = []
    for s in suffixes:
        if not isinstance(s, str) or not s.strip("."):
            raise ValueError(f"bad suffix {s!r}: give e.g. '.png' or ('.tif', '.tiff')")
        s = s.lower()
        out.append(s if s.startswith(".") else "." + s)
    return tuple(out)


def list_files(
    uri: str | os.PathLike,
    *,
    suffixes: str | Iterable[str] | None = None,
    recursive: bool = True,
) -> list[str]:
    """Sorted full URIs of the files under the folder `uri`.

    Parameters
    ----------
    uri : str
        A folder (local) or prefix (S3). A missing folder gives ``[]``.
    suffixes : str or iterable of str, optional
        Keep only names ending in one of these, case-insensitive (``".png"`` or ``"png"``).
    recursive : bool
        Include files in sub-folders.

    Returns
    -------
    list of str
        URIs in the same form as `uri` (local paths stay paths, ``s3://`` stays ``s3://``),
        sorted. Temporary files of unfinished atomic writes are never listed.
    """
    uri = _check_uri(uri)
    wanted = _normalise_suffixes(suffixes)
    fs, base = filesystem(uri)
    fs.invalidate_cache(base)
    base = base.rstrip("/")
    if not fs.isdir(base):
        return []
    if recursive:
        found = fs.find(base, withdirs=False)
    else:
        found = [e["name"] for e in fs.ls(base, detail=True) if e.get("type") == "file"]
    prefix = uri.rstrip("/")
    out = []
    for name in found:
        name = name.rstrip("/")
        if not name.startswith(base + "/"):
            continue
        rel = name[len(base) + 1 :]
        leaf = rel.rsplit("/", 1)[-1]
        if not leaf or leaf.endswith(_TMP_SUFFIX):
            continue
        if wanted is not None and not leaf.lower().endswith(wanted):
            continue
        out.append(prefix + "/" + rel)
    return sorted(out)


# ----------------------------------------------------------------------------- tables


def read_parquet(uri: str | os.PathLike, **kw: Any) -> pd.DataFrame:
    """Read a Parquet file or a (hive-partitioned) folder of them with pyarrow.

    Keyword arguments go to :func:`pandas.read_parquet` (``columns``, ``filters``, ...).
    """
    import pandas as pd

    uri = _check_uri(uri)
    kw.setdefault("engine", "pyarrow")
    if is_local(uri):
        return pd.read_parquet(_local_path(uri), **kw)
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    return pd.read_parquet(path, filesystem=fs, **kw)


def write_parquet(df: pd.DataFrame, uri: str | os.PathLike, **kw: Any) -> None:
    """Write `df` to one Parquet file at `uri` with pyarrow (atomic for local files).

    Keyword arguments go to :meth:`pandas.DataFrame.to_parquet` (e.g. ``index=False``).
    """
    uri = _check_uri(uri)
    if not hasattr(df, "to_parquet"):
        raise TypeError(f"{uri}: expected a pandas DataFrame, got {type(df).__name__}")
    kw.setdefault("engine", "pyarrow")
    buf = io.BytesIO()
    df.to_parquet(buf, **kw)
    write_bytes(uri, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 digest of `data` (64 lowercase hex digits)."""
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- errors


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [TimeoutError, ConnectionError]
    try:
        from botocore import exceptions as bx

        types += [
            bx.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSL, proxy
            bx.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, streaming errors
            bx.IncompleteReadError,
        ]
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        pass
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = _transient_types()
"""Exception types worth retrying: timeouts and connection failures (builtin and botocore)."""

_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ETIMEDOUT",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "EPIPE",
        "ENETDOWN",
        "ENETUNREACH",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "EAGAIN",
        "EBUSY",  # s3fs: SlowDown, ServiceUnavailable
        "EREMOTEIO",  # s3fs: InternalError
    )
    if hasattr(errno, name)
)
_THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
    }
)
_PERMANENT = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
    TypeError,
    KeyError,
)


def _client_error_transient(exc: BaseException) -> bool | None:
    """For errors carrying a botocore-style ``response``: transient or not; None otherwise."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or "Error" not in response:
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    if code in _THROTTLING_CODES:
        return True
    if status is not None:
        return status >= 500 or status in (408, 429)
    return code.isdigit() and (int(code) >= 500 or int(code) in (408, 429))


def is_transient(exc: BaseException) -> bool:
    """True when retrying the failed I/O may succeed.

    Transient: :data:`TRANSIENT_ERRORS` (timeouts, connection errors, botocore endpoint and
    read errors), botocore ``ClientError`` with HTTP 5xx, 408, 429 or a throttling code, and
    ``OSError`` with a network errno (``ETIMEDOUT``, ``ECONNRESET``, ...) or the errnos s3fs
    gives throttling and server errors (``EBUSY``, ``EREMOTEIO``). Explicit causes
    (``raise ... from``) are followed, as s3fs wraps botocore errors.

    Permanent: missing files, access denied (``PermissionError``), folders, corrupt data
    (``ValueError``, which includes :class:`neuroseg.images.ImageDecodeError`), and anything else.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _PERMANENT):
            return False
        verdict = _client_error_transient(exc)
        if verdict is not None:
            return verdict
        if isinstance(exc, TRANSIENT_ERRORS):
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__
    return False
