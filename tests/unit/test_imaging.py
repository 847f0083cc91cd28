import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from contracts.manifest import load_manifest
from contracts.wire import ErrorCode
from edge_node.errors import BadImage, TooLarge, UnsupportedFormat
from edge_node.imaging import FrameLimits, Preprocessor, decode_rgb, sniff_format
from models import BUNDLED_MANIFEST
from tests.conftest import encode

LIMITS = FrameLimits(max_bytes=4 << 20, max_pixels=16_000_000, max_side=8192)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _gradient(h: int = 64, w: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "JPEG"), ("PNG", "PNG")])
def test_jpeg_and_png_are_recognised(fmt: str, name: str) -> None:
    assert sniff_format(encode(_gradient(), fmt)) == name


@pytest.mark.parametrize("payload", [b"GIF89a....", b"hello robot", b"", b"BM\x00\x00"])
def test_other_payloads_are_unsupported(payload: bytes) -> None:
    with pytest.raises(UnsupportedFormat) as err:
        decode_rgb(payload, LIMITS, (32, 32))
    assert err.value.code is ErrorCode.UNSUPPORTED_FORMAT
    assert "JPEG or PNG" in err.value.detail


def test_oversized_payload_is_refused_before_decoding() -> None:
    small = FrameLimits(max_bytes=1000, max_pixels=LIMITS.max_pixels, max_side=LIMITS.max_side)
    noise = encode(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8), "PNG")
    with pytest.raises(TooLarge, match="limit is 1000") as err:
        decode_rgb(noise, small, (32, 32))
    assert err.value.code is ErrorCode.TOO_LARGE


def test_huge_png_is_refused_without_allocating_it() -> None:
    bomb = _png_header_only(20000, 20000)
    assert len(bomb) < 200
    tracemalloc.start()
    with pytest.raises(TooLarge) as err:
        decode_rgb(bomb, LIMITS, (128, 128))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert err.value.code is ErrorCode.TOO_LARGE
    assert peak < 5 << 20, f"decoder allocated {peak} bytes for a refused frame"


def test_pixel_limit_below_pillow_bomb_limit() -> None:
    with pytest.raises(TooLarge, match="9000x2000"):
        decode_rgb(_png_header_only(9000, 2000), LIMITS, (128, 128))


def test_truncated_jpeg_is_a_bad_image() -> None:
    data = encode(_gradient(), "JPEG")
    with pytest.raises(BadImage) as err:
        decode_rgb(data[: len(data) // 2], LIMITS, (32, 32))
    assert err.value.code is ErrorCode.BAD_IMAGE


def test_png_with_corrupt_data_is_a_bad_image() -> None:
    data = bytearray(encode(_gradient(), "PNG"))
    data[60:90] = b"\x00" * 30
    with pytest.raises(BadImage):
        decode_rgb(bytes(data), LIMITS, (32, 32))


def test_decoded_frame_has_the_requested_size() -> None:
    for fmt in ("JPEG", "PNG"):
        rgb = decode_rgb(encode(_gradient(300, 400), fmt), LIMITS, (128, 96))
        assert rgb.shape == (96, 128, 3)
        assert rgb.dtype == np.uint8


def test_normalisation_follows_the_manifest() -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    pre = Preprocessor(manifest, LIMITS)
    rgb = np.full((manifest.input.height, manifest.input.width, 3), 200, np.uint8)
    tensor = pre.to_tensor(rgb)
    expected = (200 * manifest.preprocess.scale - manifest.preprocess.mean[0]) / manifest.preprocess.std[0]
    assert tensor.shape == (3, manifest.input.height, manifest.input.width)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, expected, rtol=1e-5)


def test_huge_jpeg_header_is_refused_before_decoding() -> None:
    data = bytearray(encode(_gradient(16, 16), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    with pytest.raises(TooLarge, match="20000x20000"):
        decode_rgb(bytes(data), LIMITS, (128, 128))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_decode_to_rgb(mode: str) -> None:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (300, 200)).save(out, format="JPEG")
    assert decode_rgb(out.getvalue(), LIMITS, (128, 96)).shape == (96, 128, 3)
