"""lmlab.io: the one atomic-write helper (files and directories appear whole or not at all)."""
import pytest

from lmlab.io import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "old")
    atomic_write_text(p, "néw")
    assert p.read_text(encoding="utf-8") == "néw"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_dir_builds_then_renames(tmp_path, fsync):
    root = tmp_path / "entry"
    with atomic_dir(root, fsync=fsync) as tmp:
        (tmp / "x").write_text("1")
        assert not root.exists()
    assert (root / "x").read_text() == "1"
    with atomic_dir(root, fsync=fsync) as tmp:  # an existing entry is replaced whole
        (tmp / "y").write_text("2")
    assert sorted(f.name for f in root.iterdir()) == ["y"]
    with pytest.raises(ValueError):
        with atomic_dir(root) as tmp:
            (tmp / "z").write_text("3")
            raise ValueError("failed build")
    assert sorted(f.name for f in root.iterdir()) == ["y"]
    assert [f.name for f in tmp_path.iterdir()] == ["entry"]
