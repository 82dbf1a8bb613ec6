import os
import stat

import pytest

from maskrcnn.io.atomic import atomic_write


def test_atomic_write_replaces_file_with_usual_mode(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write(path, lambda f: f.write("one"))
    atomic_write(path, lambda f: f.write("two"))
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_atomic_write_failure_keeps_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda f: f.write(b"good"), binary=True)

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, broken, binary=True)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
