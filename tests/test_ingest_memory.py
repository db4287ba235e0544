"""The compact per-file bookkeeping of ingestion: the hash index and the manifest are read and
written as streams, and give exactly what the whole-dict JSON versions gave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from champion.ingest import cache
from champion.ingest.sources import ImageFolder

ZERO_TAIL = "ab" * 31 + "00"  # numpy's "S32" would drop this trailing zero byte


def own_files(folder: Path) -> list[str]:
    names = ["a/1.jpg", "a/2.jpg", "b/é 3.jpg"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
    return names


def test_the_hash_index_reads_and_writes_what_json_dumps_did(tmp_path: Path) -> None:
    folder, index = tmp_path / "imgs", tmp_path / "index.json"
    names = own_files(folder)
    entries: dict[str, list] = {}
    for i, name in enumerate(names):
        st = (folder / name).stat()
        entries[str((folder / name).resolve())] = [st.st_size, st.st_mtime_ns, ZERO_TAIL if i == 1 else f"{i:064x}"]
    entries['/elsewhere/"quoted" \\ ü.png'] = [7, -3, "f" * 64]  # another source's file
    index.write_text(json.dumps(entries))  # as the index was written before it was streamed
    hashes = cache.HashIndex(index, lambda p: "0" * 64, folder, names)
    known = hashes.known_names()
    assert known is not None and [d.tobytes().hex() for d in known] == [entries[str((folder / n).resolve())][2] for n in names]
    assert hashes.digest(folder / names[1]) == ZERO_TAIL
    assert hashes.lookup('/elsewhere/"quoted" \\ ü.png', 7, -3) == bytes.fromhex("f" * 64)
    hashes.save()
    assert index.read_text() == json.dumps(entries)  # nothing changed: not rewritten
    hashes.changed = True
    hashes.save()
    assert json.loads(index.read_text()) == entries
    # Read by an index that knows no folder: every row by path, written back the same.
    plain = cache.HashIndex(index, lambda p: "0" * 64)
    plain.changed = True
    plain.save()
    assert json.loads(index.read_text()) == entries


def test_an_index_written_otherwise_is_parsed_whole_and_a_broken_one_forgotten(tmp_path: Path) -> None:
    folder, index = tmp_path / "imgs", tmp_path / "index.json"
    names = own_files(folder)
    st = (folder / names[0]).stat()
    index.write_text(json.dumps({str((folder / names[0]).resolve()): [st.st_size, st.st_mtime_ns, "1" * 64]}, indent=2))
    assert cache.HashIndex(index, str, folder, names).digest(folder / names[0]) == "1" * 64
    index.write_text('{"x": [1, 2, "' + "1" * 64 + '"], "y": [1')  # cut short
    hashes = cache.HashIndex(index, lambda p: "2" * 64, folder, names)
    assert hashes.known_names() is None and hashes.digest(folder / names[0]) == "2" * 64


def test_a_manifest_s_files_are_streamed_out_and_read_back_when_used(tmp_path: Path) -> None:
    manifest = {"digest": "d", "source": "s", "classes": ["a"], "settings": {"x": [1, 2]}, "counts": {}, "skipped": []}
    files = {"a/1.jpg": "1" * 64, 'a/"é".jpg': ZERO_TAIL}
    for listed in (files, {}):
        folder = tmp_path / str(len(listed))
        folder.mkdir()
        cache.write_rest(folder, np.zeros(2), {"train": np.arange(2)}, manifest, listed.items())
        text = (folder / "manifest.json").read_text()
        assert text == json.dumps(manifest | {"files": listed}, indent=1)
        read = cache.read_manifest(folder / "manifest.json")
        assert read == json.loads(text) and list(read) == list(json.loads(text)) and dict(read["files"]) == listed
    (tmp_path / "other.json").write_text(json.dumps({"files": files} | manifest, indent=1))  # "files" not last
    assert cache.read_manifest(tmp_path / "other.json") == {"files": files} | manifest


def test_an_image_folder_keeps_every_digest_byte(tmp_path: Path) -> None:
    for name in ("a/1.png", "b/2.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = ImageFolder(tmp_path)
    source.content_digest(None, lambda p: ZERO_TAIL)
    assert source.files == {"a/1.png": ZERO_TAIL, "b/2.png": ZERO_TAIL}
    assert source.names == ["a/1.png", "b/2.png"] and source.labels.tolist() == [0, 1] and source.spans["train"] == range(0, 2)
