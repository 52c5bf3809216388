"""Where tuner writes a file: a regular file is replaced whole (never a half file), while a
symbolic link, a device or a FIFO named as the output is written through, never replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tuner.paths import atomic_write, write_text


def test_a_regular_file_is_replaced_whole_and_readable(tmp_path):
    out = tmp_path / "sub" / "out.csv"
    write_text(out, "a\n")
    write_text(out, "b\n")
    assert out.read_text() == "b\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["out.csv"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old\n")

    def half(filename: str) -> None:
        Path(filename).write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(out, half)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_symlink_is_written_through_to_its_target_and_stays_a_link(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"


def test_a_fifo_reader_gets_the_bytes(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_text(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert got == [b"through the pipe\n"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_character_device_is_written_to_not_replaced(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    null = (
        tmp_path / "null"
    )  # a private copy of /dev/null: a regression replaces it, not the real one
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    write_text(null, "discarded\n")
    assert stat.S_ISCHR(null.lstat().st_mode)
    assert list(tmp_path.iterdir()) == [null]


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_text(tmp_path, "x")


def test_predict_refuses_an_output_that_is_its_input(tmp_path, capsys):
    from tuner.cli import main

    rows = tmp_path / "rows.csv"
    rows.write_text("a,b\n1,2\n")
    link = tmp_path / "link.csv"
    link.symlink_to(rows)
    for output in (rows, link):
        code = main(["predict", "--model", str(tmp_path / "model.pt"), "--input", str(rows),
                     "--output", str(output)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "is the --input file" in err, err
    assert rows.read_text() == "a,b\n1,2\n"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("prepare", "prepare interrupted; no file was left half-written"),
        ("status", "status interrupted; no file was left half-written"),
        ("run-all", "interrupted; finished trials are kept in the storage"),
    ],
)
def test_an_interruption_says_what_was_interrupted(command, expected, monkeypatch, capsys):
    from tuner import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert cli.main([command]) == 130
    assert capsys.readouterr().err.strip().startswith(f"tuner: {expected}")
