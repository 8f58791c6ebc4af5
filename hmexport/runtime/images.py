"""Image input for vision-language bundles: safe decoding and CLIP/SigLIP preprocessing, numpy + Pillow.

    spec = ImageSpec.from_json(manifest_image_section)
    pixels = preprocess([load_image("cat.jpg")], spec)  # (B, 3, S, S) float32

``preprocess`` reproduces transformers' PIL-backend image processors (``CLIPImageProcessorPil``,
``SiglipImageProcessorPil``) step for step: the same RGB conversion, Pillow's resize on uint8, the
same crop offsets, rescale in float64 then normalize in float32, so the tensors are bit-identical.
transformers 5.x makes the torchvision backend the default ``CLIPImageProcessor`` when torchvision is
installed; its resize is torch's antialiased kernel, not Pillow's, and differs by up to a few levels.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..bundle import schema
from ..errors import CheckpointError, InputError, gather

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_PIL_RESAMPLE_CODES = {3: "bicubic", 2: "bilinear"}  # preprocessor_config.json stores Pillow's enum values
# Pillow names a JPEG carrying a multi-picture extension (most phone photos) "MPO"; it decodes as JPEG.
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# What Pillow's decoders raise on corrupt or truncated data; zlib and struct errors escape some plugins.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True)
class ImageSpec:
    """What preprocessing needs, as the bundle manifest stores it. The output is always (3, size, size).

    Either ``resize_shortest_edge`` (CLIP: keep the aspect ratio, then center-crop ``crop_size``, which
    must equal ``size``) or ``do_resize_to_size`` (SigLIP: stretch straight to size x size).
    ``pad_to_square`` is LongLLaVA's ``expand2square``: pad to a square with the mean colour first.
    """

    size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resize_shortest_edge: int | None = None
    crop_size: int | None = None
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    pad_to_square: bool = False
    do_resize_to_size: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.size < 1:
            problems.append(f"size: expected a positive int, got {self.size}")
        if self.resample not in _RESAMPLE:
            problems.append(f"resample: expected one of {', '.join(_RESAMPLE)}, got {self.resample!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            problems.append(f"image_mean/image_std: expected 3 floats each, got {len(self.image_mean)} and {len(self.image_std)}")
        if any(s <= 0 for s in self.image_std):
            problems.append(f"image_std: expected positive values, got {list(self.image_std)}")
        if self.do_resize_to_size == (self.resize_shortest_edge is not None):
            problems.append("expected exactly one of resize_shortest_edge (set) or do_resize_to_size (true), "
                            f"got resize_shortest_edge={self.resize_shortest_edge}, do_resize_to_size={self.do_resize_to_size}")
        if self.resize_shortest_edge is not None and self.crop_size != self.size:
            problems.append(f"crop_size: expected size ({self.size}) after a shortest-edge resize, "
                            f"the crop is what makes the output square; got {self.crop_size}")
        if self.do_resize_to_size and self.crop_size not in (None, self.size):
            problems.append(f"crop_size: expected null or size ({self.size}) after resizing to size, got {self.crop_size}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def fill_colour(self) -> tuple[int, int, int]:
        """LongLLaVA's expand2square background: ``tuple(int(x * 255) for x in image_mean)``."""
        return tuple(int(x * 255) for x in self.image_mean)

    def to_json(self) -> dict[str, Any]:
        return schema.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json: image") -> "ImageSpec":
        return schema.from_json(cls, data, where)

    @classmethod
    def from_hf_processor_config(cls, config: dict[str, Any], *, pad_to_square: bool = False,
                                 where: str = "preprocessor_config.json") -> "ImageSpec":
        """Map a CLIPImageProcessor or SiglipImageProcessor ``preprocessor_config.json`` (any backend)."""
        return _spec_from_hf(config, pad_to_square, where)


@dataclass(frozen=True)
class ImageLimits:
    """What ``load_image`` accepts; every limit is checked before any pixel data is decoded."""

    max_bytes: int = 64 * 2**20
    max_pixels: int = 64_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS  # Pillow format names, matched against the detected content


