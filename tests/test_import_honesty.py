"""Import honesty: the layout rule, nothing lost without a word, real-world pictures, labels."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from tl_core.data import layout as datalayout
from tl_core.data.dataset import (
    IMAGE_SUFFIXES,
    DatasetManifest,
    SkippedFile,
    import_files,
    import_folder,
    import_zip,
)
from tl_core.errors import DataError

# ------------------------------------------------------------------------- helpers


def noise(seed: int, size: tuple[int, int] = (16, 12)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    noise(seed).save(buf, "PNG")
    return buf.getvalue()


_SEED = [1000]


def images(prefix: str, spec: dict[str, int]) -> dict[str, bytes]:
    """{"cat": 2} under "train" -> {"train/cat/0.png": <png>, ...}, all different."""
    out = {}
    for label, n in spec.items():
        for i in range(n):
            _SEED[0] += 1
            out["/".join(p for p in (prefix, label, f"{i}.png") if p)] = png(_SEED[0])
    return out


def write(root: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def make_zip(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for d in dirs:
            zf.writestr(d.rstrip("/") + "/", b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def via_folder(tmp: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> DatasetManifest:
    return import_folder(write(tmp / "src", files, dirs), tmp / "d")


def via_zip(tmp: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> DatasetManifest:
    return import_zip(io.BytesIO(make_zip(files, dirs)), tmp / "d")


def via_upload(tmp: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> DatasetManifest:
    return import_files(list(files.items()), tmp / "d")


WAYS = {"folder": via_folder, "zip": via_zip, "upload": via_upload}
ImportWay = Callable[..., DatasetManifest]


@pytest.fixture(params=list(WAYS))
def way(request) -> ImportWay:
    return WAYS[request.param]


def reasons(manifest: DatasetManifest) -> dict[str, str]:
    return {s.source: s.reason for s in manifest.skipped}


# ------------------------------------------------------------ item 1/7: the layout


REFUSED = {
    "val-holds-only-text": (
        {**images("train", {"a": 2, "b": 2}), "val/a/notes.txt": b"x"},
        (),
        r"The 'val' folder holds no images",
    ),
    "val-images-directly": (
        {**images("train", {"a": 2, "b": 2}), **images("", {"val": 2})},
        (),
        r"The 'val' folder holds images directly .*val/<class>/",
    ),
    "unlabelled-test": (
        {**images("data/train", {"a": 2, "b": 2}), **images("data", {"test": 3})},
        (),
        r"The 'data/test' folder holds images directly",
    ),
    "class-first-layout": (
        {**images("cats", {"train": 2, "val": 1}), **images("dogs", {"train": 2, "val": 1})},
        (),
        r"The class folder 'cats' holds a folder named 'train'",
    ),
    "val-nested-in-a-train-class": (
        {
            **images("train", {"a": 2, "b": 2}),
            **images("train/a", {"val": 1}),
            **images("val", {"a": 1, "b": 1}),
        },
        (),
        r"The class folder 'train/a' holds a folder named 'val'",
    ),
    "train-without-val": (
        {**images("train", {"a": 2, "b": 2}), **images("", {"extra": 2})},
        (),
        r"The 'train' folder holds class folders, but there is no validation folder",
    ),
    "val-without-train": (
        {**images("validation", {"a": 2, "b": 2}), **images("", {"extra": 2})},
        (),
        r"The folder 'validation' holds class folders, but there is no 'train' folder",
    ),
    "train-images-and-classes": (
        {
            **images("train", {"a": 2, "b": 2}),
            "train/loose.png": png(1),
            **images("val", {"a": 1, "b": 1}),
        },
        (),
        r"The 'train' folder holds images directly .* as well as class folders",
    ),
    "train-direct-val-classes": (
        {**images("", {"train": 3}), **images("val", {"a": 1, "b": 1})},
        (),
        r"The folder 'val' holds class folders, but 'train' holds its images directly",
    ),
    "val-classes-all-unknown": (
        {**images("train", {"a": 2, "b": 2}), **images("val", {"x": 1, "y": 1})},
        (),
        r"None of the class folders in 'val' \('x' and 'y'\) has a folder",
    ),
    "two-train-folders": (
        {
            **images("train", {"a": 2, "b": 2}),
            **images("Train", {"a": 2}),
            **images("val", {"a": 1, "b": 1}),
        },
        (),
        r"There are two training folders, 'Train' and 'train'",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_split_whose_validation_images_cannot_be_used_as_given_is_refused(
    tmp_path, way, case
) -> None:
    files, dirs, message = REFUSED[case]
    with pytest.raises(DataError, match=message):
        way(tmp_path, files, dirs)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("way_name", ["folder", "zip"])
@pytest.mark.parametrize("wrap", ["", "photos/"])
def test_an_empty_validation_folder_is_refused_not_overlooked(tmp_path, way_name, wrap) -> None:
    files = images(f"{wrap}train", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=rf"The '{wrap}val' folder holds no images"):
        WAYS[way_name](tmp_path, files, (f"{wrap}val",))


@pytest.mark.parametrize("n_val", [1, 3])
def test_a_validation_folder_of_copies_of_training_images_is_called_leakage(
    tmp_path, way, n_val
) -> None:
    train = images("train", {"a": 3, "b": 3})
    val = {f"val/a/copy{i}.png": train[f"train/a/{i}.png"] for i in range(n_val)}
    val["val/b/copy.png"] = train["train/b/0.png"]
    with pytest.raises(DataError, match=r"Every image in 'val' is a copy of a training image, so"):
        way(tmp_path, {**train, **val})


CLASS_NAMED_LIKE_SPLITS = [
    ("train", "val"),
    ("train", "val", "other"),
    ("Train", "VALID"),
    ("training", "test"),
    ("TRAIN", "Validation", "testing"),
]


@pytest.mark.parametrize("names", CLASS_NAMED_LIKE_SPLITS, ids="-".join)
@pytest.mark.parametrize("wrap", ["", "set/"])
def test_classes_named_train_and_val_holding_images_directly_are_classes(
    tmp_path, way, names, wrap
) -> None:
    manifest = way(tmp_path, images(wrap.rstrip("/"), dict.fromkeys(names, 3)))
    assert not manifest.has_explicit_val
    assert manifest.classes == sorted(names) and manifest.skipped == []


SPLITS = [("train", "val"), ("Train", "Validation"), ("TRAIN", "test"), ("training", "valid")]


@pytest.mark.parametrize(("train", "val"), SPLITS, ids=[f"{t}-{v}" for t, v in SPLITS])
@pytest.mark.parametrize("wrap", ["", "flowers/", "a/b/"])
def test_a_split_is_train_and_val_each_holding_class_folders(tmp_path, way, train, val, wrap):
    files = {**images(wrap + train, {"rose": 3, "tulip": 3}), **images(wrap + val, {"rose": 1})}
    files[f"{wrap}{val}/tulip/deep/x.png"] = png(7)  # deeper folders count for their class
    manifest = way(tmp_path, files)
    assert manifest.has_explicit_val and manifest.classes == ["rose", "tulip"]
    assert sum(i.subset == "val" for i in manifest.items) == 2 and manifest.skipped == []


def test_with_val_and_test_the_val_folder_is_used_and_test_is_listed(tmp_path, way) -> None:
    files = {**images("train", {"a": 3, "b": 3}), **images("val", {"a": 1, "b": 1})}
    files |= images("test", {"a": 1})
    manifest = way(tmp_path, files)
    assert sum(i.subset == "val" for i in manifest.items) == 2
    assert reasons(manifest) == {
        "test/a/0.png": "the 'test' folder is not used: 'val' is the validation folder"
    }


def test_the_layout_rule_is_written_down() -> None:
    doc = datalayout.__doc__ or ""
    assert "split" in doc and "classes" in doc and "train" in doc and "val" in doc


# ------------------------------------------------------- item 5: nothing lost silently


def test_hidden_folders_are_one_line_each_with_their_file_count_and_junk_is_silent(
    tmp_path, way
) -> None:
    files = images("", {"cat": 2, "dog": 2})
    files |= {f"cat/.cache/{i}.png": png(i) for i in range(10)}
    files |= {".git/objects/x": b"x", ".git/HEAD": b"x", "dog/.hidden.png": png(50)}
    files |= {"__MACOSX/cat/._0.png": b"x", "cat/.DS_Store": b"x", "dog/Thumbs.db": b"x"}
    files |= {"dog/desktop.ini": b"x", "cat/._1.png": b"x"}
    manifest = way(tmp_path, files)
    assert manifest.counts() == {"cat": 2, "dog": 2}
    assert reasons(manifest) == {
        "cat/.cache/": "hidden folder '.cache' (10 files) ignored",
        ".git/": "hidden folder '.git' (2 files) ignored",
        "dog/.hidden.png": "hidden file ignored",
    }
    assert not any("damaged" in s.reason for s in manifest.skipped)


def test_an_unreadable_folder_and_file_are_listed_as_permission_denied(
    tmp_path, monkeypatch
) -> None:
    src = write(tmp_path / "src", {**images("", {"cat": 2, "dog": 2}), **images("bird", {"x": 2})})
    write(src, {"dog/secret.png": png(9), "dog/secret.xyz": png(10)})
    real_scandir, real_open = os.scandir, builtins.open

    def scandir(path=".", *a, **k):
        if str(path).endswith("/bird"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *a, **k)

    def fake_open(file, *a, **k):
        if str(file).endswith(("secret.png", "secret.xyz")):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(datalayout.os, "scandir", scandir)
    monkeypatch.setattr(builtins, "open", fake_open)
    manifest = import_folder(src, tmp_path / "d")
    assert reasons(manifest) == {
        "bird/": "permission denied: the folder could not be opened",
        "dog/secret.png": "permission denied: the file could not be read",
        "dog/secret.xyz": "permission denied: the file could not be read",
    }
    assert manifest.counts() == {"cat": 2, "dog": 2}


def test_an_unreadable_chosen_folder_is_a_plain_message(tmp_path, monkeypatch) -> None:
    src = write(tmp_path / "src", images("", {"cat": 2, "dog": 2}))

    def scandir(path=".", *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(datalayout.os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot be opened \(permission denied: the folder could"):
        import_folder(src, tmp_path / "d")


def _as_nobody(work: Callable[[], object]) -> object:
    """Run ``work`` in a forked child under the 'nobody' user; its JSON result comes back."""
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            result = {"ok": work()}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks))
    assert "ok" in out, out
    return out["ok"]


def test_chmod_000_folder_and_file_read_by_a_user_without_rights(tmp_path) -> None:
    base = Path(tempfile.mkdtemp(prefix="tl-perm-", dir="/tmp"))
    try:
        base.chmod(0o777)
        src = write(base / "src", images("", {"cat": 2, "dog": 2, "owl": 1}))
        write(src, {"dog/locked.png": png(3)})
        for p in [src, *src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (src / "owl").chmod(0o000)
        (src / "dog" / "locked.png").chmod(0o000)

        def work() -> object:
            manifest = import_folder(src, base / "d")
            return {"skipped": reasons(manifest), "counts": manifest.counts()}

        result = work() if os.geteuid() != 0 else _as_nobody(work)
        assert result == {
            "skipped": {
                "owl/": "permission denied: the folder could not be opened",
                "dog/locked.png": "permission denied: the file could not be read",
            },
            "counts": {"cat": 2, "dog": 2},
        }
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755)
        shutil.rmtree(base)


def _deep_folder(root: Path, total: int) -> str:
    """Nested folders whose path is over ``total`` characters, made relative to a folder fd."""
    fd = os.open(root, os.O_RDONLY)
    parts = []
    try:
        while len(str(root)) + sum(len(p) + 1 for p in parts) < total:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, parts = new, [*parts, name]
        with os.fdopen(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write(png(4))
    finally:
        os.close(fd)
    return "/".join(parts)


def test_a_path_too_long_for_the_system_is_listed_with_that_reason(tmp_path) -> None:
    src = write(tmp_path / "src", images("", {"cat": 2, "dog": 2}))
    deep = _deep_folder(src / "cat", os.pathconf("/", "PC_PATH_MAX") + 100)
    manifest = import_folder(src, tmp_path / "d")
    assert manifest.counts() == {"cat": 2, "dog": 2}
    (skip,) = manifest.skipped
    assert skip.reason == "path too long for the operating system"
    assert skip.source.startswith("cat/" + deep[:400]) and skip.source.endswith("/")


def test_names_too_long_for_a_disk_in_a_zip_are_imported_not_lost(tmp_path) -> None:
    long_class, long_dir = "c" * 300, "/".join(["x" * 250] * 20)  # 5,000 characters
    files = {**images(long_class, {"p": 2}), **images("", {"dog": 2})}
    files = {k.replace("/p/", "/"): v for k, v in files.items()}
    files[f"dog/{long_dir}/deep.png"] = png(5)
    manifest = via_zip(tmp_path, files)
    assert manifest.counts() == {long_class: 2, "dog": 3} and manifest.skipped == []


def test_broken_links_link_loops_and_special_files_are_listed(tmp_path) -> None:
    src = write(tmp_path / "src", images("", {"cat": 2, "dog": 2}))
    (src / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (src / "cat" / "self.png").symlink_to(src / "cat" / "self.png")
    (src / "dog" / "up").symlink_to(src, target_is_directory=True)
    os.mkfifo(src / "dog" / "pipe.png")
    manifest = import_folder(src, tmp_path / "d")
    assert manifest.counts() == {"cat": 2, "dog": 2}
    assert reasons(manifest) == {
        "cat/gone.png": "broken link, or the file vanished: what it points to does not exist",
        "cat/self.png": "link loop: the link leads back to itself",
        "dog/up/": "a link to the folder '.', which is already included",
        "dog/pipe.png": "not a regular file (a device, pipe or socket)",
    }


# --------------------------------------------------- item 7: pictures people really have


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _flat(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".heic", "HEIF"), (".HEIF", "HEIF"), (".avif", "AVIF")]
)
def test_heic_heif_and_avif_photos_are_imported_with_their_size_and_colours(
    tmp_path, way, suffix, fmt
) -> None:
    colours = {"red": (220, 30, 30), "blue": (30, 40, 220)}
    files = {
        f"{label}/{i}{suffix}": _encode(_flat(c, (40 + i, 30)), fmt, quality=95)
        for label, c in colours.items()
        for i in range(2)
    }
    manifest = way(tmp_path, files)
    assert manifest.skipped == [] and manifest.counts() == {"blue": 2, "red": 2}
    for item in manifest.items:
        assert (item.width, item.height) == (40 + int(item.source[-len(suffix) - 1]), 30)
        with Image.open(manifest.root / item.file) as img:
            got = np.asarray(img.convert("RGB"), dtype=float).mean(axis=(0, 1))
        assert np.abs(got - colours[item.label]).max() < 12, (item.source, got)


@pytest.mark.parametrize(
    "name", ["photo.jpg.download", "IMG_0001", "scan.jfif", "pic.jpe", "x.image", "y.PNG_large"]
)
def test_a_picture_whose_name_does_not_say_so_is_imported(tmp_path, way, name) -> None:
    files = images("", {"cat": 2, "dog": 2})
    files[f"cat/{name}"] = _encode(noise(3, (20, 20)), "JPEG")
    manifest = way(tmp_path, files)
    assert manifest.skipped == [] and manifest.counts() == {"cat": 3, "dog": 2}


@pytest.mark.parametrize(("name", "data"), [("notes.xyz", b"hello"), ("README", b"hi")])
def test_a_file_that_is_not_a_picture_says_its_type_is_not_supported(tmp_path, name, data):
    files = {**images("", {"cat": 2, "dog": 2}), f"cat/{name}": data}
    reason = reasons(via_folder(tmp_path, files))[f"cat/{name}"]
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    suffix = Path(name).suffix
    assert reason == (
        f"file type '{suffix}' is not supported (supported: {kinds})"
        if suffix
        else f"not an image file (its name has no file type; supported: {kinds})"
    )
    assert ".heic" in kinds and ".avif" in kinds


def _big_profile() -> bytes:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return srgb + bytes(np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8))


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")])
def test_an_image_with_a_very_large_colour_profile_is_imported(tmp_path, suffix, fmt) -> None:
    files = images("", {"cat": 2, "dog": 2})
    files[f"cat/profiled{suffix}"] = _encode(_flat((10, 200, 30)), fmt, icc_profile=_big_profile())
    manifest = via_folder(tmp_path, files)
    assert manifest.skipped == [] and manifest.counts() == {"cat": 3, "dog": 2}
    item = next(i for i in manifest.items if i.source.endswith(suffix) and "profiled" in i.source)
    with Image.open(manifest.root / item.file) as img:
        assert "icc_profile" not in img.info  # ignored: pixels used as stored
        assert np.abs(np.asarray(img, float).mean((0, 1)) - (10, 200, 30)).max() < 6


# ---------------------------------------------------------------- item 9: labels


def test_class_names_differing_only_in_case_or_width_are_kept_apart_with_a_warning(
    tmp_path,
) -> None:
    files = images("", {"Cat": 2, "cat": 2, "ｄｏｇ": 2, "dog": 2})  # full-width 'ｄｏｇ'
    manifest = via_zip(tmp_path, files)
    assert manifest.counts() == {"Cat": 2, "cat": 2, "dog": 2, "ｄｏｇ": 2}
    (said,) = [w for w in manifest.warnings if "differ only in capital letters" in w.text]
    assert said.kind == "class_names" and set(said.classes) == {"Cat", "cat", "dog", "ｄｏｇ"}
    warning = said.text
    assert "'Cat' and 'cat'" in warning and "'dog' and 'ｄｏｇ'" in warning
    assert "kept as separate classes" in warning
    folders = {i.file.split("/")[1] for i in manifest.items}
    assert len({f.casefold() for f in folders}) == 4  # never one folder on a Mac/Windows disk


def test_one_name_in_two_unicode_forms_is_one_class_and_said_so(tmp_path) -> None:
    nfd = unicodedata.normalize("NFD", "café")
    files = {
        **images("", {"café": 2, "tea": 2}),
        **{f"{nfd}/x{i}.png": png(70 + i) for i in range(2)},
    }
    manifest = via_zip(tmp_path, files)
    assert manifest.counts() == {"café": 4, "tea": 2}
    assert any("'café'" in w.text and "Unicode forms" in w.text for w in manifest.warnings)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("cat\u200b", "cat (2)"),  # zero-width space: would look like 'cat'
        ("\u202egnp.exe", "gnp.exe"),  # right-to-left override
        ("bell\x07", "bell"),
        ("tab\tname", "tab name"),
        ("   ", "unnamed class"),
        ("\u2060\ufeff", "unnamed class"),
    ],
    ids=["zero-width", "bidi", "control", "tab", "blank", "invisible-only"],
)
def test_odd_class_names_get_a_clean_name_and_a_warning(tmp_path, raw, shown) -> None:
    files = {**images("", {"cat": 2}), **{f"{raw}/{i}.png": png(80 + i) for i in range(2)}}
    manifest = via_zip(tmp_path, files)
    assert manifest.counts() == {"cat": 2, shown: 2}
    text = " ".join(w.text for w in manifest.warnings)
    assert f"'{shown}'" in text and datalayout.shown_raw(raw) in text
    assert any(w.kind == "class_names" and shown in w.classes for w in manifest.warnings)


def test_a_thousand_tiny_classes_give_one_warning(tmp_path) -> None:
    files = {f"c{k:04d}/{i}.png": png(k * 3 + i) for k in range(1000) for i in range(2)}
    manifest = via_upload(tmp_path, files)
    assert len(manifest.classes) == 1000
    assert len(manifest.warnings) == 1
    assert manifest.warnings[0].kind == "few_images" and len(manifest.warnings[0].classes) == 1000
    assert manifest.warnings[0].text == (
        "1,000 classes have fewer than 10 images: 'c0000' (2), 'c0001' (2), 'c0002' (2) and "
        "997 more. At least 10 per class are recommended."
    )


def test_skipped_entries_are_plain_data_in_the_manifest(tmp_path) -> None:
    files = {**images("", {"cat": 2, "dog": 2}), "cat/.x/a.png": png(1)}
    manifest = via_folder(tmp_path, files)
    again = DatasetManifest.load(manifest.root)
    assert again.skipped == [SkippedFile("cat/.x/", "hidden folder '.x' (1 file) ignored")]
