import pickle
from collections import namedtuple

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fastresize import BatchFormat, DevicePrefetcher, ResizeCollate

Sample = namedtuple("Sample", ["image", "label"])


class DictImages(Dataset):
    """uint8 NHWC images with a mask, per-image boxes and a caption."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randint(0, 256, (24, 20, 3), generator=g, dtype=torch.uint8),
            "mask": torch.full((24, 20), i % 3, dtype=torch.int64),
            "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]] * (i % 3 + 1)),
            "caption": f"image {i}",
        }


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_tuple_and_bare_samples_stack_contiguous_in_their_dtype(dtype):
    images = [torch.arange(3 * 6 * 5, dtype=dtype).reshape(3, 5, 6).transpose(1, 2) + i for i in range(3)]
    batch, labels = ResizeCollate()([(image, i) for i, image in enumerate(images)])
    assert batch.dtype == dtype and batch.shape == (3, 3, 6, 5) and batch.is_contiguous()
    assert torch.equal(batch, torch.stack(images)) and labels.tolist() == [0, 1, 2]
    assert torch.equal(ResizeCollate()(images), torch.stack(images))  # a bare tensor batch
    named = ResizeCollate()([Sample(image, i) for i, image in enumerate(images)])
    assert type(named) is Sample and torch.equal(named.image, batch)


def test_nhwc_images_stay_nhwc_and_boxes_stay_per_image():
    samples = [DictImages()[i] for i in range(3)]
    with pytest.raises(ValueError, match=r"must be declared with BatchFormat\(boxes_key=...\)"):
        ResizeCollate(format=BatchFormat(layout="NHWC"))(samples)
    batch = ResizeCollate(format=BatchFormat(layout="NHWC", boxes_key="boxes"))(samples)
    assert batch["image"].shape == (3, 24, 20, 3) and batch["image"].is_contiguous()  # the kernel reads NHWC
    assert batch["image"].dtype == torch.uint8
    assert torch.equal(batch["image"][1], samples[1]["image"])
    assert batch["mask"].shape == (3, 24, 20)  # undeclared: collated, untouched
    assert [b.shape[0] for b in batch["boxes"]] == [1, 2, 3]  # declared: one tensor per image
    assert batch["caption"] == ["image 0", "image 1", "image 2"]


def test_layout_none_refuses_nhwc_looking_images():
    nhwc = [torch.zeros(24, 20, 3, dtype=torch.uint8)] * 2
    with pytest.raises(ValueError, match=r"look like NHWC .* Pass layout='NHWC'"):
        ResizeCollate()(nhwc)
    assert ResizeCollate(format=BatchFormat(layout="NCHW"))(nhwc).shape == (2, 24, 20, 3)
    latents = [torch.zeros(4, 64, 64)] * 8
    assert ResizeCollate()(latents).shape == (8, 4, 64, 64)
    gray = [torch.zeros(1, 16, 16, dtype=torch.uint8)] * 2
    assert ResizeCollate()(gray).shape == (2, 1, 16, 16)


def test_split_puts_the_images_where_it_is_told_and_the_wrapped_collate_gets_stand_ins():
    samples = [DictImages()[i] for i in range(2)]
    seen, asked = [], []

    def spy(batch):
        seen.append([s["image"] for s in batch])
        return torch.utils.data.default_collate(batch)

    buffer = torch.zeros(2 * 24 * 20 * 3, dtype=torch.uint8)

    def allocate(nbytes, count, ragged):
        asked.append((nbytes, count, ragged))
        return buffer

    parts = ResizeCollate(spy, format=BatchFormat(layout="NHWC", boxes_key="boxes")).split(samples)
    assert seen == [[samples[0]["image"], samples[1]["image"]]]  # a custom collate sees the images
    parts = ResizeCollate(format=BatchFormat(layout="NHWC", boxes_key="boxes")).split(samples, allocate)
    assert asked == [(2 * 24 * 20 * 3, 2, False)] and parts.fields["images"].data_ptr() == buffer.data_ptr()
    assert torch.equal(parts.fields["images"], torch.stack([s["image"] for s in samples]))
    assert (
        parts.rest["image"] is None and parts.rest["boxes"] is None and parts.rest["caption"] == ["image 0", "image 1"]
    )
    assert torch.equal(parts.join()["image"], parts.fields["images"])


def test_images_of_different_sizes_make_a_ragged_batch():
    samples = [{"image": torch.full((5 + i, 4 + 2 * i, 3), i, dtype=torch.uint8), "mask": torch.zeros(5 + i, 4 + 2 * i)}
               for i in range(3)]  # fmt: skip
    batch = ResizeCollate(format=BatchFormat(layout="NHWC", mask_key="mask"))(samples)
    images = batch["image"]
    assert images.sizes == [(5, 4), (6, 6), (7, 8)] and images.layout == "NHWC"
    assert all(torch.equal(images.image(i), samples[i]["image"].permute(2, 0, 1)) for i in range(3))
    assert [tuple(m.shape) for m in batch["mask"]] == [(5, 4), (6, 6), (7, 8)]  # masks stay per image
    with pytest.raises(ValueError, match=r"look like NHWC"):
        ResizeCollate()([s["image"] for s in samples])
    with pytest.raises(ValueError, match=r"has 1 channels, .* shares its channel count"):
        ResizeCollate()([torch.zeros(3, 8, 8), torch.zeros(1, 9, 8)])
    with pytest.raises(ValueError, match=r"wraps a custom collate_fn, which would have to stack them"):
        ResizeCollate(torch.utils.data.default_collate.__call__)([torch.zeros(3, 8, 8), torch.zeros(3, 9, 8)])


def test_a_full_dev_shm_is_named_with_the_fix(monkeypatch):
    def full(batch):
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2>: Success (0)")

    monkeypatch.setattr("fastresize.collate.default_collate", full)
    with pytest.raises(RuntimeError, match=r"/dev/shm, .* is full: give it room \(`docker run --shm-size=8g`"):
        ResizeCollate()([torch.zeros(3, 8, 8)] * 2)


def test_is_picklable_for_spawn():
    collate = pickle.loads(pickle.dumps(ResizeCollate(format=BatchFormat(layout="NHWC", boxes_key="boxes"))))
    assert collate([DictImages()[0]])["image"].shape == (1, 24, 20, 3)
    assert repr(collate) == "ResizeCollate(default_collate, format=BatchFormat(layout='NHWC', boxes_key='boxes'))"


def test_unbatched_loader_is_named():
    data = TensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4))
    loader = DataLoader(data, batch_size=None, collate_fn=ResizeCollate())
    with pytest.raises(TypeError, match=r"got tuple: a DataLoader with batch_size=None .* set batch_size=\.\.\."):
        next(iter(loader))
    with pytest.raises(ValueError, match=r"the DataLoader has batch_size=None, .* set batch_size=\.\.\."):
        DevicePrefetcher(loader, "cpu")


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"collate_fn must be callable or None, got 3"):
        ResizeCollate(3)
    with pytest.raises(TypeError, match=r"format must be a BatchFormat or None, got str; build one with"):
        ResizeCollate(format="NHWC")
    with pytest.raises(ValueError, match=r"ResizeCollate got an empty list of samples"):
        ResizeCollate()([])
    with pytest.raises(ValueError, match=r"images must be a 4-D batch \(B, C, H, W\), got a 2-D shape \(2, 5\)"):
        ResizeCollate()([torch.zeros(5), torch.zeros(5)])
    with pytest.raises(ValueError, match=r"got a 3-D shape \(2, 8, 8\): .*grayscale batch \(B, H, W\) needs"):
        ResizeCollate()([torch.zeros(8, 8), torch.zeros(8, 8)])
    with pytest.raises(ValueError, match=r"got a 5-D shape \(2, 4, 3, 8, 8\): fold the extra dimension"):
        ResizeCollate()([torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)])
    with pytest.raises(ValueError, match=r"must share a shape, or be 3-D images .* got shapes \[\(8, 8\), \(9, 8\)\]"):
        ResizeCollate()([torch.zeros(8, 8), torch.zeros(9, 8)])
    with pytest.raises(TypeError, match=r"the images must collate into a torch.Tensor, got list"):
        ResizeCollate()([([[1, 2]], 0), ([[3, 4]], 1)])
    with pytest.raises(ValueError, match=r"the batch has no entry 'img' for the images"):
        ResizeCollate(format=BatchFormat(image_key="img"))([{"image": torch.zeros(3, 8, 8)}])


def test_too_many_open_files_is_not_called_a_full_dev_shm():
    from fastresize.collate import shm_error

    assert shm_error(RuntimeError("unable to write to file </torch_1>: No space left on device (28)"))
    assert not shm_error(RuntimeError("unable to open shared memory object </torch_1> in read-write mode: "
                                      "Too many open files (24)"))  # fmt: skip


def test_images_of_one_shape_and_mixed_dtypes_are_promoted_as_torch_does():
    samples = [torch.zeros(3, 4, 4, dtype=torch.uint8), torch.ones(3, 4, 4)]
    ring = pytest.importorskip("fastresize.ring")
    parts = ring.RingCollate(ResizeCollate(), ring.BatchRing(workers=0, depth=1, batch_size=2)).collate.split(
        samples, lambda nbytes, count, ragged: torch.empty(nbytes, dtype=torch.uint8)
    )
    assert parts.fields["images"].dtype == torch.float32 and torch.equal(
        parts.fields["images"], ResizeCollate()(samples)
    )


@pytest.mark.cuda
def test_gpu_resident_images_are_collated_on_their_device():
    dense = [torch.zeros(3, 8, 8, device="cuda"), torch.ones(3, 8, 8, device="cuda")]
    ragged = [torch.zeros(3, 8, 8, device="cuda"), torch.ones(3, 6, 9, device="cuda")]
    slot = torch.empty(4096, dtype=torch.uint8)
    parts = ResizeCollate().split(dense, lambda nbytes, count, is_ragged: slot)
    assert parts.fields["images"].is_cuda  # not stacked into the CPU slot
    assert ResizeCollate()(ragged).data.is_cuda
