"""Inputs an attacker would send to the member service's stores and checks, each answered without a 5xx and
without losing what is already stored: over-long request-log fields on the real PostgreSQL, odd webhook headers,
two identical contributions racing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import threading
import time

import pytest
from PIL import Image

from mlops.members.keys import AuthError
from mlops.members.requestlog import RequestLog
from mlops.members.review import ReviewError, ReviewQueue
from mlops.serving.registry_routes import verify_mlflow_signature
from tests.conftest import pg_database


def test_one_over_long_row_does_not_cost_the_others_theirs_on_postgresql():
    """A task name is whatever the caller put in the URL: 300 characters overflow the column on PostgreSQL, which
    used to fail the whole batch insert and drop the other members' rows with it."""
    with pg_database() as url:
        log = RequestLog(url, flush_seconds=5)  # long enough that all three rows go in one batch
        try:
            log.record(member="acme", route="/v1/models/fracture/predict", status=200, latency_ms=1.0)
            log.record(member="eve", route="/v1/models/x/predict", task="x" * 300, status=404, latency_ms=1.0)
            log.record(member="bob", route="/v1/models/fracture/predict", status=200, latency_ms=1.0,
                       upload_bytes=10**12, not_a_column="ignored")  # fmt: skip
            log.flush()
            rows = {r["member"]: r for r in log.rows()}
            assert set(rows) == {"acme", "eve", "bob"}
            assert rows["eve"]["task"] == "x" * 100  # cut to the column
            assert rows["bob"]["upload_bytes"] is None  # beyond a 32-bit column: not recorded rather than lost
        finally:
            log.close()


def _signed(secret: str, delivery: str, stamp: str, body: bytes) -> str:
    signed = f"{delivery}.{stamp}.{body.decode()}".encode()
    return "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize(
    ("stamp", "signature", "words"),
    [
        ("²", None, "timestamp"),  # a digit to str.isdigit, not to int()
        ("١٢٣", None, "timestamp"),  # Arabic-Indic digits: the same
        (None, "v1,\xe9\xe9\xe9", "does not match"),  # latin-1 characters in the header
    ],
)
def test_odd_webhook_headers_are_refused_as_unsigned(stamp, signature, words):
    now, body = time.time(), b'{"event": "alias.created"}'
    good_stamp = str(int(now))
    headers = {
        "x-mlflow-delivery-id": "d1",
        "x-mlflow-timestamp": stamp or good_stamp,
        "x-mlflow-signature": signature or _signed("s", "d1", good_stamp, body),
    }
    with pytest.raises(AuthError, match=words):
        verify_mlflow_signature("s", headers, body, now=now)
    headers = {**headers, "x-mlflow-timestamp": good_stamp, "x-mlflow-signature": _signed("s", "d1", good_stamp, body)}
    verify_mlflow_signature("s", headers, body, now=now)  # the well-formed delivery passes


def test_identical_contributions_racing_store_one_blob_and_one_row(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (40, 40), 128).save(buf, format="PNG")
    queue = ReviewQueue(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "blobs")
    start, outcomes = threading.Barrier(4), []

    def submit() -> None:
        start.wait()
        try:
            outcomes.append(queue.submit("fracture", "acme", None, buf.getvalue(), "fatigue", {"magnification": "5"}))
        except ReviewError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    accepted = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(outcomes) == 4 and len(accepted) == 1, outcomes
    assert all("already contributed" in str(o) for o in outcomes if isinstance(o, Exception))
    blobs = list((tmp_path / "blobs").rglob("*"))
    assert [p.suffix for p in blobs if p.is_file()] == [".png"]  # no .part file left behind


# --- uploads read within a budget (mlops.inference.arrays and the tasks' decoders) --------------------------------


