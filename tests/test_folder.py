import io
import pickle
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastresize import folder
from fastresize.folder import UNLABELLED, ImageFolder, find_images, read_image


def _pixels(height, width, seed=0):
    """A colour gradient with a rectangle: structure a JPEG encodes as it encodes photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    a, b = rng.uniform(0.2, 1.0, (2, 3))
    image = (a * (x / width)[..., None] + b * (y / height)[..., None]) * 180
    top, left = rng.integers(0, height // 2 + 1), rng.integers(0, width // 2 + 1)
    image[top : top + height // 3, left : left + width // 3] = rng.uniform(0, 255, 3)
    return image.clip(0, 255).astype(np.uint8)


def _jpeg_bytes(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    """root/cat: a JPEG, a PNG, a greyscale JPEG in a subfolder, an upper-case suffix, a text file;
    root/dog: RGBA, palette and greyscale PNGs."""
    cat, dog = tmp_path / "cat", tmp_path / "dog"
    (cat / "sub").mkdir(parents=True)
    dog.mkdir()
    Image.fromarray(_pixels(30, 40, 1)).save(cat / "a.jpg", quality=90)
    Image.fromarray(_pixels(21, 17, 2)).save(cat / "b.png")
    Image.fromarray(_pixels(25, 33, 3)).convert("L").save(cat / "sub" / "c.jpeg", quality=90)
    Image.fromarray(_pixels(8, 9, 4)).save(cat / "D.JPG", quality=90)
    (cat / "notes.txt").write_text("not an image")
    rgba = np.dstack([_pixels(12, 14, 5), np.full((12, 14), 77, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(dog / "rgba.png")
    Image.fromarray(_pixels(16, 16, 6)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
        dog / "palette.png"
    )
    Image.fromarray(_pixels(10, 11, 7)[..., 0], "L").save(dog / "grey.png")
    return tmp_path


def test_class_folders_as_torchvision(tree):
    dataset = ImageFolder(tree)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.class_to_idx == {"cat": 0, "dog": 1}
    names = [dataset.path(i).relative_to(tree).as_posix() for i in range(len(dataset))]
    # Sorted per folder (upper case first, byte order), subfolders after the folder's files; notes.txt ignored.
    assert names == [
        "cat/D.JPG",
        "cat/a.jpg",
        "cat/b.png",
        "cat/sub/c.jpeg",
        "dog/grey.png",
        "dog/palette.png",
        "dog/rgba.png",
    ]
    assert dataset.targets == [0, 0, 0, 0, 1, 1, 1]
    assert len(dataset) == 7
    assert repr(dataset) == f"ImageFolder(root={str(tree)!r}, 7 images, 2 classes, on_error='raise')"


def test_samples_are_uint8_hwc_rgb_at_the_files_size(tree):
    dataset = ImageFolder(tree)
    expected_sizes = [(8, 9), (30, 40), (21, 17), (25, 33), (10, 11), (16, 16), (12, 14)]
    for i, size in enumerate(expected_sizes):
        image, label = dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (*size, 3)
        assert type(label) is int and label == dataset.targets[i]
    png, _ = dataset[2]
    assert torch.equal(png, torch.from_numpy(_pixels(21, 17, 2)))  # lossless: the very pixels
    grey, _ = dataset[4]
    assert torch.equal(grey, torch.from_numpy(_pixels(10, 11, 7)[..., 0]).unsqueeze(-1).expand(10, 11, 3))
    rgba, _ = dataset[6]
    assert torch.equal(rgba, torch.from_numpy(_pixels(12, 14, 5)))  # alpha dropped, not composited
    palette, _ = dataset[5]
    with Image.open(dataset.path(5)) as opened:
        assert torch.equal(palette, torch.from_numpy(np.array(opened.convert("RGB"))))
    grey_jpeg, _ = dataset[3]
    assert torch.equal(grey_jpeg[..., 0], grey_jpeg[..., 1]) and torch.equal(grey_jpeg[..., 0], grey_jpeg[..., 2])
    assert dataset[-1][0].shape == (12, 14, 3)


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {}),  # 4:2:0 chroma, Pillow's default
        ("RGB", {"subsampling": 0}),  # 4:4:4
        ("RGB", {"progressive": True}),
        ("L", {}),
    ],
)
@pytest.mark.parametrize("size", [(37, 53), (64, 48), (1, 1)])
def test_kornia_rs_and_pillow_give_identical_pixels(mode, options, size):
    data = _jpeg_bytes(Image.fromarray(_pixels(*size, seed=size[0])).convert(mode), **options)
    fast = folder._decode_kornia(data)
    assert fast is not None  # decoded by kornia-rs, not handed to Pillow
    assert torch.equal(fast, folder._decode_pillow(data))


def test_jpeg_kornia_rs_refuses_goes_to_pillow(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_pixels(20, 24)).convert("CMYK").save(path, quality=90)
    assert folder._decode_kornia(path.read_bytes()) is None
    with Image.open(path) as opened:
        assert torch.equal(read_image(path), torch.from_numpy(np.array(opened.convert("RGB"))))


def test_format_is_read_from_the_bytes_not_the_name(tmp_path, monkeypatch):
    jpeg, png = tmp_path / "really_a_jpeg.png", tmp_path / "really_a_png.jpg"
    jpeg.write_bytes(_jpeg_bytes(Image.fromarray(_pixels(20, 24))))
    Image.fromarray(_pixels(20, 24)).save(png, format="PNG")
    assert torch.equal(read_image(png), torch.from_numpy(_pixels(20, 24)))
    expected = read_image(jpeg)
    monkeypatch.setattr(folder, "_decode_pillow", lambda data: pytest.fail("a JPEG went to Pillow"))
    assert torch.equal(read_image(jpeg), expected)


def test_without_kornia_rs_jpeg_goes_to_pillow(tree, monkeypatch):
    fast = ImageFolder(tree)[1][0]
    monkeypatch.setattr(folder, "_jpeg_decoder", lambda: None)
    assert torch.equal(ImageFolder(tree)[1][0], fast)


def test_without_pillow_other_formats_name_the_install(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    dataset = ImageFolder(tree, on_error="skip")
    assert dataset[1][0].shape == (30, 40, 3)  # JPEG: kornia-rs needs no Pillow
    with pytest.raises(ImportError, match=re.escape('needs Pillow: pip install "fastresize[data]"')):
        dataset[2]
    assert dataset.skipped == 0  # a missing dependency is not a bad file


def test_plain_list_of_files(tree):
    files = ["dog/grey.png", tree / "cat" / "a.jpg"]
    dataset = ImageFolder(tree, files=files)
    assert dataset.classes == [] and dataset.class_to_idx == {}
    assert dataset.targets == [UNLABELLED, UNLABELLED] == [-1, -1]
    assert [dataset.path(i) for i in range(2)] == [tree / "dog" / "grey.png", tree / "cat" / "a.jpg"]
    image, label = dataset[1]
    assert image.shape == (30, 40, 3) and label == -1
    without_root = ImageFolder(files=find_images(tree / "dog"))
    assert len(without_root) == 3 and without_root[0][0].shape == (10, 11, 3)
    assert repr(without_root) == "ImageFolder(3 images, 0 classes, on_error='raise')"


def test_find_images(tree):
    found = find_images(tree)
    assert [p.relative_to(tree).as_posix() for p in found][:4] == [
        "cat/D.JPG",
        "cat/a.jpg",
        "cat/b.png",
        "cat/sub/c.jpeg",
    ]
    assert [p.name for p in find_images(tree, extensions=(".PNG",))] == ["b.png", "grey.png", "palette.png", "rgba.png"]


def _corrupt(tmp_path):
    """Five files; index 1 is a truncated JPEG and index 4 is not an image."""
    root = tmp_path / "x"
    root.mkdir()
    for i in range(5):
        Image.fromarray(_pixels(10 + i, 12, i)).save(root / f"{i}.jpg", quality=90)
    data = (root / "1.jpg").read_bytes()
    (root / "1.jpg").write_bytes(data[: len(data) // 2])
    (root / "4.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (None, "missing.jpg"),
        (b"", "empty.jpg"),
        (b"\xff\xd8\xff\xe0 not really", "bad.jpg"),
        (b"\x89PNG\r\n", "bad.png"),
    ],
)
def test_unreadable_file_raises_naming_it(tmp_path, content, name):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OSError, match=rf"cannot read the image '{re.escape(str(path))}': .*on_error='skip'"):
        ImageFolder(files=[path])[0]


def test_truncated_jpeg_raises(tmp_path):
    dataset = ImageFolder(files=find_images(_corrupt(tmp_path)))
    assert dataset[0][0].shape == (10, 12, 3)
    with pytest.raises(OSError, match=r"cannot read the image '.*1\.jpg'"):
        dataset[1]


def test_skip_returns_the_next_readable_file_and_counts(tmp_path):
    dataset = ImageFolder(files=find_images(_corrupt(tmp_path)), on_error="skip")
    with pytest.warns(
        UserWarning, match=r"skipped the unreadable image .*1\.jpg.*: sample 1 is the next readable file"
    ):
        image, _ = dataset[1]
    assert torch.equal(image, dataset[2][0])
    assert dataset.skipped == 1 and [p.name for p in dataset.skipped_files] == ["1.jpg"]
    with pytest.warns(UserWarning, match=r"4\.jpg"):
        assert torch.equal(dataset[4][0], dataset[0][0])  # the last wraps around to the first
    assert dataset.skipped == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a marked file is not read, nor reported, again
        assert torch.equal(dataset[1][0], dataset[2][0])
    assert dataset.skipped == 2


def test_skip_with_no_readable_file_raises(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    dataset = ImageFolder(files=[tmp_path / "a.jpg"], on_error="skip")
    with (
        pytest.warns(UserWarning),
        pytest.raises(OSError, match=r"none of the 1 files of this ImageFolder can be read"),
    ):
        dataset[0]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_share_the_skip_count_and_pickle(tmp_path, context):
    dataset = ImageFolder(files=find_images(_corrupt(tmp_path)), on_error="skip")
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context=context)
    labels = [label for _, label in loader]
    assert labels == [-1] * 5
    assert dataset.skipped == 2  # counted in the workers, seen here
    assert [p.name for p in dataset.skipped_files] == ["1.jpg", "4.jpg"]
    copy = pickle.loads(pickle.dumps(ImageFolder(files=find_images(tmp_path / "x"))))
    assert torch.equal(copy[0][0], dataset[0][0])


def test_worker_error_names_the_file(tmp_path):
    dataset = ImageFolder(files=find_images(_corrupt(tmp_path)))
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(OSError, match=r"cannot read the image '.*1\.jpg'"):
        list(loader)


def test_workers_deliver_the_same_samples(tree):
    dataset = ImageFolder(tree)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    for i, (image, label) in enumerate(loader):
        expected, expected_label = dataset[i]
        assert torch.equal(image, expected) and int(label) == expected_label


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda root: ImageFolder(), ValueError, r"pass root \(a folder of class folders\) or files"),
        (
            lambda root: ImageFolder(root / "cat" / "a.jpg"),
            ValueError,
            r"root must be a folder of class folders, got '.*a\.jpg'",
        ),
        (
            lambda root: ImageFolder(root / "cat" / "sub"),
            ValueError,
            r"has no class folder .* pass files=find_images\(root\)",
        ),
        (
            lambda root: ImageFolder(root, extensions=(".gif",)),
            ValueError,
            r"the class folder '.*cat' holds no file ending in \.gif",
        ),
        (lambda root: ImageFolder(files=[]), ValueError, r"files is empty; pass at least one image file"),
        (
            lambda root: ImageFolder(files="a.jpg"),
            TypeError,
            r"files must be a list of paths, got str; wrap one file as \[file\]",
        ),
        (
            lambda root: ImageFolder(files=["a.jpg", 3]),
            TypeError,
            r"files\[1\] must be a path \(str or os.PathLike\), got int",
        ),
        (lambda root: ImageFolder(3), TypeError, r"root must be a path \(str or os.PathLike\), got int"),
        (
            lambda root: ImageFolder(root, extensions="jpg"),
            ValueError,
            r"extensions must be a non-empty tuple of suffixes",
        ),
        (
            lambda root: ImageFolder(root, extensions=()),
            ValueError,
            r"extensions must be a non-empty tuple of suffixes",
        ),
        (lambda root: ImageFolder(root, extensions=("jpg",)), ValueError, r"suffixes that start with '\.'.*got 'jpg'"),
        (
            lambda root: ImageFolder(root, on_error="ignore"),
            ValueError,
            r"on_error must be one of 'raise', 'skip'; got 'ignore'",
        ),
        (lambda root: ImageFolder(root)[7], IndexError, r"index 7 is out of range for an ImageFolder of 7 images"),
        (lambda root: ImageFolder(root)[-8], IndexError, r"index -8 is out of range"),
        (lambda root: ImageFolder(root)[1.0], TypeError, r"index must be an int, got 1.0"),
        (lambda root: find_images(root / "nowhere"), ValueError, r"root must be a folder, got '.*nowhere'"),
    ],
)
def test_bad_arguments(tree, make, error, match):
    with pytest.raises(error, match=match):
        make(tree)


def test_the_benchmark_folder_reads_back(tmp_path):
    from benchmarks.images import make_jpeg_folder

    paths = make_jpeg_folder(tmp_path / "a", count=6, low=20, high=40, seed=3, classes=2)
    again = make_jpeg_folder(tmp_path / "b", count=6, low=20, high=40, seed=3, classes=2)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]  # deterministic
    dataset = ImageFolder(tmp_path / "a")
    assert [dataset.path(i) for i in range(len(dataset))] == paths
    assert dataset.classes == ["class_0", "class_1"] and dataset.targets == [0, 0, 0, 1, 1, 1]
    sizes = {tuple(dataset[i][0].shape) for i in range(len(dataset))}
    assert all(20 <= h <= 40 and 20 <= w <= 40 and c == 3 for h, w, c in sizes) and len(sizes) > 1
    with pytest.raises(ValueError, match=r"need count >= 1, classes >= 1, 8 <= low <= high .* low=50, high=40"):
        make_jpeg_folder(tmp_path / "c", low=50, high=40)


def test_a_passing_error_is_not_taken_for_an_unreadable_file(tmp_path, monkeypatch):
    import errno

    files = find_images(_corrupt(tmp_path))
    dataset = ImageFolder(files=files, on_error="skip")
    read = Path.read_bytes

    def busy(self):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_bytes", busy)
    with pytest.raises(OSError, match=r"Too many open files"):
        dataset[0]
    monkeypatch.setattr(Path, "read_bytes", read)
    assert dataset.skipped == 0 and dataset[0][0].dtype == torch.uint8


def test_sixteen_bit_greyscale_keeps_its_top_eight_bits(tmp_path):
    from PIL import Image

    values = np.linspace(0, 65535, 2048).reshape(32, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "depth.png")
    image = read_image(tmp_path / "depth.png")
    assert image.shape == (32, 64, 3) and torch.equal(image[..., 0], torch.from_numpy((values >> 8).astype(np.uint8)))
