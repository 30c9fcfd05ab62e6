"""A bundle's part paths never lead out of its folder, whatever its manifest says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.backups.parts import BackupCorruptError
from app.backups.storage import LocalBackupStorage
from tests.unit.test_backups import make_bundle


@pytest.fixture
def storage(tmp_path: Path) -> LocalBackupStorage:
    return LocalBackupStorage(tmp_path / "backups")


def _rewrite_part_path(storage: LocalBackupStorage, backup_id: str, kind: str, path: str) -> None:
    manifest_file = storage.root / backup_id / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    for part in manifest["parts"]:
        if part["kind"] == kind:
            part["path"] = path
    manifest_file.write_text(json.dumps(manifest))


@pytest.mark.parametrize("relative", ["/etc/passwd", "../x/rootfs.tar", "volumes/../../x",
                                      "./rootfs.tar", "volumes//data.tar", "", "a\\..\\b"])
def test_absolute_dotted_or_empty_part_paths_are_corrupt(storage, relative):
    manifest = make_bundle(storage)
    with pytest.raises(BackupCorruptError) as caught:
        storage.part_path(manifest["id"], relative)
    assert caught.value.status == 422 and "escapes the bundle folder" in caught.value.detail


def test_a_symlinked_part_is_corrupt_even_if_it_points_inside(storage, tmp_path):
    manifest = make_bundle(storage)
    folder = storage.root / manifest["id"]
    (tmp_path / "secret").write_bytes(b"not yours")
    (folder / "volumes" / "data.tar").unlink()
    (folder / "volumes" / "data.tar").symlink_to(tmp_path / "secret")
    (folder / "alias.tar").symlink_to(folder / "rootfs.tar")
    for relative in ("volumes/data.tar", "alias.tar"):
        with pytest.raises(BackupCorruptError):
            storage.part_path(manifest["id"], relative)


def test_a_symlinked_folder_inside_the_bundle_is_corrupt(storage, tmp_path):
    manifest = make_bundle(storage)
    folder = storage.root / manifest["id"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.tar").write_bytes(b"elsewhere")
    (folder / "volumes" / "data.tar").unlink()
    (folder / "volumes").rmdir()
    (folder / "volumes").symlink_to(outside)
    with pytest.raises(BackupCorruptError):
        storage.verify(manifest["id"])


def test_a_symlinked_bundle_folder_is_corrupt_and_left_out_of_the_catalog(storage, tmp_path):
    real = make_bundle(storage)
    copy_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    (storage.root / copy_id).symlink_to(storage.root / real["id"])
    with pytest.raises(BackupCorruptError):
        storage.manifest(copy_id)
    assert [m["id"] for m in storage.catalog()] == [real["id"]]


@pytest.mark.parametrize("relative", ["/etc/hostname", "../other/rootfs.tar"])
def test_verify_and_download_refuse_a_manifest_naming_a_path_outside(storage, relative):
    manifest = make_bundle(storage)
    _rewrite_part_path(storage, manifest["id"], "rootfs", relative)
    with pytest.raises(BackupCorruptError, match="escapes the bundle folder"):
        storage.verify(manifest["id"])
    with pytest.raises(BackupCorruptError, match="escapes the bundle folder"):
        storage.archive(manifest["id"])


def test_parts_inside_the_bundle_still_resolve(storage):
    manifest = make_bundle(storage)
    assert storage.part_path(manifest["id"], "volumes/data.tar").read_bytes() == b"volume bytes"
    assert storage.verify(manifest["id"])["id"] == manifest["id"]
    assert storage.archive(manifest["id"]).size > 0
