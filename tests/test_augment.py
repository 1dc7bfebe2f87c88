import pytest
import torch

from ssgan.augment import random_translate


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image (C, H, W) moved by (dy, dx) with zeros filled in, by slicing."""
    out = torch.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
        image[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    return out


@pytest.mark.parametrize("shape,max_shift", [((64, 3, 9, 7), 2), ((40, 1, 32, 32), 3)])
def test_random_translate_shifts_each_image_within_range(shape, max_shift):
    images = torch.randint(1, 256, shape, dtype=torch.uint8)  # no zeros: fills are visible
    out = random_translate(images, max_shift, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    seen = set()
    for image, result in zip(images, out):
        matches = [(dy, dx) for dy in range(-max_shift, max_shift + 1)
                   for dx in range(-max_shift, max_shift + 1)
                   if torch.equal(result, shifted(image, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5  # per-image shifts, not one shift for the batch
    same = random_translate(images, max_shift, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert random_translate(images, 0) is images
    with pytest.raises(ValueError, match="--augment-shift"):
        random_translate(images, -1)


def test_the_loss_heads_entropy_leaves_the_fake_column_out():
    """The entropy term (Bad GAN's) is over the real classes only."""
    import ssgan.kernels as K
    k = 10
    uniform = torch.randn(5, 1).expand(5, k + 1).clone()
    uniform[:, k] = 100.0  # the fake logit is left out
    logits = torch.cat([uniform, torch.randn(3, k + 1)])
    out = K.gan_loss_head(logits, torch.zeros(5, dtype=torch.long),
                          torch.zeros(5, dtype=torch.bool), segments=(5, 3), extra_class=True)
    assert out[3].item() == pytest.approx(torch.log(torch.tensor(float(k))).item(), rel=1e-5)
