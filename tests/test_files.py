"""imputmae.files.atomic_write: the one way outputs are written."""

import pytest

from imputmae.files import atomic_write, atomic_write_text


def test_atomic_write_renames_complete_file_and_keeps_suffix(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not (tmp_path / "sub" / "x.png").exists()   # the final name appears only after write returned
        tmp.write_bytes(b"abc")

    out = atomic_write(tmp_path / "sub" / "x.png", write)
    assert out.read_bytes() == b"abc"
    assert seen[0].suffix == ".png" and seen[0].parent == out.parent and seen[0].name.startswith(".")
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "t.txt", "old\n")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
