"""`medclipseg.annotation.files`: atomic writes beside the database, path checks, crash safety of a store."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from annotation_support import case_with_prediction
from medclipseg.annotation.files import STALE_TEMP_SECONDS, FileStore, atomic_write
from medclipseg.annotation.store import AnnotationStore, StorageError

REPO = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, lambda handle: handle.write(b"first"))
    assert target.read_bytes() == b"first"

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]  # no temporary left


def test_file_store_round_trips_and_refuses_outside_paths(tmp_path):
    files = FileStore(tmp_path / "db_files")
    files.create()
    mask = np.zeros((6, 9), bool)
    mask[1:4, 2:7] = True
    files.write_mask("masks/m.png", mask)
    np.testing.assert_array_equal(files.read_mask("masks/m.png"), mask)
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    files.write_png("images/i.png", pixels)
    np.testing.assert_array_equal(files.read_image("images/i.png"), pixels)
    maps = {"probability": np.full((6, 9), 0.25, np.float32), "entropy": np.ones((6, 9), np.float16),
            "mutual_information": np.zeros((6, 9), np.float16)}
    files.write_maps("maps/p.npz", maps)
    loaded = files.read_maps("maps/p.npz")
    assert all(loaded[name].dtype == np.float32 for name in maps)
    with pytest.raises(StorageError, match="not a file of"):
        files.read_mask("images/i.png")
    with pytest.raises(StorageError, match="not a file of"):
        files.read_mask("../../etc/passwd")
    with pytest.raises(StorageError, match="missing"):
        files.read_mask("masks/none.png")
    (tmp_path / "db_files" / "masks" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(StorageError, match="damaged"):
        files.read_mask("masks/bad.png")
    files.discard("masks/m.png", "masks/never-written.png")
    assert not files.exists("masks/m.png")


def test_stale_temporaries_removed_on_open(tmp_path):
    store = AnnotationStore(tmp_path / "annotations.db")
    store.close()
    masks = store.files_dir / "masks"
    old, fresh = masks / ".x.png.old.tmp", masks / ".y.png.new.tmp"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written now")
    past = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(old, (past, past))
    AnnotationStore(tmp_path / "annotations.db").close()
    assert not old.exists() and fresh.exists()


CRASH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(sys.argv[1])
    case_id = int(sys.argv[2])
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    index = 0
    while True:
        index += 1
        store.add_case(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), prompt="crash test",
                       original_name=f"c{index}.png")
        correction = store.save_correction(case_id, rng.random((32, 32)) > 0.5, annotator="crasher")
        print(correction.id, flush=True)
""")


def test_crash_mid_write_keeps_committed_corrections(tmp_path):
    path = tmp_path / "annotations.db"
    with AnnotationStore(path) as store:
        case, _ = case_with_prediction(store, 77, shape=(32, 32))
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(path), str(case.id)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    committed = []
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        while len(committed) < 40:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            committed.append(int(line.split()[0]))
        time.sleep(random.Random(1).uniform(0.0, 0.05))  # land somewhere inside a write
    finally:
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate(timeout=30)
    committed += [int(line.split()[0]) for line in rest.splitlines() if line.strip()]
    assert process.returncode == -signal.SIGKILL

    with AnnotationStore(path) as reopened:
        assert reopened.integrity_check() == "ok"
        rows = {row["id"]: row for row in reopened.corrections(latest_only=False)}
        assert set(committed) <= set(rows)
        for correction_id in committed:
            assert reopened.load_mask(rows[correction_id]["mask_path"]).shape == (32, 32)
            assert reopened.load_mask(rows[correction_id]["predicted_mask_path"]).shape == (32, 32)
        assert sorted(row["version"] for row in rows.values()) == list(range(1, len(rows) + 1))
        # The store still takes writes after the crash.
        assert reopened.save_correction(case.id, np.zeros((32, 32), bool), annotator="after").version == len(rows) + 1
    for row_path in (path.parent / "annotations_files" / "masks").glob("*.png"):
        assert row_path.stat().st_size > 0