def load_image(source: str | os.PathLike | bytes, limits: ImageLimits = ImageLimits(), *, name: str | None = None) -> Image.Image:
    """Decode one image file (or its bytes) into an RGB ``PIL.Image``, or raise ``InputError``.

    The format is taken from the content, never the extension, and must be in ``limits.formats``
    (animated GIF/WEBP/PNG and multi-page TIFF give their first frame). Size and pixel count are
    checked from the header before decoding; truncated files fail rather than being padded.
    Transparency is composited onto white, as transformers' processors do. EXIF orientation is not
    applied: transformers' processors ignore it too (only ``transformers.image_utils.load_image`` does).
    """
    name = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    data = _read_bounded(source, limits.max_bytes, name)
    image = _open_header(data, limits, name)
    if image.width * image.height > limits.max_pixels:
        raise InputError(f"{name}: expected at most {limits.max_pixels:,} pixels, found {image.width}x{image.height} "
                         f"({image.width * image.height:,}); downscale the image first")
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: expected a complete {image.format} image, found corrupt or truncated data ({exc})") from None
    return to_rgb(image, name)


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """transformers' ``convert_to_rgb``: anything with alpha or a transparent colour goes onto white.

    Everything else is Pillow's ``convert("RGB")``, which clips 16-bit grey (``I;16``) at 255
    rather than scaling it; kept so pixels match the processors the models were trained with.
    """
    try:
        # An RGB PNG with a tRNS colour counts as transparent too: that colour becomes white.
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as exc:  # Pillow has no conversion for a few rare modes (La, ...)
        raise InputError(f"{name}: expected a pixel mode Pillow converts to RGB, found {image.mode} ({exc})") from None


