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


def test_images_given_stacked_stay_out_of_the_wrapped_collate():
    samples = [DictImages()[i] for i in range(2)]
    stacked = torch.stack([s["image"] for s in samples])
    seen = []

    def spy(batch):
        seen.append([s["image"] for s in batch])
        return torch.utils.data.default_collate(batch)

    collate = ResizeCollate(spy, format=BatchFormat(layout="NHWC", boxes_key="boxes"))
    batch = collate.collate(samples, images=stacked)
    assert batch["image"] is stacked and seen == [[0, 0]]  # the wrapped collate got stand-ins


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
    with pytest.raises(ValueError, match=r"must share a shape to be stacked, got shapes \[\(3, 8, 8\), \(3, 9, 8\)\]"):
        ResizeCollate()([torch.zeros(3, 8, 8), torch.zeros(3, 9, 8)])
    with pytest.raises(TypeError, match=r"the images must collate into a torch.Tensor, got list"):
        ResizeCollate()([([[1, 2]], 0), ([[3, 4]], 1)])
    with pytest.raises(ValueError, match=r"the batch has no entry 'img' for the images"):
        ResizeCollate(format=BatchFormat(image_key="img"))([{"image": torch.zeros(3, 8, 8)}])
