"""The README's map ("How it fits together": one table row per top folder) matches the tree: every module of
a folder is named in its row (a subpackage by its folder, and its modules), and every file a row names exists."""

from __future__ import annotations

import re

import pytest

from tests.support import ROOT

FOLDERS = ("dreambot", "dreamcore", "worker", "bot", "bench")
NAMED = re.compile(r"`([\w./-]+\.(?:py|lua|json|sh|yml|txt|md))`")


def _row(folder: str) -> str:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{folder}/` |")]
    assert len(rows) == 1, f"README.md has {len(rows)} map rows for {folder}/"
    return rows[0]


def _files(folder: str) -> list[str]:
    """The folder's own files a reader opens: modules (package markers aside), scripts, data; relative paths."""
    base = ROOT / folder
    out = []
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if not path.is_file() or "__pycache__" in rel or path.name in ("__init__.py", "__main__.py"):
            continue
        if rel.startswith("locale/") or path.suffix == ".lua" and folder != "bench":
            continue  # the catalogs are named as `locale/`; a package's scripts beside the module that runs them
        out.append(rel)
    return out


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_file_of_a_folder_is_on_the_map(folder):
    row = _row(folder)
    missing = [rel for rel in _files(folder) if f"`{rel.rsplit('/', 1)[-1]}`" not in row]
    assert not missing, f"README.md's map row for {folder}/ doesn't name {missing}"
    for sub in {rel.split("/")[0] for rel in _files(folder) if "/" in rel}:
        assert f"`{sub}/`" in row, f"README.md's map row for {folder}/ doesn't name the subpackage {sub}/"


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_file_the_map_names_exists(folder):
    names = {path.name for path in (ROOT / folder).rglob("*") if path.is_file()}
    gone = [name for name in NAMED.findall(_row(folder)) if name.rsplit("/", 1)[-1] not in names]
    assert not gone, f"README.md's map row for {folder}/ names files that aren't there: {gone}"
