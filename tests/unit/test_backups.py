"""Backup bundles without an engine: parts, storage, the download tar, ranges, cron, restore specs."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from marshmallow import ValidationError

from app.backups.download import digest_headers, none_match, parse_range
from app.backups.parts import BackupCorruptError, PartWriter, read_part
from app.backups.restore import image_changes, restore_spec
from app.backups.schedules import CronExpression, apply_retention, due_minutes, validate_cron
from app.backups.storage import LocalBackupStorage
from app.core.errors import InvalidInputError, NotFoundError
from app.core.ids import new_id
from app.engine.streaming import StallWatchdog, _dechunk
from schemas.backups import BackupSpecSchema, RestoreSpecSchema, ScheduleSpecSchema


def make_bundle(storage: LocalBackupStorage, compression: str = "none", schedule_id: str | None = None,
                payload: bytes = b"x" * 5000) -> dict:
    backup_id = new_id()
    staging = storage.begin(backup_id)
    parts = []
    for relative, kind, data in (("config.json", "config", b'{"Id": "abc"}'),
                                 (f"rootfs.tar{'.gz' if compression == 'gzip' else ''}", "rootfs",
                                  payload),
                                 ("volumes/data.tar", "volume", b"volume bytes")):
        writer = PartWriter(staging / relative, compression if kind == "rootfs" else "none")
        writer.write(data)
        parts.append({"path": relative, "kind": kind, **writer.finish()})
    time.sleep(0.002)  # ids sort by millisecond
    return storage.publish(backup_id, {
        "id": backup_id, "host": "local", "container": {"id": "abc", "name": "web"},
        "created_at": "2026-01-02T03:04:05.000Z", "schedule_id": schedule_id, "parts": parts})


@pytest.fixture
def storage(tmp_path: Path) -> LocalBackupStorage:
    return LocalBackupStorage(tmp_path / "backups")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_a_part_is_hashed_as_stored_and_reads_back_decompressed(tmp_path, compression):
    data = b"".join(i.to_bytes(4, "big") for i in range(300_000))
    writer = PartWriter(tmp_path / "p", compression)
    for start in range(0, len(data), 65536):
        writer.write(data[start:start + 65536])
    entry = writer.finish()
    stored = (tmp_path / "p").read_bytes()
    assert entry["sha256"] == hashlib.sha256(stored).hexdigest()
    assert entry["size"] == len(stored) and entry["uncompressed_size"] == len(data)
    assert (len(stored) < len(data)) == (compression != "none")
    assert b"".join(read_part(tmp_path / "p", compression)) == data


def test_a_bundle_is_visible_only_once_published(storage):
    backup_id = new_id()
    storage.begin(backup_id)
    assert storage.catalog() == [] and storage.find(backup_id) is None
    manifest = make_bundle(storage)
    assert [m["id"] for m in storage.catalog()] == [manifest["id"]]
    assert not any(p.name.endswith(".tmp") for p in storage.root.iterdir() if p.name != backup_id + ".tmp")


def test_begin_removes_what_an_earlier_delivery_left(storage):
    backup_id = new_id()
    (storage.begin(backup_id) / "rootfs.tar").write_bytes(b"half")
    assert list(storage.begin(backup_id).iterdir()) == []


def test_verify_names_the_part_whose_byte_flipped(storage):
    manifest = make_bundle(storage)
    assert storage.verify(manifest["id"])["id"] == manifest["id"]
    path = storage.part_path(manifest["id"], "volumes/data.tar")
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BackupCorruptError, match=r"volumes/data\.tar") as caught:
        storage.verify(manifest["id"])
    assert caught.value.status == 422


def test_unknown_or_malformed_ids_are_not_found(storage):
    for bad in (new_id(), "../etc", "x"):
        with pytest.raises(NotFoundError):
            storage.manifest(bad)


def test_the_download_is_a_deterministic_tar_and_any_range_is_a_slice_of_it(storage):
    manifest = make_bundle(storage, compression="gzip", payload=b"abc" * 100_000)
    archive = storage.archive(manifest["id"])
    whole = b"".join(archive.read())
    assert len(whole) == archive.size and len(whole) % 512 == 0
    assert b"".join(storage.archive(manifest["id"]).read()) == whole
    with tarfile.open(fileobj=io.BytesIO(whole)) as bundle:
        names = bundle.getnames()
        assert names[0] == f"{manifest['id']}/manifest.json"
        for part in manifest["parts"]:
            data = bundle.extractfile(f"{manifest['id']}/{part['path']}").read()
            assert hashlib.sha256(data).hexdigest() == part["sha256"]
    for start, end in ((0, 99), (500, 530), (511, 513), (1000, archive.size - 1), (0, 0)):
        assert b"".join(archive.read(start, end)) == whole[start:end + 1]


@pytest.mark.parametrize("header, expected", [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=10-", (10, 999)), ("bytes=-10", (990, 999)),
    ("bytes=990-5000", (990, 999)), ("bytes=1000-", False), ("bytes=-0", False),
    ("bytes=5-1", None), ("items=0-1", None), ("bytes=0-1,5-6", None), ("bytes=-", None),
    ("bytes=-5000", (0, 999)),
])
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("expression, when, due", [
    ("* * * * *", datetime(2026, 3, 1, 12, 7), True),
    ("*/15 * * * *", datetime(2026, 3, 1, 12, 30), True),
    ("*/15 * * * *", datetime(2026, 3, 1, 12, 31), False),
    ("0 3 * * *", datetime(2026, 3, 1, 3, 0), True),
    ("0 3 * * *", datetime(2026, 3, 1, 4, 0), False),
    ("0 0 * * mon-fri", datetime(2026, 3, 2, 0, 0), True),  # a Monday
    ("0 0 * * mon-fri", datetime(2026, 3, 1, 0, 0), False),  # a Sunday
    ("0 0 * * 7", datetime(2026, 3, 1, 0, 0), True),  # 7 is Sunday too
    ("0 0 1 * 1", datetime(2026, 3, 2, 0, 0), True),  # both day fields: either matches
    ("0 0 1 * 1", datetime(2026, 3, 3, 0, 0), False),
    ("5,10-12 1 * jan,mar *", datetime(2026, 3, 9, 1, 11), True),
    ("5,10-12 1 * feb *", datetime(2026, 3, 9, 1, 11), False),
    ("10/20 * * * *", datetime(2026, 3, 9, 1, 50), True),
])
def test_cron_matches_like_vixie_cron(expression, when, due):
    assert CronExpression.parse(expression).matches(when) is due


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * *", "60 * * * *", "* 24 * * *",
                                        "*/0 * * * *", "5-1 * * * *", "x * * * *", "* * 0 * *",
                                        "* * * 13 *", "", "1,,2 * * * *"])
def test_invalid_cron_is_refused_with_a_422_naming_the_field(expression):
    with pytest.raises(InvalidInputError) as caught:
        validate_cron(expression)
    assert caught.value.status == 422 and "cron" in caught.value.extra["errors"]


def test_due_minutes_look_one_minute_back_for_a_late_tick():
    late_tick = datetime(2026, 3, 1, 3, 1, 0, 400_000, tzinfo=UTC)
    assert due_minutes("0 3 * * *", late_tick) == [datetime(2026, 3, 1, 3, 0, tzinfo=UTC)]
    assert due_minutes("0 3 * * *", datetime(2026, 3, 1, 3, 2, tzinfo=UTC)) == []


def test_retention_keeps_the_newest_bundles_of_that_schedule_only(storage):
    mine = [make_bundle(storage, schedule_id="S1")["id"] for _ in range(4)]
    other = make_bundle(storage, schedule_id="S2")["id"]
    manual = make_bundle(storage)["id"]
    assert sorted(apply_retention(storage, "S1", 2)) == sorted(mine[:2])
    assert {m["id"] for m in storage.catalog()} == {mine[2], mine[3], other, manual}


CONFIG = {
    "Config": {"Cmd": ["httpd", "-f"], "Entrypoint": None, "Env": ["A=1", "B=two words $X"],
               "WorkingDir": "/www", "User": "1000", "ExposedPorts": {"8080/tcp": {}},
               "Labels": {"team": "a", "dockyard.job": "J1", "dockyard.managed": "true"}},
    "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "18080"}],
                                    "9090/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                   "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                   "NetworkMode": "bridge", "Memory": 0, "NanoCpus": 500_000_000,
                   "IpcMode": "private"},
    "Mounts": [{"Type": "volume", "Name": "webdata", "Destination": "/data", "RW": True},
               {"Type": "bind", "Source": "/srv/dockyard/www", "Destination": "/www", "RW": False},
               {"Type": "volume", "Name": "a" * 64, "Destination": "/cache", "RW": True}],
}
MANIFEST = {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "container": {"name": "web"}, "parts": []}


def test_restore_spec_keeps_saved_ports_mounts_labels_and_restart_policy():
    spec = restore_spec(MANIFEST, CONFIG, {"start": True}, "dockyard-restore/web:b")
    assert spec["name"] == "web" and spec["image"] == "dockyard-restore/web:b"
    assert spec["ports"] == [
        {"container_port": 8080, "protocol": "tcp", "host_ip": None, "host_port": 18080},
        {"container_port": 9090, "protocol": "udp", "host_ip": "127.0.0.1", "host_port": None}]
    assert spec["volumes"] == [
        {"source": "webdata", "target": "/data", "read_only": False, "type": "volume"},
        {"source": "/srv/dockyard/www", "target": "/www", "read_only": True, "type": "bind"},
        {"source": None, "target": "/cache", "read_only": False, "type": "volume"}]
    assert spec["labels"] == {"team": "a", "dockyard.restored-from": MANIFEST["id"]}
    assert spec["restart_policy"] == {"name": "on-failure", "maximum_retry_count": 3}
    assert spec["cpus"] == 0.5 and spec["memory"] is None and spec["network"] is None
    assert "ipc_mode" not in spec and spec["pull"] == "never"


def test_port_overrides_replace_only_the_same_container_port():
    override = {"container_port": 8080, "protocol": "tcp", "host_ip": None, "host_port": 28080}
    spec = restore_spec(MANIFEST, CONFIG, {"name": "web2", "overrides": {"ports": [override]}},
                        "img:b")
    assert spec["name"] == "web2"
    assert [p["host_port"] for p in spec["ports"]] == [28080, None]


def test_privileges_in_the_saved_config_are_asked_for_again_so_the_policy_sees_them():
    config = {**CONFIG, "HostConfig": {**CONFIG["HostConfig"], "CapAdd": ["NET_ADMIN"],
                                       "NetworkMode": "host", "Privileged": True}}
    spec = restore_spec(MANIFEST, config, {}, "img:b")
    assert spec["cap_add"] == ["NET_ADMIN"] and spec["network"] == "host"
    assert spec["privileged"] is True


def test_image_changes_restore_config_with_quoting():
    changes = image_changes(CONFIG)
    assert 'CMD ["httpd", "-f"]' in changes
    assert 'ENV B="two words \\$X"' in changes
    assert "WORKDIR /www" in changes and "USER 1000" in changes and "EXPOSE 8080/tcp" in changes
    assert 'LABEL "team"="a"' in changes
    assert not any("dockyard.job" in c for c in changes)
    assert not any(c.startswith("ENTRYPOINT") for c in changes)


def test_the_watchdog_aborts_a_silent_stream():
    reader, writer = socket.socketpair()
    try:
        with StallWatchdog(0.3, lambda: reader.shutdown(socket.SHUT_RDWR)) as watchdog:
            writer.sendall(b"x")
            assert reader.recv(10) == b"x"
            watchdog.fed()
            started = time.monotonic()
            assert reader.recv(10) == b""  # unblocked by the abort, not by data
        assert watchdog.fired and time.monotonic() - started < 3
    finally:
        reader.close()
        writer.close()


def test_a_fed_watchdog_does_not_fire():
    with StallWatchdog(0.5, lambda: pytest.fail("aborted")) as watchdog:
        for _ in range(6):
            time.sleep(0.15)
            watchdog.fed()
    assert not watchdog.fired


def test_backup_options_refuse_unknown_compression_and_default_sensibly():
    assert BackupSpecSchema().load({}) == {"compression": "none", "consistency": "none",
                                           "include_volumes": True, "include_binds": False,
                                           "note": None}
    with pytest.raises(ValidationError) as caught:
        BackupSpecSchema().load({"compression": "rar"})
    assert "compression" in caught.value.messages


def test_schedules_keep_at_least_one_bundle():
    with pytest.raises(ValidationError) as caught:
        ScheduleSpecSchema().load({"host": "h", "container": "c", "cron": "* * * * *", "keep": 0})
    assert "keep" in caught.value.messages


def test_restore_accepts_docker_short_port_form():
    body = RestoreSpecSchema().load({"overrides": {"ports": ["19090:8080"]}})
    assert body["overrides"]["ports"] == [{"container_port": 8080, "host_port": 19090,
                                           "protocol": "tcp", "host_ip": None}]


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


def test_dechunk_joins_engine_chunks_into_megabyte_pieces():
    pieces = [bytes([i]) * 40_000 for i in range(60)]
    out = list(_dechunk(io.BufferedReader(io.BytesIO(chunked(*pieces)))))
    assert b"".join(out) == b"".join(pieces)
    assert len(out) == 3 and all(len(o) >= 1 << 20 for o in out[:-1])


@pytest.mark.parametrize("cut", [5, 20, -3])
def test_dechunk_refuses_a_truncated_stream(cut):
    body = chunked(b"a" * 100, b"b" * 100)
    with pytest.raises(ConnectionError):
        list(_dechunk(io.BufferedReader(io.BytesIO(body[:cut] if cut > 0 else body[:-7]))))


def test_digest_headers_carry_the_sha256_in_base64():
    digest = hashlib.sha256(b"bundle").hexdigest()
    encoded = base64.b64encode(hashlib.sha256(b"bundle").digest()).decode()
    assert digest_headers(digest) == {"Repr-Digest": f"sha-256=:{encoded}:",
                                      "Digest": f"sha-256={encoded}"}


@pytest.mark.parametrize(("header", "matches"), [
    (None, False), ("", False), ('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True),
    ("*", True), ('"abcd"', False), ("abc", False)])
def test_if_none_match_names_the_etag(header, matches):
    assert none_match(header, "abc") is matches
