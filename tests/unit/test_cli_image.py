"""`warren image import` failures that need no containerd: one line on stderr, documented exit codes.

The import itself, and the errors that need a running containerd (an archive that is a tar but
not an OCI layout, an image named by tag only), are tested in tests/integration/test_e2e_containerd.py.
"""

from __future__ import annotations

import io
import socket
import tarfile
from pathlib import Path

import pytest

from warren.cli import main
from warren.cli.errors import Exit


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A tar file (its content does not matter before containerd is reached)."""
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        data = b'{"imageLayoutVersion": "1.0.0"}'
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main.main(["image", "import", *argv])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err.strip()


def test_a_missing_file_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, str(tmp_path / "nope.tar")) == (Exit.USAGE, f"warren: {tmp_path / 'nope.tar'}: no such file")


def test_a_directory_or_a_non_tar_is_not_an_oci_archive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, str(tmp_path))
    assert (code, err) == (Exit.USAGE, f"warren: {tmp_path} is not a file (expected an OCI archive)")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    code, err = run(capsys, str(text))
    assert (code, err) == (Exit.USAGE, f"warren: {text} is not an OCI archive (not a tar file)")


def test_an_invalid_name_is_bad_input(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    code, err = run(capsys, str(archive), "--name", "Not/Valid:tag")
    assert code == Exit.USAGE and err.startswith("warren: --name: invalid image reference 'Not/Valid:tag'")


def test_no_containerd_is_unavailable(capsys: pytest.CaptureFixture[str], archive: Path, tmp_path: Path) -> None:
    missing = tmp_path / "containerd.sock"
    code, err = run(capsys, str(archive), "--containerd-socket", str(missing))
    assert (code, err) == (
        Exit.UNAVAILABLE,
        f"warren: no containerd socket at {missing}: is containerd running? (--containerd-socket)",
    )
    # A socket nobody accepts on (a daemon that died and left its socket file behind).
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(missing))
        code, err = run(capsys, str(archive), "--containerd-socket", str(missing))
    assert code == Exit.UNAVAILABLE
    assert err.startswith(f"warren: containerd at {missing} unreachable") and "is containerd running?" in err


def test_help_lists_the_image_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.main(["--help"])
    assert exc.value.code == 0
    assert "image" in capsys.readouterr().out