def _npy(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _lying_npy(shape: tuple[int, ...]) -> bytes:
    """A .npy whose header declares ``shape`` (float32) but which holds 16 bytes of data."""
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def _zip(members: dict[str, bytes], method: int | None = None) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method or zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_npy_headers_are_checked_before_anything_is_allocated():
    import numpy as np

    from mlops.inference import BadInput
    from mlops.inference.arrays import read_npy

    with pytest.raises(BadInput, match="limit is 1000") as err:  # 10^12 values declared: refused, not allocated
        read_npy(_lying_npy((10**6, 10**6)), 1000, "upload")
    assert err.value.status == 413
    with pytest.raises(BadInput, match="lying header") as err:
        read_npy(_lying_npy((10, 10)), 1000, "upload")
    assert err.value.status == 422
    buf = io.BytesIO()
    np.save(buf, np.array(["a", "b"]))
    with pytest.raises(BadInput, match="not a plain number type"):
        read_npy(buf.getvalue(), 1000, "upload")
    with pytest.raises(BadInput, match="not a readable .npy header"):
        read_npy(b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}   \n", 1000, "upload")
    assert read_npy(_npy(np.ones((2, 3), np.float32)), 1000, "upload").shape == (2, 3)


def test_npz_members_are_checked_from_the_zip_directory():
    import zipfile

    import numpy as np

    from mlops.inference import BadInput
    from mlops.inference.arrays import read_npz

    good = _npy(np.ones((2, 3), np.float32))
    assert set(read_npz(_zip({"frames.npy": good}), 1000, "up")) == {"frames"}
    cases = [
        (_zip({"frames.npy": good, "notes.txt": b"hi"}), "not a .npy array"),
        (_zip({"frames.npy": good}, zipfile.ZIP_BZIP2), "compression method 12"),
        (_zip({f"a{i}.npy": good for i in range(9)}), "at most 8"),
        (_zip({"frames.npy": _lying_npy((10**5, 10**5))}), "limit is 1000"),
    ]
    encrypted = bytearray(_zip({"frames.npy": good}))
    encrypted[6] |= 1  # the local header's "encrypted" flag ...
    central = encrypted.rfind(b"PK\x01\x02")
    encrypted[central + 8] |= 1  # ... and the central directory's, which zipfile reads
    cases.append((bytes(encrypted), "encrypted"))
    for data, words in cases:
        with pytest.raises(BadInput, match=words):
            read_npz(data, 1000, "up")


def test_gas_leak_refuses_intensities_that_would_overflow_the_network():
    import numpy as np

    from mlops.inference import BadInput
    from mlops.tasks.gas_leak.inference import decode_stack

    with pytest.raises(BadInput, match="beyond") as err:
        decode_stack(_npy(np.full((16, 32, 32), 1e38, np.float32)), 16, 32, 32, 10**6)
    assert err.value.status == 422
    with pytest.raises(BadInput) as err:
        decode_stack(_lying_npy((512, 32, 32)), 16, 32, 32, 10**6)
    assert err.value.status == 422


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400),  # deeper than Python recurses
        (b'[{"people": [{"pose_keypoints_2d": [' + b"9" * 5000 + b"]}]}]", 400),  # int() refuses 5000 digits
        (b'[{"people": [{"pose_keypoints_2d": [' + b", ".join([b"1" + b"0" * 400] * 75) + b"]}]}]", 422),
        (b'[{"people": [{"pose_keypoints_2d": [' + b", ".join([b"3e9"] * 75) + b"]}]}]", 422),
        (b'[{"people": [{"pose_keypoints_2d": [' + b", ".join([b"1e308"] * 75) + b"]}]}]", 422),
    ],
)
def test_skeleton_json_that_used_to_be_a_500_is_a_4xx(payload, status):
    from mlops.inference import BadInput
    from mlops.tasks.skeleton.inference import _check_coordinates, _frames_from_json

    with pytest.raises(BadInput) as err:
        _check_coordinates(_frames_from_json(payload))
    assert err.value.status == status, err.value.message


def test_skeleton_maps_npy_must_hold_frames():
    import numpy as np

    from mlops.inference import BadInput
    from mlops.tasks.skeleton.inference import _maps_from_npy

    for data in (_npy(np.zeros((0, 28, 28), np.uint8)), _lying_npy((40_000, 28, 28))):
        with pytest.raises(BadInput):
            _maps_from_npy(data)


@pytest.mark.parametrize("value", ['=HYPERLINK("http://x")', "+1+1", "@SUM(A1)", "-2+3", "500\x07", "x" * 201])
def test_contribution_fields_cannot_carry_spreadsheet_formulas(tmp_path, value):
    """Free-text fields of a contribution land in labels.csv, which stewards open in spreadsheets."""
    buf = io.BytesIO()
    Image.new("L", (40, 40), 128).save(buf, format="PNG")
    queue = ReviewQueue(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "blobs")
    with pytest.raises(ReviewError, match="field"):
        queue.submit("fracture", "acme", None, buf.getvalue(), "fatigue", {"magnification": value})
    assert queue.list("fracture") == []
    assert queue.submit("fracture", "acme", None, buf.getvalue(), "fatigue", {"magnification": "-500"}).id


