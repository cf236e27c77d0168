"""The vendored uPlot is the npm package's build, byte for byte, at the version package.json pins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "services/dashboard/src/trainingplatform_dashboard/static/vendor/uplot"
PACKAGE = ROOT / "node_modules/uplot"
FILES = {"uPlot.iife.min.js": "dist/uPlot.iife.min.js", "uPlot.min.css": "dist/uPlot.min.css", "LICENSE": "LICENSE"}


def pinned_version() -> str:
    version = json.loads((ROOT / "package.json").read_text())["devDependencies"]["uplot"]
    assert version[0].isdigit(), f"uplot must be pinned to an exact version in package.json, not {version!r}"
    return version


def test_package_lock_records_the_pinned_version() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/uplot"]["version"] == pinned_version()


@pytest.mark.parametrize("vendored", sorted(FILES))
def test_vendored_file_is_the_npm_build(vendored: str) -> None:
    assert PACKAGE.is_dir(), "node_modules/uplot is missing: run `make setup` (npm ci)"
    installed = json.loads((PACKAGE / "package.json").read_text())["version"]
    assert installed == pinned_version(), f"node_modules has uplot {installed}; run `make setup`"
    assert (VENDOR / vendored).read_bytes() == (PACKAGE / FILES[vendored]).read_bytes(), (
        f"static/vendor/uplot/{vendored} differs from uplot@{installed}'s {FILES[vendored]}: copy it again"
    )


def test_vendor_readme_names_the_version() -> None:
    assert f"uPlot {pinned_version()}" in (VENDOR / "README.md").read_text()
