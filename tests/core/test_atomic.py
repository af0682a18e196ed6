"""atomic_write: the content lands, the file and its directory are fsynced, no temporary file
stays behind, and a failed write or a refused check leaves the previous file as it was."""
from __future__ import annotations

import os
import stat

import pytest

from simplebev_core import atomic
from simplebev_core.atomic import atomic_write


def test_writes_the_content_and_leaves_only_the_file(tmp_path):
    path = atomic_write(tmp_path / "sub" / "out.bin", lambda f: f.write(b"hello"))
    assert path == tmp_path / "sub" / "out.bin"
    assert path.read_bytes() == b"hello"
    assert list(path.parent.iterdir()) == [path]


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [path]


def test_a_failing_writer_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_a_refused_check_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    seen = []

    def refuse(tmp):
        seen.append(tmp.read_bytes())  # the check sees the complete new content
        raise ValueError("not valid")

    with pytest.raises(ValueError, match="not valid"):
        atomic_write(path, lambda f: f.write(b"new"), check=refuse)
    assert seen == [b"new"]
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_an_interrupt_while_writing_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.bin"

    def interrupted(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_fsyncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    synced_dirs = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced_dirs.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    atomic_write(tmp_path / "out.bin", lambda f: f.write(b"x"))
    assert synced_dirs == [False, True]  # the file, then the directory holding the rename


def test_the_file_gets_the_mode_a_plain_write_gives(tmp_path):
    """mkstemp's owner-only mode must not reach the target: a published checkpoint is read by
    a node that may run as another user. The mode is what open() would give under the umask."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    written = atomic_write(tmp_path / "model.pt", lambda f: f.write(b"x"))
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    old = os.umask(0o077)
    try:
        private = atomic_write(tmp_path / "private.pt", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
