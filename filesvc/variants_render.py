"""Rendering one image variant with Pillow: blocking, run it in a worker thread.

What a variant is:

- the original's first frame (animated GIF, WebP and PNG give their first
  frame: a thumbnail is a still);
- turned upright by its EXIF orientation, then fitted into the box (``cover``
  crops to fill it exactly, ``contain`` pads to it, ``inside`` fits within it);
  never enlarged: a small original keeps its pixels;
- converted to sRGB when it carries an ICC profile (wide-gamut phone photos
  keep their colours in browsers), and written without any profile or metadata:
  no EXIF, GPS, XMP, comments, ICC or timestamps.

Memory is bounded by the process's :class:`~filesvc.decoding.DecodeBudget`:
the header is read first, a JPEG is asked to decode at 1/2, 1/4 or 1/8 scale
(``draft``: libjpeg's DCT scaling, so a 12-megapixel photo's thumbnail never
exists at full size), and the bytes of the bitmaps about to be allocated are
reserved before the pixels are decoded.

The source is read forward from a ``pull`` function (storage chunks); only
a window of recent bytes is kept for the decoders' short seeks back.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError, features

from filesvc.decoding import DecodeBudget
from filesvc.errors import InvalidContent
from filesvc.forwardstream import ForwardStream
from filesvc.sniffing import PILLOW_FORMATS
from filesvc.variants import VariantSpec

# A decompression bomb is an error here too, not a warning (as in filesvc.imaging).
warnings.simplefilter("error", Image.DecompressionBombWarning)

#: EXIF orientation → the transposition that makes the image upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
#: Modes Pillow resizes well as they are; others are converted first.
_RESIZABLE = frozenset({"L", "RGB", "RGBA", "CMYK"})


def encodable_formats() -> frozenset[str]:
    """The output formats this Pillow build can write (called once, at start-up).

    Also imports every Pillow plugin now, not in the first render's request.
    """
    Image.init()
    found = {"jpeg", "png"}
    if features.check("webp"):
        found.add("webp")
    if features.check("avif"):
        found.add("avif")
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Rendered:
    data: bytes
    width: int
    height: int


class ForwardSource(ForwardStream):
    """A readable, seekable view of chunks that arrive in order from ``pull``.

    ``pull`` returns the next chunk, ``b""`` at the end. The first
    :attr:`head_size` bytes are kept (decoders re-read headers), and so is
    everything from :attr:`window_bytes` behind the read position onwards
    (all of it with ``keep_all``); a seek further back is an error.
    """

    window_bytes = 1024 * 1024

    def __init__(self, pull: Callable[[], bytes], *, keep_all: bool = False) -> None:
        super().__init__(
            iter(pull, b""),
            head_size=256 * 1024,
            keep_behind=None if keep_all else self.window_bytes,
        )


def _scaled(size: tuple[int, int], spec: VariantSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to resize to, final canvas size) for an upright ``size``; never enlarged."""
    width, height = size
    box_w = spec.width or MAX_UNBOUNDED
    box_h = spec.height or MAX_UNBOUNDED
    if spec.fit == "cover":
        scale = min(1.0, max(box_w / width, box_h / height))
    else:
        scale = min(1.0, box_w / width, box_h / height)
    resized = (max(1, round(width * scale)), max(1, round(height * scale)))
    if spec.fit == "cover":
        # Smaller than the box: the box's shape at the image's own scale.
        shrink = min(1.0, width / box_w, height / box_h)
        return resized, (max(1, round(box_w * shrink)), max(1, round(box_h * shrink)))
    if spec.fit == "contain":
        return resized, (box_w, box_h)
    return resized, resized


#: Stands for an unset side of the box: larger than any image.
MAX_UNBOUNDED = 1 << 30


def _pixel_bytes(mode: str) -> int:
    # Pillow stores RGB as 4 bytes a pixel, like RGBA, CMYK, I and F.
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


#: Types whose decoders read the whole file into memory, or seek anywhere in it.
_READ_WHOLE = frozenset({"image/webp", "image/tiff"})


def _needed_bytes(
    image: Image.Image, content_type: str, resized: tuple[int, int], source_size: int
) -> int:
    """An upper bound of the bitmaps the render holds at once, decoder's own included."""
    width, height = image.size
    decoded = width * height * _pixel_bytes(image.mode) + height * 8
    total = decoded
    if image.mode not in _RESIZABLE:
        total += width * height * 4  # converted to RGB(A) before resizing
    if content_type == "image/webp":
        total += decoded  # libwebp decodes into a buffer of its own, then Pillow copies
    if content_type in _READ_WHOLE:
        total += source_size
    # reduce() before the resampling pass, then resize, crop or pad, transpose, convert.
    total += decoded // 4 + resized[0] * resized[1] * 4 * 4
    return total


@lru_cache(maxsize=1)
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Pixels in sRGB (what browsers assume without a profile); the profile is dropped."""
    target = "RGB" if image.mode == "CMYK" else image.mode
    if icc and image.mode in ("RGB", "RGBA", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _srgb(), outputMode=target)
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a profile that does not parse (or a grey one): take the pixels as they are
    return image if image.mode == target else image.convert(target)


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Alpha composited over ``background`` (JPEG has no alpha)."""
    if image.mode not in ("RGBA", "LA"):
        return image.convert("RGB") if image.mode not in ("RGB", "L") else image
    canvas = Image.new("RGB", image.size, background)
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