def test_a_signed_webhook_delivery_is_accepted_once():
    from mlops.serving.registry_routes import WEBHOOK_MAX_AGE_SECONDS, Deliveries

    seen, now = Deliveries(), 1_000_000.0
    assert seen.first_time("d1", now) and seen.first_time("d2", now)
    assert not seen.first_time("d1", now + 10)  # replayed inside the window
    assert seen.first_time("d1", now + WEBHOOK_MAX_AGE_SECONDS + 1)  # (outside it the timestamp check refuses)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"task": "fracture", "inference_module": "antigravity"}, "not \\('fracture'"),
        ({"task": "gas_leak", "inference_module": "mlops.tasks.gas_leak.inference"}, "not \\('fracture'"),
        ("[1, 2]", "its spec names"),
        (None, "not valid JSON"),
    ],
)
def test_a_spec_naming_another_module_or_task_is_refused_before_any_import(tmp_path, spec, words):
    """The service imports only the task plugin's own inference module, whatever a version's spec.json names."""
    import json
    import sys

    from mlops.serving.release_gate import UnsafeModel, load_folder

    (tmp_path / "weights.pt").write_bytes(b"never read")
    text = "{not json" if spec is None else spec if isinstance(spec, str) else json.dumps(spec)
    (tmp_path / "spec.json").write_text(text)
    sys.modules.pop("antigravity", None)
    with pytest.raises(UnsafeModel, match=words):
        load_folder("fracture", tmp_path, "fracture v9")
    assert "antigravity" not in sys.modules
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(UnsafeModel, match="holds no weights.pt"):
        load_folder("fracture", tmp_path, "fracture v9")


def test_a_tiff_with_more_pages_than_the_limit_is_refused_before_its_pixels_are_read():
    import numpy as np
    import tifffile

    from mlops.inference.base import BadInput
    from mlops.inference.tiff import MAX_TIFF_PAGES, check_tiff

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:  # separate pages (not one contiguous series): each one an IFD
        for _ in range(MAX_TIFF_PAGES + 1):
            tif.write(np.zeros((16, 16), np.uint8), photometric="minisblack", contiguous=False)
    with pytest.raises(BadInput) as refused:
        check_tiff(buffer.getvalue(), 10**9, "upload")
    assert refused.value.status == 413 and f"the limit is {MAX_TIFF_PAGES}" in refused.value.message


@pytest.mark.parametrize("slices", [3, 4])
def test_a_three_or_four_slice_stack_written_with_tifffile_defaults_is_read_as_slices(slices):
    """tifffile writes (3|4, H, W) uint8 as one planar RGB(A) page; it is a stack, not a colour picture."""
    import numpy as np
    import tifffile

    from mlops.tasks.ttubule.inference import decode_upload

    stack = np.arange(slices * 32 * 32, dtype=np.uint32).astype(np.uint8).reshape(slices, 32, 32)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack)
    assert np.array_equal(decode_upload(buffer.getvalue(), "image/tiff", 10**6), stack)


def test_jpeg_scans_are_counted_by_segments_not_by_bytes():
    """Baseline JPEGs have one scan, Pillow's progressive ones ten; a 0xFFDA pair inside scan data is stuffed
    (0xFF00) so cannot be taken for a marker, and repeated scans are each counted."""
    from mlops.inference.images import MAX_JPEG_SCANS, jpeg_scan_count
    from mlops.tasks.upload_cases import many_scan_jpeg

    image = Image.effect_noise((96, 64), 80).convert("L")
    for progressive, scans in ((False, 1), (True, 6)):  # 6: gray progressive (Pillow's libjpeg script)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", progressive=progressive)
        assert jpeg_scan_count(buffer.getvalue()) == scans
    assert jpeg_scan_count(many_scan_jpeg(MAX_JPEG_SCANS + 1)) == MAX_JPEG_SCANS + 1


def test_a_member_may_keep_only_so_many_contributions_waiting_for_review(tmp_path):
    """The per-member storage quota: one more pending contribution than allowed is refused (429 in the service)
    without storing anything; another member is not affected, and a steward's review frees a place."""
    from mlops.members.review import QuotaExceeded

    queue = ReviewQueue(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "blobs", pending_per_member=2)

    def image(shade: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (32, 32), shade).save(buf, format="PNG")
        return buf.getvalue()

    first = queue.submit("fracture", "acme", None, image(1), "fatigue", {"magnification": "5"})
    queue.submit("fracture", "acme", None, image(2), "fatigue", {"magnification": "5"})
    with pytest.raises(QuotaExceeded, match="2 contributions waiting"):
        queue.submit("fracture", "acme", None, image(3), "fatigue", {"magnification": "5"})
    assert not list((tmp_path / "blobs").rglob(f"{hashlib.sha256(image(3)).hexdigest()}*"))  # nothing kept
    assert queue.submit("fracture", "bob", None, image(3), "fatigue", {"magnification": "5"}).id
    queue.reject(first.id, "steward", "not an SEM image")
    assert queue.submit("fracture", "acme", None, image(4), "fatigue", {"magnification": "5"}).id
