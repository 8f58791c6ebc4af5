"""Image input: pixels equal to transformers' CLIP/SigLIP processors, LongLLaVA's expand2square, safe decoding."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFile
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from helpers import assert_close
from hmexport.errors import BundleError, CheckpointError, InputError
from hmexport.runtime.images import ImageLimits, ImageSpec, load_image, preprocess

# The bar for pixel tensors. Against the PIL-backend processors the measured diff is 0.0:
# the same Pillow resize on uint8 and the same float64-then-float32 arithmetic.
PIXELS = 1e-5
# transformers' torchvision backend resizes with torch's uint8 antialiased kernel: on the photos
# here it differs from Pillow by at most 2 uint8 levels (measured with torch.nn.functional.interpolate
# standing in for torchvision, which this environment lacks); 3 levels, in normalized units, is the bound.
FAST_LEVELS = 3

CLIP = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
SIGLIP = dict(size={"height": 384, "width": 384})
CLIP_SPEC = ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", **CLIP})
SIGLIP_SPEC = ImageSpec.from_hf_processor_config({"image_processor_type": "SiglipImageProcessor", **SIGLIP})
PROCESSORS = {"clip": (CLIPImageProcessorPil(**CLIP), CLIP_SPEC), "siglip": (SiglipImageProcessorPil(**SIGLIP), SIGLIP_SPEC)}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # 512x512, 600x400, 451x300, 640x427


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)())


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _want(kind: str, images: list[Image.Image]) -> np.ndarray:
    return PROCESSORS[kind][0](images, return_tensors="np")["pixel_values"]


def _generated(tmp_path) -> dict[str, object]:
    """Files in every mode load_image has to turn into RGB, written with Pillow."""
    chelsea = _photo("chelsea")
    gray = Image.fromarray(_noise((200, 300), seed=2))
    # tRNS chunks: one palette index, one RGB colour, one grey level become transparent.
    options = {"palette_transparent.png": dict(transparency=0), "rgb_trns.png": dict(transparency=chelsea.getpixel((0, 0))),
               "gray_trns.png": dict(transparency=gray.getpixel((0, 0)))}
    files = {
        "odd_333x517.png": Image.fromarray(_noise((517, 333, 3))),
        "tiny_7x9.png": Image.fromarray(_noise((9, 7, 3), seed=1)),
        "gray.png": gray,
        "gray_trns.png": gray,
        "rgb_trns.png": chelsea,
        "rgba.png": Image.fromarray(_noise((120, 90, 4), seed=3)),
        "la.png": Image.fromarray(_noise((64, 48, 2), seed=4), mode="LA"),
        "palette_transparent.png": chelsea.convert("P"),
        "palette.gif": chelsea.convert("P"),
        "cmyk.jpg": _photo("coffee").convert("CMYK"),
        "gray16.png": Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 13).astype(np.uint16)),
        "photo.webp": _photo("rocket"),
        "photo.bmp": _photo("coffee"),
        "photo.tiff": _photo("astronaut"),
    }
    paths = {}
    for name, image in files.items():
        path = tmp_path / name
        image.save(path, **options.get(name, {}))
        paths[name] = path
    return paths


@pytest.mark.parametrize("kind", PROCESSORS)
def test_photos_match_transformers(kind):
    images = [_photo(name) for name in PHOTOS]
    assert_close(f"{kind} photos", preprocess(images, PROCESSORS[kind][1]), _want(kind, images), PIXELS)


@pytest.mark.parametrize("kind", PROCESSORS)
def test_decoded_files_match_transformers_on_the_raw_file(kind, tmp_path):
    for name, path in _generated(tmp_path).items():
        got = preprocess([load_image(path)], PROCESSORS[kind][1])
        with Image.open(path) as raw:  # transformers converts the raw mode itself
            assert_close(f"{kind} {name}", got, _want(kind, [raw]), PIXELS)


def test_generated_files_cover_the_modes(tmp_path):
    modes = {name: Image.open(path).mode for name, path in _generated(tmp_path).items()}
    assert {"RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16"} <= set(modes.values()), modes
    assert all(load_image(path).mode == "RGB" for path in _generated(tmp_path).values())


def test_transparency_goes_onto_white_like_transformers():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.array(load_image(_png(rgba))).tolist() == np.full((4, 4, 3), 255).tolist()


def test_other_resample_and_flags_match_transformers():
    images = [_photo("coffee"), Image.fromarray(_noise((333, 517, 3)))]
    kwargs = dict(CLIP, resample=2, do_normalize=False, size={"shortest_edge": 300}, crop_size={"height": 300, "width": 300})
    spec = ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", **kwargs})
    assert spec.resample == "bilinear" and spec.image_std == (1.0, 1.0, 1.0)
    want = CLIPImageProcessorPil(**kwargs)(images, return_tensors="np")["pixel_values"]
    assert_close("clip bilinear, no normalize", preprocess(images, spec), want, PIXELS)


@pytest.mark.parametrize("edge", [256, 213])  # crop inside the resized image; crop wider than it (zero-padded)
def test_shortest_edge_other_than_crop_matches_transformers(edge):
    kwargs = dict(size={"shortest_edge": edge}, crop_size={"height": 224, "width": 224})
    spec = ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", **kwargs})
    images = [_photo("coffee"), Image.fromarray(_noise((517, 333, 3))), Image.fromarray(_noise((9, 7, 3)))]
    want = CLIPImageProcessorPil(**kwargs)(images, return_tensors="np")["pixel_values"]
    assert_close(f"clip shortest_edge={edge} crop=224", preprocess(images, spec), want, PIXELS)


def test_default_processor_class(tmp_path):
    """transformers 5.24's ``CLIPImageProcessor`` is the torchvision backend, or the PIL one without torchvision."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(**CLIP)
    images = [_photo(name) for name in PHOTOS]
    want = processor(images, return_tensors="np")["pixel_values"]
    if processor.backend == "pil":
        assert_close("CLIPImageProcessor (pil fallback)", preprocess(images, CLIP_SPEC), want, PIXELS)
    else:
        bound = FAST_LEVELS * CLIP_SPEC.rescale_factor / min(CLIP_SPEC.image_std)
        assert_close("CLIPImageProcessor (torchvision)", preprocess(images, CLIP_SPEC), want, bound)


