"""Each picture is decoded once: at import, which stores it, fingerprints it and makes the
model's square from the same decoded pixels (tl_core.data.pixelcache); training and the
near-duplicate check then decode nothing, and read exactly what decoding the stored copies
would give."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from tl_core.data import neardup
from tl_core.data.dataset import DatasetManifest, grow, import_folder
from tl_core.data.imageprep import jpeg_without_metadata, prepare, square_pixels
from tl_core.data.pixelcache import Square, kept_names
from tl_core.models.catalog import CATALOG, get_spec
from tl_core.training.inputs import decode_all, load_square

SQUARE = Square(72, "bicubic")


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth picture with edges (compresses like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            128
            + 100 * np.sin(xx / (7 + c) + seed) * np.cos(yy / (9 + c))
            + rng.normal(0, 6, (h, w))
            for c in range(3)
        ],
        -1,
    )
    img[h // 4 : h // 2, w // 3 : w // 2] = (30 * seed) % 255
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **save)
    return out.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Camera maker"  # more metadata that must not travel
    return exif.tobytes()


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

# The class of JPEG files a user brings: baseline and progressive, 4:2:0 and 4:4:4, colour
# and gray, with EXIF (upright), an ICC profile, a comment, trailing bytes after the end.
JPEGS = {
    "baseline": lambda im: _jpeg(im, quality=88),
    "progressive": lambda im: _jpeg(im, quality=80, progressive=True),
    "444": lambda im: _jpeg(im, quality=92, subsampling=0),
    "gray": lambda im: _jpeg(im.convert("L"), quality=85),
    "exif_upright": lambda im: _jpeg(im, quality=90, exif=_exif(1)),
    "icc": lambda im: _jpeg(im, quality=90, icc_profile=SRGB),
    "comment": lambda im: _jpeg(im, quality=90, comment=b"taken on a field trip"),
    "trailer": lambda im: _jpeg(im, quality=90) + b"\x00TRAILING-DATA" * 20,
}


@pytest.mark.parametrize("kind", sorted(JPEGS))
def test_a_jpeg_without_its_metadata_decodes_to_the_same_pixels(kind: str) -> None:
    data = JPEGS[kind](_photo(181, 133, 3))
    stripped = jpeg_without_metadata(data)
    assert stripped is not None and len(stripped) <= len(data)
    with Image.open(io.BytesIO(data)) as a, Image.open(io.BytesIO(stripped)) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert b.getexif().get(0x0112) is None and b.getexif().get(0x010F) is None
        assert "icc_profile" not in b.info and "comment" not in b.info
    assert b"TRAILING" not in stripped and stripped.endswith(b"\xff\xd9")


def test_what_is_not_a_plain_jpeg_is_not_stripped() -> None:
    data = JPEGS["baseline"](_photo(64, 48, 1))
    for broken in (b"", b"not a jpeg", data[:200], data[:2] + b"\x00" + data[3:]):
        assert jpeg_without_metadata(broken) is None


def _sources(folder: Path) -> dict[str, Path]:
    """One file of each kind a user brings, in two classes."""
    files: dict[str, bytes] = {}
    for k, (name, make) in enumerate(sorted(JPEGS.items())):
        files[f"a/{name}.jpg"] = make(_photo(150 + 7 * k, 110 + 3 * k, k))
    big = _photo(1300, 900, 20)
    files["b/large.jpg"] = _jpeg(big, quality=90)  # shrunk to 640: stored again
    files["b/rotated.jpg"] = _jpeg(_photo(200, 120, 21), quality=90, exif=_exif(6))
    files["b/cmyk.jpg"] = _jpeg(_photo(120, 90, 22).convert("CMYK"), quality=90)
    rgba = _photo(100, 80, 23).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((80, 100), 120, np.uint8)))
    out = io.BytesIO()
    rgba.save(out, "PNG")
    files["b/transparent.png"] = out.getvalue()
    out = io.BytesIO()
    _photo(90, 140, 24).convert("P").save(out, "GIF")
    files["b/palette.gif"] = out.getvalue()
    out = io.BytesIO()
    _photo(140, 90, 25).save(out, "WEBP", quality=80)
    files["b/lossy.webp"] = out.getvalue()
    paths = {}
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetManifest, dict[str, Path]]:
    root = tmp_path_factory.mktemp("decode-once")
    sources = _sources(root / "src")
    return import_folder(root / "src", root / "data-1", squares=[SQUARE]), sources


def test_an_upright_jpeg_is_stored_as_its_own_bytes_the_others_again(imported) -> None:
    manifest, sources = imported
    kept = {Path(i.source).as_posix(): Path(manifest.root) / i.file for i in manifest.items}
    for name, source in sources.items():
        stored = kept[name].read_bytes()
        as_is = name.startswith("a/")  # every upright JPEG of at most 640 pixels a side
        assert (stored == jpeg_without_metadata(source.read_bytes())) is as_is, name
        with Image.open(kept[name]) as img:  # never a location or a camera in a stored copy
            assert not img.getexif() and "icc_profile" not in img.info, name


def test_the_import_made_the_squares_of_the_stored_copies_pixel_for_pixel(imported) -> None:
    manifest, _ = imported
    root = Path(manifest.root)
    items = sorted(manifest.items, key=lambda i: i.file)[::-1]  # any order, any subset
    decoded = decode_all(root, items, SQUARE.side, SQUARE.interpolation, 1 << 30)
    assert decoded.from_import and decoded.decoded_now == 0
    for k, item in enumerate(items):
        expected = load_square(root / item.file, SQUARE.side, SQUARE.interpolation)
        assert np.array_equal(decoded[k].numpy(), expected.numpy()), item.source
    some = decoded.rows([2, 0, 5])
    assert all(
        np.array_equal(a.numpy(), decoded[r].numpy()) for a, r in zip(some, [2, 0, 5], strict=True)
    )


def test_prediction_of_a_new_picture_starts_from_the_same_square(imported) -> None:
    """A picture tried later is prepared as at import, then squared by the same function."""
    _, sources = imported
    for name in ("a/baseline.jpg", "a/gray.jpg", "b/rotated.jpg", "b/transparent.png"):
        prepared = prepare(sources[name], 640, 100_000_000)
        square = square_pixels(prepared.image, SQUARE.side, SQUARE.interpolation)
        assert square.shape == (3, SQUARE.side, SQUARE.side) and square.dtype == np.uint8


def test_another_size_is_decoded_from_the_stored_copies_as_before(imported) -> None:
    manifest, _ = imported
    root = Path(manifest.root)
    decoded = decode_all(root, manifest.items, 40, "bilinear", 1 << 30)
    assert not decoded.from_import and decoded.decoded_now == len(manifest.items)
    first = load_square(root / manifest.items[0].file, 40, "bilinear")
    assert np.array_equal(decoded[0].numpy(), first.numpy())


def test_near_duplicates_are_confirmed_from_what_the_import_kept(imported, monkeypatch) -> None:
    manifest, _ = imported
    root = Path(manifest.root)
    work = neardup.stored_work([root])
    for item in manifest.items:
        kept = work(item.sha256)
        with Image.open(root / item.file) as img:
            again = neardup.fingerprint(img.convert("RGB"))[1]
        assert kept is not None and kept.size == again.size
        diff = np.abs(np.asarray(kept, float) - np.asarray(again, float))
        assert diff.mean() < 1.0, item.source  # a re-encoded copy may differ by a level


def test_a_near_copy_is_found_without_decoding_any_stored_picture(tmp_path, monkeypatch) -> None:
    base = _photo(300, 200, 7)
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "y").mkdir(parents=True)
    (src / "x" / "one.jpg").write_bytes(_jpeg(base, quality=90))
    (src / "x" / "copy.jpg").write_bytes(_jpeg(base.resize((240, 160)), quality=70))
    for k in range(4):
        (src / "y" / f"{k}.jpg").write_bytes(_jpeg(_photo(300, 200, 30 + k), quality=90))
    opened: list[str] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    manifest = import_folder(src, tmp_path / "data", squares=[SQUARE])
    (tmp_path / "data" / neardup.CACHE_NAME).unlink()  # found again, from the kept rows
    monkeypatch.setattr(neardup.Image, "open", counting_open)
    pairs = neardup.manifest_pairs(manifest)
    assert [(Path(p.a).parent.name, Path(p.b).parent.name) for p in pairs] == [("x", "x")]
    assert not [f for f in opened if "/images/" in f]


def test_a_grown_version_copies_the_rows_of_the_old_one_and_decodes_nothing(
    imported, tmp_path
) -> None:
    manifest, _ = imported
    extra = tmp_path / "more"
    (extra / "a").mkdir(parents=True)
    for k in range(3):
        (extra / "a" / f"new{k}.jpg").write_bytes(_jpeg(_photo(170, 120, 50 + k), quality=88))
    beside = Path(manifest.root).parent / "data-2"  # data versions live side by side
    grown = grow(manifest, extra, beside, squares=[SQUARE]).manifest
    root = Path(grown.root)
    decoded = decode_all(root, grown.items, SQUARE.side, SQUARE.interpolation, 1 << 30)
    assert decoded.decoded_now == 0
    for k, item in enumerate(grown.items):
        expected = load_square(root / item.file, SQUARE.side, SQUARE.interpolation)
        assert np.array_equal(decoded[k].numpy(), expected.numpy())


def test_a_linked_copy_of_an_import_carries_what_it_made(imported, tmp_path) -> None:
    from tl_core.data.dataset import link_import

    manifest, _ = imported
    names = kept_names(Path(manifest.root))
    made = {f"cache/{stem}.{ext}" for stem in (SQUARE.stem, "near-work") for ext in ("u8", "json")}
    assert made <= set(names)
    copy = link_import(manifest, tmp_path / "copy", carry=names)
    for name in names:  # the same file (a hard link), not a second copy on the disk
        assert (Path(copy.root) / name).stat().st_ino == (Path(manifest.root) / name).stat().st_ino
    decoded = decode_all(Path(copy.root), copy.items, SQUARE.side, SQUARE.interpolation, 1 << 30)
    assert decoded.from_import


def test_an_import_refuses_nothing_it_took_before(imported) -> None:
    manifest, sources = imported
    assert len(manifest.items) == len(sources)
    index = json.loads((Path(manifest.root) / "cache" / f"{SQUARE.stem}.json").read_text())
    assert index["sha256"] == [i.sha256 for i in [*manifest.items, *manifest.unlabelled]]


@pytest.mark.parametrize("spec", [s for s in CATALOG if s.source == "bundled" or s.hidden])
def test_each_models_square_is_the_one_timm_resizes_to(spec) -> None:
    """The catalog's square (known without timm) is timm's evaluation resize of the model."""
    from tl_core.models.catalog import DataConfig, create_model
    from tl_core.training.inputs import cache_side

    cfg = DataConfig.of(create_model(get_spec(spec.key), num_classes=2))
    assert spec.square == Square(cache_side(cfg), cfg.interpolation)


@pytest.mark.parametrize("spec", [s for s in CATALOG if s.source == "hub" and not s.hidden])
def test_each_hub_models_square_matches_timms_configuration(spec) -> None:
    import math

    import timm

    cfg = timm.models.get_pretrained_cfg(spec.timm_name).to_dict()
    side = math.floor(cfg["input_size"][-1] / cfg["crop_pct"])
    assert spec.square == Square(side, cfg["interpolation"])
