"""Atomic writes: the new file replaces the old whole and gets a plain file's mode."""

import os
import stat

import pytest

from adkit.io import atomic_path, write_text


def test_written_file_has_the_mode_open_would_give(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert (tmp_path / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
