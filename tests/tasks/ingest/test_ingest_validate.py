"""The one-pass tar scan behind shard validation: same samples and sha256 as tarfile/hashlib on a
webdataset tar, and every kind of damage is caught."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import webdataset as wds

from tasks.ingest.validate import ShardInvalid, _decode, scan_tar
from tasks.loopback import sample_jpeg

N = 12


@pytest.fixture
def tar_path(tmp_path):
    path = tmp_path / "00000.tar"
    with open(path, "wb") as f, wds.TarWriter(f) as writer:
        for i in range(N):
            writer.write(
                {
                    "__key__": f"{i:09d}",
                    "jpg": sample_jpeg(i),
                    "txt": f"caption {i}",
                    "json": json.dumps({"url": f"http://h/{i}.jpg"}),
                }
            )
    return path


def test_scan_agrees_with_tarfile_and_hashlib(tar_path):
    scan = scan_tar(tar_path, pick=lambda name, i: name.endswith(".jpg") and i % 5 == 0)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert scan.sha256 == hashlib.sha256(tar_path.read_bytes()).hexdigest()
    assert scan.samples == {f"{i:09d}": {"jpg", "txt", "json"} for i in range(N)}
    assert {n.partition(".")[0] for n in names} == set(scan.samples)
    assert [name for name, _ in scan.picked] == ["000000000.jpg", "000000005.jpg", "000000010.jpg"]
    assert scan.picked[1][1] == sample_jpeg(5)
    for name, data in scan.picked:
        _decode(name, data)


def _members(path):
    with tarfile.open(path) as tar:
        return tar.getmembers()


@pytest.mark.parametrize("where", ["first header", "first data", "middle", "last data", "end marker"])
def test_truncation_anywhere_is_caught(tar_path, where):
    members = _members(tar_path)
    last = members[-1]
    cut = {
        "first header": 100,
        "first data": members[0].offset_data + 10,
        "middle": members[N].offset + 300,
        "last data": last.offset_data + last.size - 1,
        "end marker": last.offset_data + -(-last.size // 512) * 512,
    }[where]  # all members, no end blocks
    tar_path.write_bytes(tar_path.read_bytes()[:cut])
    with pytest.raises(ShardInvalid, match="truncated"):
        scan_tar(tar_path)


def test_corrupt_header_and_undecodable_image_are_caught(tar_path):
    data = bytearray(tar_path.read_bytes())
    data[_members(tar_path)[1].offset + 10] ^= 0xFF  # inside the second member's header (its name)
    tar_path.write_bytes(bytes(data))
    with pytest.raises(ShardInvalid, match="checksum"):
        scan_tar(tar_path)
    with pytest.raises(ShardInvalid, match="does not decode"):
        _decode("x.jpg", sample_jpeg(1)[:20] + bytes(200))
    with pytest.raises(ShardInvalid, match="does not decode"):
        _decode("x.json", b"{not json")
    _decode("x.png", _png())


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()
