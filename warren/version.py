"""What this Warren is: its version, the commit it was built from, and the Python and library
versions it runs on (`warren --version`, `warren version`, ADR 64).

Stdlib only and no heavy import: `importlib.metadata` reads the installed packages' metadata
files without importing them. Never fails: anything it cannot tell is "unknown".
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown"
# The libraries whose version an operator needs when reporting a bug (ADR 11's list).
LIBRARIES = ("grpcio", "protobuf", "pysyncobj", "lmdb", "pyroute2", "cryptography", "prometheus-client")
PACKAGE_DIR = Path(__file__).resolve().parent
# Written by `make deb` (cmd/build-deb.sh) into the installed package: an install has no git.
COMMIT_FILE = PACKAGE_DIR / "BUILD_COMMIT"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    commit: str
    commit_source: str  # "build" (COMMIT_FILE), "git" (a checkout) or "unknown"
    python: str
    python_executable: str
    libraries: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "commit": self.commit,
            "commit_source": self.commit_source,
            "python": self.python,
            "python_executable": self.python_executable,
            "libraries": dict(self.libraries),
        }

    def text(self) -> str:
        lines = [
            f"warren {self.version}",
            f"commit: {self.commit}" + (f" ({self.commit_source})" if self.commit_source != UNKNOWN else ""),
            f"python: {self.python} ({self.python_executable})",
        ]
        width = max(len(name) for name in self.libraries)
        lines += [f"  {name.ljust(width)}  {version}" for name, version in self.libraries.items()]
        return "\n".join(lines)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN
    except Exception:  # a broken metadata directory must not break --version
        return UNKNOWN


def git_commit(checkout: Path) -> str:
    """HEAD of the git checkout whose root is `checkout`, with `-dirty` if tracked files differ
    from it; "" if `checkout` is no checkout root or git cannot tell. Only the root itself
    counts: an installed package can sit inside someone else's repository (a pyenv tree)."""
    if not (checkout / ".git").exists():
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", str(checkout), "diff-index", "--quiet", "HEAD", "--"], capture_output=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 1 else commit


def commit(package_dir: Path = PACKAGE_DIR) -> tuple[str, str]:
    """(commit, where it came from): the file the build wrote, else git, else unknown."""
    try:
        recorded = (package_dir / COMMIT_FILE.name).read_text().strip()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    if recorded:
        return recorded, "build"
    from_git = git_commit(package_dir.parent)
    if from_git:
        return from_git, "git"
    return UNKNOWN, UNKNOWN


def version_info() -> VersionInfo:
    found, source = commit()
    return VersionInfo(
        version=package_version("warren"),
        commit=found,
        commit_source=source,
        python=platform.python_version(),
        python_executable=sys.executable or UNKNOWN,
        libraries={name: package_version(name) for name in LIBRARIES},
    )


if __name__ == "__main__":
    # `python3 -m warren.version commit DIR`: the commit of the checkout DIR (for the build).
    if sys.argv[1:2] == ["commit"] and len(sys.argv) == 3:
        print(git_commit(Path(sys.argv[2])) or UNKNOWN)
    else:
        print(version_info().text())
