"""Keep TensorFlow's native start-up notices off stderr when ``TF_CPP_MIN_LOG_LEVEL`` asks for it.

TensorFlow 2.21 prints some notices from C++ before its logging is initialised, and those ignore
``TF_CPP_MIN_LOG_LEVEL``: on CPUs with AVX-512/AMX every import writes "All log messages before
absl::InitializeLog() is called are written to STDERR" and "oneDNN custom operations are on"
(twice). The only switch that stops them, ``TF_ENABLE_ONEDNN_OPTS=0``, also turns off the oneDNN
kernels that make bf16 fast on such CPUs, so instead :func:`install` wraps the first import of
``tensorflow``: while it runs, file descriptor 2 goes to a temporary file; afterwards every line
is written back to stderr except the notices the log level hides. Errors, Python warnings and
anything unrecognised still reach stderr, only later.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import tempfile

# One compiled pattern per native log severity that TF_CPP_MIN_LOG_LEVEL hides (glog format,
# e.g. "I0000 00:00:1796.. 8862 port.cc:153] ..."), plus the two continuation/preamble lines.
_PREAMBLE = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called")
_CONTINUATION = re.compile(r"^To enable the following instructions: .* rebuild TensorFlow")
_GLOG = re.compile(r"^([IWE])\d{4} \d\d:\d\d:\d\d")
_HIDDEN_BY_LEVEL = {"I": 1, "W": 2, "E": 3}


def min_log_level() -> int:
    """The native log level TensorFlow was asked for (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_notices(text: str, level: int) -> str:
    """`text` without the native log lines that `level` hides (TF_CPP_MIN_LOG_LEVEL semantics).

    A hidden ``I``/``W`` line takes its continuation line (the CPU-instruction hint spans two)
    with it; level 0 keeps everything.
    """
    if level <= 0:
        return text
    kept = []
    dropping = False
    for line in text.splitlines(keepends=True):
        glog = _GLOG.match(line)
        if glog:
            dropping = level >= _HIDDEN_BY_LEVEL[glog.group(1)]
        elif _PREAMBLE.match(line):
            dropping = True
        elif not (dropping and _CONTINUATION.match(line)):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader with fd 2 captured and replays what the log level allows."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        level = min_log_level()
        if level <= 0:
            self._loader.exec_module(module)
            return
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                text = captured.read().decode("utf-8", "replace")
                rest = filter_notices(text, level)
                if rest:
                    sys.stderr.write(rest)
                    sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds one top-level module with the other finders and gives its spec a quiet loader."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def install(name: str = "tensorflow") -> bool:
    """Wrap the next import of `name` (no-op once it is imported or already wrapped).

    Returns whether the hook is in place.
    """
    if name in sys.modules:
        return False
    if not any(isinstance(f, _QuietFinder) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder(name))
    return True
