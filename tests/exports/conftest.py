"""The export tests share one study, built once (about a second) and copied per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.exports.support import build_study, copy_db


@pytest.fixture(scope="session")
def study_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_study(tmp_path_factory.mktemp("study") / "study.db")


@pytest.fixture
def db(study_file: Path, tmp_path: Path) -> str:
    """A private copy of the two-subject study (tests may append to it)."""
    return copy_db(study_file, tmp_path)
