"""The hold-back of TensorFlow's native start-up notices (neuroseg.tfquiet)."""

import subprocess
import sys
import textwrap
from pathlib import Path

from neuroseg.tfquiet import filter_notices

NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796251254.899694    8862 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796251288.551386    8903 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.\n"
)
WARNING = (
    "W0000 00:00:1796251254.899694    8862 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n"
)
ERROR = "E0000 00:00:1796251254.899694    8862 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"
ROOT = Path(__file__).resolve().parents[1]
OTHER = "UserWarning: something a user should read\n"


def test_level_two_hides_info_and_warnings_but_keeps_errors_and_other_lines():
    text = NOTICES + WARNING + OTHER + ERROR
    assert filter_notices(text, 2) == OTHER + ERROR
    assert filter_notices(text, 1) == WARNING + OTHER + ERROR
    assert filter_notices(text, 3) == OTHER
    assert filter_notices(text, 0) == text


def test_a_line_after_a_hidden_notice_that_is_not_its_continuation_is_kept():
    text = NOTICES.splitlines(keepends=True)[1] + "To enable nothing: a user line\n"
    assert filter_notices(text, 2) == "To enable nothing: a user line\n"


def test_the_hook_holds_back_native_notices_of_the_wrapped_import_only(tmp_path):
    """A stand-in package writes notices and a real line straight to fd 2 when imported:
    with the hook and level 2 only the real line reaches stderr; level 0 lets all through."""
    package = tmp_path / "noisy"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import os
            os.write(2, {(NOTICES + OTHER).encode()!r})
            VALUE = 42
            """
        )
    )
    script = (
        "from neuroseg import tfquiet\n"
        "assert tfquiet.install('noisy')\n"
        "import noisy\n"
        "assert noisy.VALUE == 42\n"
        "import os; os.write(2, b'after\\n')\n"
    )
    runs = {}
    for level in ("2", "0"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "TF_CPP_MIN_LOG_LEVEL": level},
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        runs[level] = out.stderr
    assert runs["2"] == OTHER + "after\n"
    assert runs["0"] == NOTICES + OTHER + "after\n"