def _encode(image: Image.Image, spec: VariantSpec) -> bytes:
    image.info = {}  # encoders copy some of it (comments, ICC, EXIF): none may pass
    out = io.BytesIO()
    if spec.format == "jpeg":
        _flatten(image, (255, 255, 255)).save(out, "JPEG", quality=spec.quality, optimize=True)
    elif spec.format == "png":
        image.save(out, "PNG", compress_level=6)
    elif spec.format == "webp":
        image.save(out, "WEBP", quality=spec.quality, method=4)
    else:
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(out, "AVIF", quality=spec.quality, speed=8)
    return out.getvalue()


def render(
    pull: Callable[[], bytes],
    content_type: str,
    spec: VariantSpec,
    budget: DecodeBudget,
    max_pixels: int,
    source_size: int = 0,
) -> Rendered:
    """Decode the original read from ``pull``, fit it, encode it; blocking.

    ``source_size`` is the original's length: WebP and TIFF are held whole
    (libwebp reads the whole file; TIFF's directory may sit at its end), so it
    counts towards the reservation.

    Raises :class:`InvalidContent` (422) for an image that does not decode or
    is larger than ``max_pixels``, and the budget's 503 when it stays full.
    """
    fmt = PILLOW_FORMATS[content_type]
    try:
        raw = ForwardSource(pull, keep_all=content_type == "image/tiff")
        source = io.BufferedReader(raw, buffer_size=64 * 1024)
        with Image.open(source, formats=[fmt]) as image:
            return _render_open(image, content_type, spec, budget, max_pixels, source_size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidContent("The image exceeds the pixel limit (decompression bomb).") from exc
    except (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError) as exc:
        raise InvalidContent(f"The stored image does not decode: {exc}.") from exc


def _render_open(
    image: ImageFile.ImageFile,
    content_type: str,
    spec: VariantSpec,
    budget: DecodeBudget,
    max_pixels: int,
    source_size: int,
) -> Rendered:
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidContent(
            f"The image is {width}×{height} pixels, more than the limit of {max_pixels}."
        )
    # JPEG's EXIF comes before the pixels: known now. PNG may put it after them:
    # read again once loaded.
    orientation = _orientation(image)
    swapped = orientation in (5, 6, 7, 8)
    upright = (height, width) if swapped else (width, height)
    resized, _ = _scaled(upright, spec)
    stored_target = (resized[1], resized[0]) if swapped else resized
    if image.format == "JPEG":
        image.draft(None, stored_target)  # DCT scaling: decode at 1/2, 1/4 or 1/8
    icc = image.info.get("icc_profile")
    with budget.reserve(_needed_bytes(image, content_type, resized, source_size)):
        image.load()  # the first frame only
        orientation = _orientation(image) if orientation == 1 else orientation
        frame: Image.Image = image
        if frame.mode not in _RESIZABLE:
            frame = frame.convert("RGBA" if frame.has_transparency_data else "RGB")
        swapped = orientation in (5, 6, 7, 8)
        upright = (frame.height, frame.width) if swapped else frame.size
        resized, canvas = _scaled(upright, spec)
        stored_target = (resized[1], resized[0]) if swapped else resized
        if frame.size != stored_target:
            frame = frame.resize(stored_target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        transpose = _TRANSPOSE.get(orientation)
        if transpose is not None:
            frame = frame.transpose(transpose)
        frame = _to_srgb(frame, icc if isinstance(icc, bytes) else None)
        if spec.fit == "cover" and frame.size != canvas:
            frame = ImageOps.fit(frame, canvas, Image.Resampling.LANCZOS)
        elif spec.fit == "contain" and frame.size != canvas:
            frame = _pad(frame, canvas, opaque=spec.format == "jpeg")
        data = _encode(frame, spec)
        return Rendered(data, frame.width, frame.height)


def _pad(image: Image.Image, canvas: tuple[int, int], *, opaque: bool) -> Image.Image:
    """``image`` centred on ``canvas``: transparent margins, white where alpha cannot be."""
    if opaque:
        image = _flatten(image, (255, 255, 255))
        padded = Image.new("RGB", canvas, (255, 255, 255))
        offset = ((canvas[0] - image.width) // 2, (canvas[1] - image.height) // 2)
        padded.paste(image.convert("RGB"), offset)
        return padded
    rgba = image.convert("RGBA")
    padded = Image.new("RGBA", canvas, (0, 0, 0, 0))
    padded.paste(rgba, ((canvas[0] - rgba.width) // 2, (canvas[1] - rgba.height) // 2))
    return padded


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, from the EXIF block the decoder has read so far.

    Not ``getexif()``: for PNG it decodes the whole image to look for an
    ``eXIf`` chunk, outside the budget.
    """
    raw = image.info.get("exif")
    if not isinstance(raw, bytes) or not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block: show the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
