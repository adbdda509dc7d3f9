from __future__ import annotations

from sync.plan import BlobInfo, Imported, plan


def blob(name: str, etag: str = "e1", size: int = 100) -> BlobInfo:
    return BlobInfo("images", name, etag, size)


def test_new_changed_vanished_and_returned() -> None:
    imported = {
        "images/same.jpg": Imported(1, "e1"),
        "images/edited.jpg": Imported(2, "e1"),
        "images/gone.jpg": Imported(3, "e1"),
        "images/back.jpg": Imported(4, "e1", missing=True),
        "images/still-gone.jpg": Imported(5, "e1", missing=True),
    }
    listed = [blob("same.jpg"), blob("edited.jpg", "e2"), blob("back.jpg"),
              blob("new one ü/deep/x.png"), blob("new one ü/deep/x.png")]
    todo = plan(listed, imported)
    assert [b.name for b in todo.new] == ["new one ü/deep/x.png"]
    assert [(t, b.etag) for t, b in todo.changed] == [(2, "e2")]
    assert todo.vanished == [3]
    assert [t for t, _ in todo.returned] == [4]


def test_bad_blobs_are_recorded_not_imported() -> None:
    todo = plan([blob("empty.jpg", size=0), blob("huge.jpg", size=10**9), blob("ok.jpg")], {},
                max_bytes=50 * 2**20)
    assert [b.name for b in todo.new] == ["ok.jpg"]
    assert todo.skipped == {"images/empty.jpg": "empty file (0 bytes)",
                            "images/huge.jpg": "1000000000 bytes, over MAX_IMAGE_BYTES (52428800)"}


def test_nothing_to_do_is_empty() -> None:
    assert plan([blob("a.jpg")], {"images/a.jpg": Imported(1, "e1")}).empty


def test_local_directory_source(tmp_path) -> None:
    from sync.sources import LocalDirSource

    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "ü.jpg").write_bytes(b"x" * 10)
    (tmp_path / "top.PNG").write_bytes(b"y" * 5)
    (tmp_path / "readme.txt").write_text("no")
    source = LocalDirSource(str(tmp_path), "/data/local-files/?d=images/")
    listed = {blob.name: blob for blob in source.list()}
    assert set(listed) == {"a b/ü.jpg", "top.PNG"}
    assert listed["top.PNG"].size == 5 and listed["top.PNG"].container == "local"
    assert source.url_for("a b/ü.jpg") == ("/data/local-files/?d=images/a%20b/%C3%BC.jpg", 0.0)
    flat = LocalDirSource(str(tmp_path), "/x/", recursive=False)
    assert [b.name for b in flat.list()] == ["top.PNG"]
    before = listed["top.PNG"].etag
    (tmp_path / "top.PNG").write_bytes(b"z" * 6)
    assert {b.name: b for b in source.list()}["top.PNG"].etag != before