def preprocess(images: Sequence[Image.Image], spec: ImageSpec) -> np.ndarray:
    """PIL images (any mode, any size) -> pixel values (B, 3, size, size) float32."""
    crops = [_resized_crop(to_rgb(image, f"images[{i}]"), spec) for i, image in enumerate(images)]
    if not crops:
        return np.zeros((0, 3, spec.size, spec.size), np.float32)
    batch = np.stack(crops)  # (B, S, S, 3) uint8
    # transformers rescales in float64 and rounds to float32 before normalizing in float32.
    x = (batch.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    x = (x - np.asarray(spec.image_mean, np.float32)) / np.asarray(spec.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (B, 3, S, S)


def _resized_crop(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8, before any float arithmetic."""
    if spec.pad_to_square:
        image = _expand_to_square(image, spec.fill_colour)
    width, height = _resize_target(image.width, image.height, spec)
    resized = np.asarray(image.resize((width, height), resample=_RESAMPLE[spec.resample]))  # (H, W, 3)
    return _center_crop(resized, spec.crop_size) if spec.crop_size else resized


def _expand_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    side = max(image.size)
    if image.width == image.height:
        return image
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def _resize_target(width: int, height: int, spec: ImageSpec) -> tuple[int, int]:
    """(width, height) after resizing; the long side is truncated with int(), as transformers does."""
    if spec.do_resize_to_size:
        return spec.size, spec.size
    edge = spec.resize_shortest_edge
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


def _center_crop(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) -> (side, side, 3). Offsets floor; a side shorter than ``side`` is zero-padded with
    the extra pixel after, as transformers' numpy ``center_crop`` does."""
    for axis in (0, 1):
        n = image.shape[axis]
        if n >= side:
            start = (n - side) // 2
            image = image[start:start + side] if axis == 0 else image[:, start:start + side]
        else:
            before = (side - n + 1) // 2
            pad = [(0, 0)] * 3
            pad[axis] = (before, side - n - before)
            image = np.pad(image, pad)
    return image


def _read_bounded(source: str | os.PathLike | bytes, max_bytes: int, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as f:
                # Read one byte past the limit instead of trusting stat: the file may be a pipe or growing.
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            raise InputError(f"{name}: expected an image file, found no such file") from None
        except IsADirectoryError:
            raise InputError(f"{name}: expected an image file, found a directory") from None
        except OSError as exc:
            raise InputError(f"{name}: could not read the image file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputError(f"{name}: expected an image of at most {max_bytes:,} bytes, found a larger file")
    if not data:
        raise InputError(f"{name}: expected an image, found an empty file")
    return data


def _open_header(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    """Parse the header only (``Image.open`` is lazy), trying just the allowed format plugins."""
    Image.init()  # Image.OPEN is filled lazily; MPO has no opener of its own (the JPEG one returns it)
    plugins = [f for f in limits.formats if f in Image.OPEN]
    try:
        image = Image.open(io.BytesIO(data), formats=plugins)
    except UnidentifiedImageError:
        raise InputError(f"{name}: expected an image in {_allowed(limits)}, found {_sniff(data, limits)}") from None
    except Image.DecompressionBombError as exc:  # Pillow's own bound (2 * Image.MAX_IMAGE_PIXELS), checked in open
        raise InputError(f"{name}: expected at most {limits.max_pixels:,} pixels, found a decompression bomb ({exc})") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: expected an image in {_allowed(limits)}, found {_sniff(data, limits)} ({exc})") from None
    if image.format not in limits.formats:  # a plugin may name its result differently (JPEG -> MPO)
        raise InputError(f"{name}: expected an image in {_allowed(limits)}, found {image.format} data")
    if image.format == "PNG":
        _verify_png(data, name)
    return image


def _verify_png(data: bytes, name: str) -> None:
    """Check every chunk's CRC up to IEND without inflating anything: a PNG cut inside its last
    IDAT can still decode to a whole picture, and a cut file is a failed upload, not an image."""
    try:
        Image.open(io.BytesIO(data), formats=["PNG"]).verify()
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: expected a complete PNG file, found a truncated or corrupt one ({exc})") from None


def _allowed(limits: ImageLimits) -> str:
    return "one of " + ", ".join(f for f in limits.formats if f != "MPO")


def _sniff(data: bytes, limits: ImageLimits) -> str:
    """Name a rejected file for the message from the plugins' magic-number tests alone, parsing nothing."""
    prefix = data[:16].ljust(16, b"\0")
    for format in Image.ID:
        accept = Image.OPEN[format][1]
        if accept is not None and accept(prefix):
            return f"{format} data with a truncated or corrupt header" if format in limits.formats else f"what looks like {format} data"
    return f"data starting {data[:12]!r}"


def _spec_from_hf(config: dict[str, Any], pad_to_square: bool, where: str) -> ImageSpec:
    kind = config.get("image_processor_type") or config.get("feature_extractor_type") or ""
    defaults = _HF_DEFAULTS.get(kind.removesuffix("Fast").removesuffix("Pil").replace("FeatureExtractor", "ImageProcessor"))
    if defaults is None:
        raise CheckpointError(f"{where}: image_processor_type: expected one of {', '.join(_HF_DEFAULTS)}, got {kind!r}")
    c = {**defaults, **{k: v for k, v in config.items() if v is not None}}
    errors: list[str] = []
    for key, supported in (("do_resize", True), ("do_pad", False)):
        if bool(c.get(key, supported)) != supported:
            errors.append(f"{key}: expected {supported} (the only value hmexport supports), got {c[key]}")
    if c["resample"] not in _PIL_RESAMPLE_CODES:
        errors.append(f"resample: expected 3 (bicubic) or 2 (bilinear), got {c['resample']}")
    geometry = _hf_geometry(c, errors)
    gather(errors, CheckpointError, f"{where}: ")
    normalize = c.get("do_normalize", True)
    try:
        return ImageSpec(
            **geometry,
            resample=_PIL_RESAMPLE_CODES[c["resample"]],
            rescale_factor=float(c["rescale_factor"]) if c.get("do_rescale", True) else 1.0,
            # (x - 0) / 1 is exact in float32, so "no normalize" is the identity here too.
            image_mean=tuple(float(v) for v in c["image_mean"]) if normalize else (0.0, 0.0, 0.0),
            image_std=tuple(float(v) for v in c["image_std"]) if normalize else (1.0, 1.0, 1.0),
            pad_to_square=pad_to_square,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _hf_geometry(c: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """size / crop_size / do_center_crop -> ImageSpec's size fields. A legacy int size means
    shortest_edge (both classes set default_to_square=False); a legacy int crop_size is a square."""
    size = c["size"] if isinstance(c["size"], dict) else {"shortest_edge": c["size"]}
    crop = c.get("crop_size")
    crop = crop if isinstance(crop, dict) else {"height": crop, "width": crop}
    crop_side = crop["height"] if c.get("do_center_crop") else None
    if crop_side is not None and crop["height"] != crop["width"]:
        errors.append(f"crop_size: expected a square, got {crop}")
    if set(size) == {"shortest_edge"}:
        if crop_side is None:
            errors.append("do_center_crop: expected true with size.shortest_edge (the output must be square), got false")
        return dict(size=crop_side or 1, resize_shortest_edge=size["shortest_edge"], crop_size=crop_side)
    if set(size) == {"height", "width"} and size["height"] == size["width"]:
        return dict(size=size["height"], do_resize_to_size=True, crop_size=crop_side)
    errors.append(f"size: expected {{'shortest_edge': n}} or a square {{'height': n, 'width': n}}, got {size}")
    return {}


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The class defaults transformers fills in for keys a preprocessor_config.json leaves out.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                               resample=3, rescale_factor=1 / 255, image_mean=_CLIP_MEAN, image_std=_CLIP_STD),
    "SiglipImageProcessor": dict(size={"height": 224, "width": 224}, do_center_crop=False,
                                 resample=3, rescale_factor=1 / 255, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
}