def _expand2square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """LongLLaVA's expand2square, written out: pad the short side with the mean colour, image centred."""
    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def test_pad_to_square_matches_expand2square_then_clip():
    spec = ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", **CLIP}, pad_to_square=True)
    colour = tuple(int(x * 255) for x in spec.image_mean)
    assert colour == (122, 116, 104)
    images = [_photo("coffee"), Image.fromarray(_noise((517, 333, 3))), _photo("astronaut"), Image.fromarray(_noise((9, 7, 3)))]
    want = _want("clip", [_expand2square(image, colour) for image in images])
    assert_close("pad_to_square", preprocess(images, spec), want, PIXELS)


def test_spec_json_round_trip_and_errors():
    spec = ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", **CLIP}, pad_to_square=True)
    assert ImageSpec.from_json(spec.to_json()) == spec
    assert ImageSpec.from_json(SIGLIP_SPEC.to_json()) == SIGLIP_SPEC
    with pytest.raises(BundleError, match="unknown key 'interpolation'"):
        ImageSpec.from_json({**spec.to_json(), "interpolation": "bicubic"})
    with pytest.raises(BundleError, match="resample: expected one of bicubic, bilinear, got 'lanczos'"):
        ImageSpec.from_json({**spec.to_json(), "resample": "lanczos"})
    with pytest.raises(BundleError, match="crop_size"):
        ImageSpec.from_json({**spec.to_json(), "crop_size": 224})


