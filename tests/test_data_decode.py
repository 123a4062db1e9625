"""Robust decoding: every image kind becomes RGB uint8, bad files become counted skips."""

import io
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from gmsrm_jax.data import decode


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
  return (struct.pack(">I", len(payload)) + tag + payload
          + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF))


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
  """A PNG written by hand, for what PIL cannot write (48-bit RGB, lying headers)."""
  header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
          + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _expect(data: bytes, shape, **kwargs) -> np.ndarray:
  image = decode.decode_image(data, **kwargs)
  assert image.dtype == np.uint8 and image.shape == shape
  return image


def test_rgb_png_round_trips_exactly():
  pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  np.testing.assert_array_equal(_expect(decode.encode_png(pixels), (7, 9, 3)), pixels)


def test_grayscale_and_bilevel_become_grey_rgb():
  grey = Image.fromarray(np.array([[0, 100], [200, 255]], np.uint8), mode="L")
  out = _expect(_encode(grey, "PNG"), (2, 2, 3))
  np.testing.assert_array_equal(out[..., 0], [[0, 100], [200, 255]])
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  bilevel = Image.new("1", (2, 1), 0)
  bilevel.putpixel((0, 0), 1)
  np.testing.assert_array_equal(_expect(_encode(bilevel, "PNG"), (1, 2, 3))[0, :, 0], [255, 0])


def test_alpha_is_composited_on_white():
  rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8)
  out = _expect(_encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), (1, 3, 3)).astype(int)
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # Transparent red -> white.
  np.testing.assert_array_equal(out[0, 1], [0, 0, 255])  # Opaque blue stays blue.
  np.testing.assert_allclose(out[0, 2], [127, 127, 127], atol=1)  # Half-transparent black.
  grey_alpha = Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), mode="LA")
  np.testing.assert_array_equal(_expect(_encode(grey_alpha, "PNG"), (1, 2, 3))[0, :, 0],
                                [255, 10])


def test_palette_with_and_without_transparency():
  palette = Image.new("P", (2, 1))
  palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
  palette.putpixel((0, 0), 0)
  palette.putpixel((1, 0), 1)
  np.testing.assert_array_equal(_expect(_encode(palette, "PNG"), (1, 2, 3))[0],
                                [[255, 0, 0], [0, 255, 0]])
  transparent = _expect(_encode(palette, "PNG", transparency=0), (1, 2, 3))
  np.testing.assert_array_equal(transparent[0], [[255, 255, 255], [0, 255, 0]])


def test_cmyk_is_converted():
  cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8),
                         mode="CMYK")
  out = _expect(_encode(cmyk, "TIFF"), (1, 3, 3))
  np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])
  _expect(_encode(cmyk.resize((16, 8)), "JPEG"), (8, 16, 3))  # CMYK JPEGs decode too.


def test_16_bit_grayscale_png_is_scaled_not_clipped():
  values = np.array([[0, 257 * 100, 65535]], np.uint16)
  data = _encode(Image.fromarray(values), "PNG")
  assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
  np.testing.assert_array_equal(_expect(data, (1, 3, 3))[0, :, 0], [0, 100, 255])


def test_16_bit_rgb_png_keeps_its_colours():
  values = np.array([[[65535, 0, 257 * 50], [0, 257 * 200, 65535]]], np.uint16)
  data = _raw_png(2, 1, 16, 2, b"\x00" + values.astype(">u2").tobytes())
  np.testing.assert_allclose(_expect(data, (1, 2, 3)).astype(int),
                             [[[255, 0, 50], [0, 200, 255]]], atol=1)


def test_exif_orientation_is_applied():
  image = Image.new("RGB", (40, 20), (200, 10, 10))
  exif = Image.Exif()
  exif[0x0112] = 6  # "Rotate 90 CW to display".
  _expect(_encode(image, "JPEG", exif=exif), (40, 20, 3))


@pytest.mark.parametrize("data", [
    b"",
    b"definitely not an image",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # A PNG signature and garbage.
], ids=["empty", "text", "png-garbage"])
def test_corrupt_bytes_raise_corrupt(data):
  with pytest.raises(decode.DecodeError) as error:
    decode.decode_image(data)
  assert error.value.reason == decode.CORRUPT


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_corrupt(fmt):
  pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  data = _encode(Image.fromarray(pixels), fmt)
  with pytest.raises(decode.DecodeError) as error:
    decode.decode_image(data[: len(data) // 2])
  assert error.value.reason == decode.CORRUPT


def test_too_small_image_is_rejected():
  data = decode.encode_png(np.zeros((31, 50, 3), np.uint8))
  with pytest.raises(decode.DecodeError) as error:
    decode.decode_image(data, min_side=32)
  assert error.value.reason == decode.TOO_SMALL
  _expect(data, (31, 50, 3), min_side=31)


def test_decompression_bomb_is_rejected_without_decoding():
  # The header claims 20000 x 20000 (400 MP, over PIL's 179 MP hard limit); the pixel data is
  # a few bytes, so this would exhaust memory only if we tried to decode it.
  data = _raw_png(20000, 20000, 8, 2, b"\x00" * 10)
  with pytest.raises(decode.DecodeError) as error:
    decode.decode_image(data)
  assert error.value.reason == decode.TOO_LARGE


def test_large_images_are_downscaled_to_the_shorter_side():
  photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (600, 800, 3), np.uint8))
  _expect(_encode(photo, "JPEG", quality=90), (36, 48, 3), max_shorter_side=36)  # Via draft.
  _expect(_encode(photo.resize((90, 60)), "PNG"), (36, 54, 3), max_shorter_side=36)
  # Smaller images are kept as they are (upscaling, if any, happens at load time).
  _expect(_encode(photo.resize((45, 30)), "PNG"), (30, 45, 3), max_shorter_side=36)


def test_skip_counter_counts_by_reason():
  counter = decode.SkipCounter("test")
  counter.record(decode.CORRUPT, "a")
  counter.record(decode.CORRUPT, "b")
  counter.record(decode.TOO_SMALL, "c")
  assert counter.counts == {decode.CORRUPT: 2, decode.TOO_SMALL: 1, decode.TOO_LARGE: 0}
  assert counter.total == 3
