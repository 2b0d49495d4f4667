"""What seal leaves out: the defaults, an app's .strongroomignore, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.errors import InvalidInputError
from strongroom.sealing.archive import _walk
from strongroom.sealing.ignore import IGNORE_FILE, MAX_IGNORE_FILE, IgnoreRules
from strongroom.sealing.tree import ExtractLimits


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not name.endswith("/"):
            path.write_text(name)


def _sealed(root: Path, rules: IgnoreRules) -> list[str]:
    return [name for name, _path, _st in _walk(root, ExtractLimits(), rules)]


def test_defaults_skip_git_caches_and_env_files(tmp_path: Path) -> None:
    _tree(tmp_path, [".git/HEAD", "a/__pycache__/m.pyc", "a/m.py", "b.pyc", ".env",
                     ".env.prod", "env.py", ".envrc", "sub/.env"])  # fmt: skip
    rules = IgnoreRules.for_app(tmp_path)
    assert _sealed(tmp_path, rules) == [".envrc", "a", "a/m.py", "env.py", "sub"]
    assert rules.skipped == [".env", ".env.prod", ".git/", "a/__pycache__/", "b.pyc", "sub/.env"]


def test_the_ignore_file_adds_patterns_and_may_keep_a_default(tmp_path: Path) -> None:
    _tree(tmp_path, [".env.example", ".env", "data/raw/x.csv", "data/x.csv", "raw/y.csv",
                     "notes.tmp", "deep/er/notes.tmp"])  # fmt: skip
    (tmp_path / IGNORE_FILE).write_text("# comment\n/data/raw/\n*.tmp\n!.env.example\n")
    rules = IgnoreRules.for_app(tmp_path)
    sealed = _sealed(tmp_path, rules)
    assert ".env.example" in sealed and "raw/y.csv" in sealed and "data/x.csv" in sealed
    assert rules.skipped == [".env", "data/raw/", "deep/er/notes.tmp", "notes.tmp"]


def test_a_manifest_entry_that_would_be_skipped_is_refused(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).write_text("tools/\n")
    rules = IgnoreRules.for_app(tmp_path)
    rules.check_kept(["main.py"])
    with pytest.raises(InvalidInputError, match=r"'tools/train\.py' would not be sealed: tools/"):
        rules.check_kept(["main.py", "tools/train.py"])


def test_a_huge_or_binary_ignore_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).write_bytes(b"x\n" * (MAX_IGNORE_FILE // 2 + 1))
    with pytest.raises(InvalidInputError, match="larger than"):
        IgnoreRules.for_app(tmp_path)
    (tmp_path / IGNORE_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        IgnoreRules.for_app(tmp_path)