def test_hf_config_mapping():
    for processor, spec in PROCESSORS.values():  # what transformers 5.24 writes to preprocessor_config.json
        assert ImageSpec.from_hf_processor_config(json.loads(processor.to_json_string())) == spec
    legacy = ImageSpec.from_hf_processor_config({"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224})
    assert (legacy.size, legacy.resize_shortest_edge, legacy.crop_size) == (224, 224, 224)
    fast = ImageSpec.from_hf_processor_config({"image_processor_type": "SiglipImageProcessorFast", "size": {"height": 384, "width": 384}})
    assert fast == SIGLIP_SPEC
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: 2 problems: do_pad: expected False.*resample: expected 3"):
        ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", "do_pad": True, "resample": 1})
    with pytest.raises(CheckpointError, match="image_processor_type: expected one of"):
        ImageSpec.from_hf_processor_config({"image_processor_type": "LlavaNextImageProcessor"})
    with pytest.raises(CheckpointError, match="do_center_crop: expected true"):
        ImageSpec.from_hf_processor_config({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False})


# ---- decoding errors: every one an InputError naming the file, with nothing returned ----

def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    _photo("chelsea").save(buffer, "JPEG")
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 8x8 bilevel PNG whose IHDR (CRC fixed) claims width x height: a bomb's header."""
    data = bytearray(_png(Image.new("1", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature(8) + length(4) + type(4)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _load_fails(tmp_path, name: str, data: bytes, match: str, limits: ImageLimits = ImageLimits()) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError, match=match) as caught:
        load_image(path, limits)
    assert str(caught.value).startswith(f"{path}: expected"), str(caught.value)


def test_rejects_non_images(tmp_path):
    _load_fails(tmp_path, "notes.png", b"hello, this is text\n" * 10, r"found data starting b'hello")
    _load_fails(tmp_path, "drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "found data starting")
    _load_fails(tmp_path, "empty.jpg", b"", "found an empty file")


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "PPM"])
def test_rejects_formats_outside_the_allow_list(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, fmt)
    _load_fails(tmp_path, "looks_fine.png", buffer.getvalue(), rf"expected an image in one of JPEG, PNG, WEBP, BMP, GIF, TIFF, found what looks like {fmt} data")


def test_allow_list_is_configurable_and_reads_content_not_extension(tmp_path):
    path = tmp_path / "actually_a_png.jpg"
    path.write_bytes(_png(Image.new("RGB", (5, 5))))
    assert load_image(path).size == (5, 5)
    with pytest.raises(InputError, match="expected an image in one of JPEG, found"):
        load_image(path, ImageLimits(formats=("JPEG",)))


@pytest.mark.parametrize("cut", ["half", "no_end"])
def test_rejects_truncated_jpeg_and_png(tmp_path, cut):
    png = _png(_photo("chelsea"))
    jpeg = _jpeg()
    ends = {"half": (len(jpeg) // 2, len(png) // 2), "no_end": (len(jpeg) - 2, len(png) - 12)}[cut]  # drop EOI / IEND
    _load_fails(tmp_path, "cut.jpg", jpeg[:ends[0]], "expected a complete JPEG image, found corrupt or truncated data")
    _load_fails(tmp_path, "cut.png", png[:ends[1]], "expected a complete PNG file, found a truncated or corrupt one")
    _load_fails(tmp_path, "header.png", png[:30], "found PNG data with a truncated or corrupt header")


def test_rejects_files_over_the_byte_limit(tmp_path):
    data = _jpeg()
    _load_fails(tmp_path, "big.jpg", data, f"expected an image of at most {len(data) - 1:,} bytes, found a larger file",
                ImageLimits(max_bytes=len(data) - 1))
    assert load_image(data, ImageLimits(max_bytes=len(data))).size == (451, 300)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns from 89.5 Mpx; we refuse
def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # 100 Mpx: over our 64 Mpx default, under Pillow's own error threshold (2 * 89.5 Mpx).
    _load_fails(tmp_path, "bomb.png", _png_declaring(10_000, 10_000), r"expected at most 64,000,000 pixels, found 10000x10000")
    _load_fails(tmp_path, "small.png", _png(Image.new("RGB", (20, 20))), "expected at most 399 pixels, found 20x20", ImageLimits(max_pixels=399))


def test_rejects_a_decompression_bomb(tmp_path):
    _load_fails(tmp_path, "bomb.png", _png_declaring(100_000, 100_000), "found a decompression bomb")


def test_rejects_a_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jpg: expected an image file, found no such file"):
        load_image(tmp_path / "nope.jpg")


def test_first_frame_of_animations_and_mpo(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif").getpixel((0, 0)) == (255, 0, 0)
    frames[0].save(tmp_path / "multi.mpo", "MPO", save_all=True, append_images=frames[1:])  # what phone cameras write
    assert Image.open(tmp_path / "multi.mpo").format == "MPO"
    assert load_image(tmp_path / "multi.mpo").size == (8, 6)


def test_import_does_not_load_torch_or_transformers():
    code = "import sys, hmexport.runtime.images; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"hmexport.runtime.images imported {done.stdout.strip()} {done.stderr[-500:]}"
