"""Importing user images: layouts, unsafe zips, damaged files, conversions, dedupe, split."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tl_core.data import zipsafe
from tl_core.data.dataset import (
    IMAGE_SUFFIXES,
    MAX_SIDE,
    DatasetManifest,
    DataWarning,
    ImageItem,
    SkippedFile,
    import_files,
    import_folder,
    import_zip,
    split_dataset,
)
from tl_core.errors import DataError

# ------------------------------------------------------------------------- helpers

KINDS = "supported: " + ", ".join(sorted(IMAGE_SUFFIXES))


def noise(seed: int, size: tuple[int, int] = (16, 12)) -> Image.Image:
    """A distinct RGB image per seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def tree(spec: dict[str, int], seed: int = 0) -> dict[str, bytes]:
    """{"cat": 3} -> {"cat/0.png": <png>, ...}, every image different."""
    files = {}
    for label, n in spec.items():
        for i in range(n):
            seed += 1
            files[f"{label}/{i}.png"] = encode(noise(seed))
    return files


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def set_declared_sizes(data: bytes, size: int, only: str | None = None) -> bytes:
    """Rewrite central-directory 'uncompressed size' fields: the archive's header lies."""
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack("<H", out[pos + 28 : pos + 30])[0]
        if only is None or out[pos + 46 : pos + 46 + name_len] == only.encode():
            out[pos + 24 : pos + 28] = struct.pack("<I", size)
        pos = out.find(b"PK\x01\x02", pos + 4)
    return bytes(out)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int, with_pixels: bool) -> bytes:
    """A 1-bit PNG; without pixels it is only a header, with them a tiny all-black bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height if with_pixels else 0))
    idat += packer.flush()
    sig = b"\x89PNG\r\n\x1a\n"
    return sig + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def by_source(manifest: DatasetManifest) -> dict[str, ImageItem]:
    return {i.source: i for i in manifest.items}


def pixel(manifest: DatasetManifest, source: str, xy: tuple[int, int] = (0, 0)) -> tuple:
    with Image.open(manifest.root / by_source(manifest)[source].file) as img:
        assert img.mode == "RGB"
        return img.getpixel(xy)


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------ demo set


def test_bundled_demo_set_imports_with_its_own_validation_split(demo_dir, tmp_path) -> None:
    licence = (demo_dir.parent / "LICENSE.md").read_text(encoding="utf-8")
    assert (
        "Zalando SE" in licence and "MIT" in licence and "Permission is hereby granted" in licence
    )
    manifest = import_folder(demo_dir, tmp_path / "demo")
    assert len(manifest.classes) == 10 and manifest.has_explicit_val
    split = split_dataset(manifest, 0.5, seed=7)  # the fraction is ignored: val/ is used
    assert (len(split.train), len(split.val)) == (500, 200)
    assert set(manifest.counts().values()) == {70}
    assert manifest.skipped == [] and manifest.duplicates == [] and manifest.warnings == []
    assert DatasetManifest.load(tmp_path / "demo") == manifest
    assert json.loads((tmp_path / "demo" / "manifest.json").read_text())["version"] == 1


# ------------------------------------------------------------------ refused sets


def test_an_empty_zip_is_refused(tmp_path) -> None:
    with pytest.raises(DataError, match=r"The \.zip file is empty"):
        import_zip(io.BytesIO(make_zip({})), tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_file_that_is_not_a_zip_is_refused(tmp_path) -> None:
    path = write(tmp_path, {"photos.zip": b"this is not a zip"}) / "photos.zip"
    with pytest.raises(DataError, match=r"not a \.zip archive"):
        import_zip(path, tmp_path / "d")


def test_a_zip_without_class_folders_holds_unlabelled_pictures(tmp_path) -> None:
    files = {f"{i}.png": encode(noise(i)) for i in range(4)}
    manifest = import_zip(io.BytesIO(make_zip(files)), tmp_path / "d")
    assert manifest.items == [] and manifest.classes == []
    assert sorted(i.source for i in manifest.unlabelled) == sorted(files)


def test_a_folder_without_any_image_is_refused(tmp_path) -> None:
    write(tmp_path / "src", {"cats/notes.txt": b"hello", "dogs/list.csv": b"a,b"})
    with pytest.raises(DataError, match=r"No images were found.*\.jpg"):
        import_folder(tmp_path / "src", tmp_path / "d")


def test_one_class_only_is_refused(tmp_path) -> None:
    write(tmp_path / "src", tree({"cat": 5}))
    with pytest.raises(DataError, match=r"Only one class was found \(only 'cat'\).*two classes"):
        import_folder(tmp_path / "src", tmp_path / "d")


def test_a_class_with_one_usable_image_is_refused_and_nothing_is_left(tmp_path) -> None:
    src = write(tmp_path / "src", {**tree({"cat": 3, "dog": 1}), "dog/bad.jpg": b"not a jpeg"})
    before = digest_tree(src)
    dest = tmp_path / "ws" / "data-1"
    with pytest.raises(DataError, match=r"Class 'dog' has 1 usable image; each class needs at le"):
        import_folder(src, dest)
    assert not dest.exists()
    assert digest_tree(src) == before  # the source is never modified


def test_a_class_whose_images_are_all_damaged_names_them(tmp_path) -> None:
    write(tmp_path / "src", {**tree({"cat": 3}), "dog/a.jpg": b"", "dog/b.png": b"text"})
    with pytest.raises(DataError, match=r"Class 'dog' has no usable images \('dog/a.jpg': empty"):
        import_folder(tmp_path / "src", tmp_path / "d")
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------- skipped files


def _truncated_jpeg() -> bytes:
    data = encode(noise(99, (64, 64)), "JPEG", quality=90)
    return data[: len(data) // 2]


@pytest.mark.filterwarnings("error")  # no DecompressionBombWarning may leak out
@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("cat/empty.jpg", lambda: b"", "empty file (0 bytes)"),
        ("cat/cut.jpg", _truncated_jpeg, "image is damaged or cut off"),
        (
            "cat/letter.jpg",
            lambda: b"Dear friend, this is text.",
            "not an image (the file's contents are not a picture)",
        ),
        ("cat/notes.txt", lambda: b"some notes", f"file type '.txt' is not supported ({KINDS})"),
        ("loose.png", lambda: encode(noise(77)), "not inside a class folder"),
        (
            "cat/huge.png",  # a header claiming 20000x20000: refused before any decoding
            lambda: bilevel_png(20_000, 20_000, with_pixels=False),
            "image too large (400 megapixels); the limit is 100 megapixels",
        ),
        (
            "cat/bomb.png",  # a real, valid 120-megapixel image in ~15 KB
            lambda: bilevel_png(12_000, 10_000, with_pixels=True),
            "image too large (12000x10000 pixels); the limit is 100 megapixels",
        ),
    ],
    ids=["zero-bytes", "truncated-jpeg", "text-named-jpg", "txt", "root", "20000x20000", "bomb"],
)
def test_unusable_files_are_skipped_with_a_plain_reason(tmp_path, name, data, reason) -> None:
    payload = data()
    if name.endswith("bomb.png"):
        assert len(payload) < 100_000
    write(tmp_path / "src", {**tree({"cat": 2, "dog": 2}), name: payload})
    manifest = import_folder(tmp_path / "src", tmp_path / "d")
    assert manifest.skipped == [SkippedFile(name, reason)]
    assert len(manifest.items) == 4 and manifest.classes == ["cat", "dog"]
    said = DataWarning("skipped", "1 file was skipped; the list of skipped files says why.")
    assert said in manifest.warnings


@pytest.mark.filterwarnings("error")
def test_large_images_decoded_on_several_threads_all_get_the_true_reason(tmp_path) -> None:
    """Pillow's bomb warning is filtered per call; threads must not undo each other's filter."""
    bomb = bilevel_png(10_000, 9_500, with_pixels=True)  # 95 megapixels: over Pillow's warning
    files = {**tree({"cat": 12, "dog": 12}), **{f"cat/big{k}.png": bomb for k in range(6)}}
    write(tmp_path / "src", files)
    manifest = import_folder(tmp_path / "src", tmp_path / "d")
    assert manifest.skipped == []  # within the 100-megapixel limit: imported, not "damaged"
    assert len(manifest.items) == 24 + 1 and len(manifest.duplicates) == 5


# --------------------------------------------------------------------- unsafe zips


@pytest.mark.parametrize(
    "evil", ["../evil.png", "/tmp/abs/evil.png", "..\\evil.png", "cat/../../evil.png", "C:/e.png"]
)
def test_a_zip_with_an_entry_outside_its_folder_is_refused(tmp_path, evil) -> None:
    data = make_zip({**tree({"cat": 2, "dog": 2}), evil: encode(noise(50))})
    with pytest.raises(DataError, match=r"refused: it contains .* outside its folder"):
        import_zip(io.BytesIO(data), tmp_path / "d" / "data-1")
    assert not (tmp_path / "d" / "data-1").exists() and not (tmp_path / "evil.png").exists()


def test_a_zip_claiming_gigabytes_is_refused_before_unpacking(tmp_path) -> None:
    data = set_declared_sizes(make_zip(tree({"cat": 1, "dog": 1})), 3 * 1024**3)
    with pytest.raises(DataError, match=r"unpack to 6\.0 GB, more than the limit of 4\.0 GB"):
        import_zip(io.BytesIO(data), tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_zip_with_too_many_files_is_refused(tmp_path) -> None:
    data = make_zip(tree({"cat": 2, "dog": 2}))
    with pytest.raises(DataError, match=r"holds 4 files, more than the limit of 3"):
        import_zip(io.BytesIO(data), tmp_path / "d", max_files=3)


def test_a_member_bigger_than_its_header_says_is_cut_at_the_header_size(tmp_path) -> None:
    data = make_zip({**tree({"cat": 2, "dog": 2}), "cat/lie.png": bytes(2_000_000)})
    data = set_declared_sizes(data, 100, only="cat/lie.png")  # 2 MB inside, "100 bytes" outside
    manifest = import_zip(io.BytesIO(data), tmp_path / "d", max_total_bytes=1_000_000)
    assert manifest.skipped == [
        SkippedFile("cat/lie.png", "could not be unpacked: this part of the .zip is damaged")
    ]
    assert len(manifest.items) == 4


def test_bytes_actually_unpacked_are_capped_even_when_the_size_check_is_fooled(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(zipsafe, "declared_size", lambda infos: 0)  # as if every header lied
    big = {f"cat/big{i}.png": bytes(400_000) for i in range(3)}
    data = make_zip({**tree({"cat": 2, "dog": 2}), **big})
    with pytest.raises(DataError, match=r"more than 976\.6 KB.*possible 'zip bomb'"):
        import_zip(io.BytesIO(data), tmp_path / "d", max_total_bytes=1_000_000)
    assert not (tmp_path / "d").exists()


def test_a_zip_with_a_wrapping_folder_imports_and_ignores_clutter(tmp_path) -> None:
    files = {f"flowers/{k}": v for k, v in tree({"rose": 2, "tulip": 3}).items()}
    files |= {"__MACOSX/flowers/._rose": b"x", "flowers/.DS_Store": b"x", "flowers/Thumbs.db": b"x"}
    path = write(tmp_path, {"flowers.zip": make_zip(files)}) / "flowers.zip"
    calls: list[tuple[int, int]] = []
    manifest = import_zip(path, tmp_path / "d", lambda done, total: calls.append((done, total)))
    assert manifest.counts() == {"rose": 2, "tulip": 3} and not manifest.has_explicit_val
    assert manifest.skipped == [] and all(i.subset is None for i in manifest.items)
    assert calls[0] == (0, 5) and calls[-1] == (5, 5) and len(calls) == 6
    assert not (tmp_path / "d" / ".incoming").exists()


# ---------------------------------------------------------------- names, layouts


def test_names_with_spaces_accents_and_emoji_are_imported_under_safe_names(tmp_path) -> None:
    nfd = unicodedata.normalize("NFD", "café crème")
    files = {
        f"{nfd}/my photo (1).png": encode(noise(1)),
        f"{nfd}/naïve ü.JPG": encode(noise(2), "JPEG"),
        "🐱 chats/😀.png": encode(noise(3)),
        "🐱 chats/a b.png": encode(noise(4)),
        'what?<>"/x.png': encode(noise(5)),
        'what?<>"/y.png': encode(noise(6)),
    }
    manifest = import_files(list(files.items()), tmp_path / "d")
    assert manifest.classes == sorted(["café crème", "🐱 chats", 'what?<>"'])
    assert "café crème" in manifest.classes  # composed (NFC) whatever the source used
    for item in manifest.items:
        assert re.fullmatch(r"images/[^/<>:\"\\|?*]+/\d{4}\.(png|jpg)", item.file), item.file
        assert (manifest.root / item.file).is_file()
    assert {i.source for i in manifest.items} == set(files)
    assert by_source(manifest)[f"{nfd}/naïve ü.JPG"].file.endswith(".jpg")


def test_directory_upload_names_are_untrusted_and_descended(tmp_path) -> None:
    files = [(f"photos/{k}", v) for k, v in tree({"cat": 2, "dog": 2}).items()]
    files += [
        ("photos/cat/2019/summer/deep.png", encode(noise(40))),  # counts for "cat"
        ("/photos/dog/dropped.png", encode(noise(42))),  # how browsers name dropped folders
        ("photos/.DS_Store", b"x"),
        ("photos/notes.txt", b"x"),
        ("../../etc/evil.png", encode(noise(41))),
    ]
    manifest = import_files(files, tmp_path / "d")
    assert manifest.counts() == {"cat": 3, "dog": 3}
    assert manifest.skipped == [
        SkippedFile("../../etc/evil.png", "unsafe file name"),
        SkippedFile("photos/notes.txt", f"file type '.txt' is not supported ({KINDS})"),
    ]
    assert not (tmp_path / "etc").exists()


def test_explicit_train_and_validation_folders_are_honoured(tmp_path) -> None:
    train = {f"train/{k}": v for k, v in tree({"a": 3, "b": 3, "c": 2}).items()}
    val = {f"Validation/{k}": v for k, v in tree({"a": 1, "b": 1, "d": 1}, seed=100).items()}
    val["Validation/a/copy.png"] = train["train/a/0.png"]  # would leak into validation
    write(tmp_path / "src", {**train, **val})
    manifest = import_folder(tmp_path / "src", tmp_path / "d")
    assert manifest.has_explicit_val and manifest.classes == ["a", "b", "c"]
    assert manifest.duplicates == [("Validation/a/copy.png", "train/a/0.png")]
    assert manifest.skipped == [
        SkippedFile("Validation/d/0.png", "its class has no folder in 'train'")
    ]
    text = " ".join(w.text for w in manifest.warnings)
    assert "1 image in 'Validation' was an exact copy of training images" in text
    assert "no images of class 'c'" in text and "class 'd' that the 'train' folder lacks" in text
    few = DataWarning(
        "few_images",
        "3 classes have fewer than 10 images: 'c' (2), 'a' (4), 'b' (4). At least 10 per class "
        "are recommended.",
        ("c", "a", "b"),
    )
    assert few in manifest.warnings
    kinds = {w.kind: w for w in manifest.warnings}
    assert kinds["missing_val"].classes == ("c",) and kinds["missing_val"].folder == "Validation"
    assert kinds["val_orphans"].classes == ("d",) and kinds["val_copies"].folder == "Validation"
    split = split_dataset(manifest, 0.9, seed=3)
    assert {i.source for i in split.val} == {"Validation/a/0.png", "Validation/b/0.png"}
    assert len(split.train) == 8 and all(i.subset == "train" for i in split.train)


def test_symlinked_train_and_val_folders_are_followed(tmp_path) -> None:
    """The command line presents --data and --val this way."""
    data = write(tmp_path / "data", tree({"a": 2, "b": 2}))
    val = write(tmp_path / "val", tree({"a": 1, "b": 1}, seed=50))
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "train").symlink_to(data, target_is_directory=True)
    (tmp_path / "both" / "val").symlink_to(val, target_is_directory=True)
    manifest = import_folder(tmp_path / "both", tmp_path / "d")
    assert manifest.has_explicit_val and manifest.counts() == {"a": 3, "b": 3}
    assert sorted(i.subset for i in manifest.items) == ["train"] * 4 + ["val"] * 2


def test_an_empty_validation_folder_is_refused(tmp_path) -> None:
    write(
        tmp_path / "src",
        {
            **{f"train/{k}": v for k, v in tree({"a": 2, "b": 2}).items()},
            "val/a/broken.png": b"nope",
        },
    )
    with pytest.raises(DataError, match=r"The 'val' folder has no usable images"):
        import_folder(tmp_path / "src", tmp_path / "d")


# ------------------------------------------------------------------- conversions


def test_exif_rotation_is_applied(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = encode(noise(1, (60, 40)), "JPEG", exif=exif)
    files = {"a/r.jpg": rotated, "a/s.png": encode(noise(2)), **tree({"b": 2}, seed=10)}
    manifest = import_files(list(files.items()), tmp_path / "d")
    item = by_source(manifest)["a/r.jpg"]
    assert (item.width, item.height) == (40, 60)
    with Image.open(manifest.root / item.file) as img:
        assert img.size == (40, 60) and img.format == "JPEG"


def test_large_images_are_downscaled_to_the_long_side_limit(tmp_path) -> None:
    files = {
        "a/wide.png": encode(noise(1, (1000, 500))),
        "a/tall.jpg": encode(noise(2, (700, 1400)), "JPEG"),
        **tree({"b": 2}, seed=10),
    }
    manifest = import_files(list(files.items()), tmp_path / "d")
    items = by_source(manifest)
    assert (items["a/wide.png"].width, items["a/wide.png"].height) == (MAX_SIDE, 320)
    assert (items["a/tall.jpg"].width, items["a/tall.jpg"].height) == (320, MAX_SIDE)
    with Image.open(manifest.root / items["a/wide.png"].file) as img:
        assert img.size == (MAX_SIDE, 320) and img.format == "PNG"


@pytest.mark.parametrize("size", [(1000, 500), (641, 480), (700, 1400), (1300, 901)])
def test_large_images_are_shrunk_bilinearly_alike_by_import_try_page_and_bundle(
    tmp_path, size
) -> None:
    """One downscale everywhere: the stored copy (lossless here), the Try page's reading of
    the picture and the bundle's predict.py give the same pixels, Pillow's bilinear filter."""
    from tl_core.data.standalone_predict import open_image
    from tl_core.training.inference import upright_rgb

    source = noise(3, size)
    src = tmp_path / "big.png"
    source.save(src)
    files = {"a/big.png": src.read_bytes(), "a/small.png": encode(noise(4)), **tree({"b": 2})}
    manifest = import_files(list(files.items()), tmp_path / "d")
    item = by_source(manifest)["a/big.png"]
    scale = MAX_SIDE / max(size)
    expected_size = (item.width, item.height)
    assert max(expected_size) == MAX_SIDE
    expected = np.asarray(source.resize(expected_size, Image.Resampling.BILINEAR))
    with Image.open(manifest.root / item.file) as img:
        stored = np.asarray(img.convert("RGB"))
    assert abs(expected_size[0] - size[0] * scale) <= 1
    assert np.array_equal(stored, expected)
    assert np.array_equal(np.asarray(upright_rgb(src)), expected)
    assert np.array_equal(np.asarray(upright_rgb(Image.open(src))), expected)
    assert np.array_equal(np.asarray(open_image(src)), expected)


def _mode_images() -> dict[str, bytes]:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    pal = Image.new("P", (9, 8), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0])
    pal.putpixel((1, 0), 1)
    deep = np.zeros((8, 10), dtype=np.uint16)
    deep[0, 1], deep[0, 2] = 65535, 32896
    wide = np.zeros((8, 11), dtype=np.int32)
    wide[0, 1] = 65535
    return {
        "a/grey.png": encode(Image.new("L", (12, 8), 200)),
        "a/bilevel.png": encode(Image.new("1", (13, 8), 1)),
        "a/rgba.png": encode(rgba),
        "a/palette.png": encode(pal, transparency=0),
        "a/grey_alpha.png": encode(Image.new("LA", (14, 8), (50, 0))),
        "a/deep16.png": encode(Image.fromarray(deep)),
        "a/int32.tif": encode(Image.fromarray(wide), "TIFF"),
        "a/cmyk.tif": encode(Image.new("CMYK", (15, 8), (0, 255, 255, 0)), "TIFF"),
        "a/cmyk.jpg": encode(Image.new("CMYK", (16, 8), (0, 0, 0, 0)), "JPEG"),
        **tree({"b": 2}, seed=10),
    }


def test_every_colour_mode_becomes_rgb(tmp_path) -> None:
    manifest = import_files(list(_mode_images().items()), tmp_path / "d")
    assert manifest.skipped == [] and len(manifest.items) == 11
    assert pixel(manifest, "a/grey.png") == (200, 200, 200)
    assert pixel(manifest, "a/bilevel.png") == (255, 255, 255)
    assert pixel(manifest, "a/rgba.png") == (255, 255, 255)
    assert pixel(manifest, "a/rgba.png", (1, 0)) == (0, 0, 255)
    assert pixel(manifest, "a/palette.png") == (255, 255, 255)
    assert pixel(manifest, "a/palette.png", (1, 0)) == (0, 255, 0)
    assert pixel(manifest, "a/grey_alpha.png") == (255, 255, 255)
    assert [pixel(manifest, "a/deep16.png", (x, 0)) for x in range(3)] == [
        (0, 0, 0),
        (255, 255, 255),
        (128, 128, 128),
    ]
    assert pixel(manifest, "a/int32.tif", (1, 0)) == (255, 255, 255)
    assert pixel(manifest, "a/cmyk.tif") == (255, 0, 0)
    assert all(abs(c - 255) <= 2 for c in pixel(manifest, "a/cmyk.jpg"))


# -------------------------------------------------------------------- duplicates


def test_exact_duplicates_are_found_by_pixels_and_left_out(tmp_path) -> None:
    original = noise(1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "same pixels, other bytes")
    files = {
        "a/w.png": encode(noise(2)),
        "a/x.png": encode(original),
        "a/y.png": encode(original),
        "a/z.png": encode(original, pnginfo=info),
        "b/x.png": encode(original),  # the same picture filed under another class
        **tree({"b": 2}, seed=10),
    }
    manifest = import_files(list(files.items()), tmp_path / "d")
    assert manifest.duplicates == [
        ("a/y.png", "a/x.png"),
        ("a/z.png", "a/x.png"),
        ("b/x.png", "a/x.png"),
    ]
    assert manifest.counts() == {"a": 2, "b": 2}
    texts = {w.kind: w.text for w in manifest.warnings}
    duplicates = "3 exact duplicate images were left out (one copy of each is kept)."
    assert texts["duplicates"] == duplicates
    assert "appeared in two different classes" in texts["other_class"]
    assert len({i.sha256 for i in manifest.items}) == len(manifest.items)


# ------------------------------------------------------------------------- split


def fake_manifest(counts: dict[str, int]) -> DatasetManifest:
    items = [
        ImageItem(f"images/{c}/{i:04d}.png", c, None, f"{c}/{i}.png", f"{c}{i}", 8, 8)
        for c, n in counts.items()
        for i in range(n)
    ]
    return DatasetManifest(Path("."), items, sorted(counts), [], [], [], False)


def _val_files(val_fraction: float, seed: int) -> list[str]:
    return [i.file for i in split_dataset(fake_manifest(SPLIT_COUNTS), val_fraction, seed).val]


SPLIT_COUNTS = {"a": 10, "b": 20, "c": 2, "d": 3}


def test_split_is_stratified_and_keeps_every_class_on_both_sides() -> None:
    manifest = fake_manifest(SPLIT_COUNTS)
    split = split_dataset(manifest, 0.2, seed=0)
    val = {c: sum(i.label == c for i in split.val) for c in SPLIT_COUNTS}
    train = {c: sum(i.label == c for i in split.train) for c in SPLIT_COUNTS}
    assert val == {"a": 2, "b": 4, "c": 1, "d": 1}
    assert train == {"a": 8, "b": 16, "c": 1, "d": 2}
    assert {i.file for i in split.train} | {i.file for i in split.val} == {
        i.file for i in manifest.items
    }


def test_split_is_deterministic_seeded_and_the_same_in_another_process() -> None:
    assert _val_files(0.2, 0) == _val_files(0.2, 0)
    assert _val_files(0.2, 0) != _val_files(0.2, 1)
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import test_data as t; "
        "print(json.dumps(t._val_files(0.2, 0)))"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == _val_files(0.2, 0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_split_refuses_a_fraction_outside_zero_to_one(fraction) -> None:
    with pytest.raises(DataError, match="between 0 and 1"):
        split_dataset(fake_manifest(SPLIT_COUNTS), fraction)


def test_loading_a_missing_manifest_says_to_import_again(tmp_path) -> None:
    with pytest.raises(DataError, match="Import them again"):
        DatasetManifest.load(tmp_path)
