"""Exact properties of crop / flip / mix sampling and replay (score_codec.training.augment)."""
import math

import pytest
import torch

from score_codec.training.augment import (apply_mix, coords_to_box, crop_coords, cutmix_box, hflip, resized_crop,
                                 sample_crop)
from score_codec.errors import InputError


def test_identity_box_returns_image():
    img = torch.rand(3, 17, 23)
    # resizing to the same size with align_corners=False is an exact copy only for square inputs
    sq = torch.rand(2, 19, 19)
    assert torch.equal(resized_crop(sq, (0, 0, 19, 19), 19), sq)
    assert torch.equal(resized_crop(sq, crop_coords((0, 0, 19, 19), 19, 19), 19), sq)
    # a square sub-box at its own size is the slice itself
    assert torch.equal(resized_crop(img, (2, 3, 11, 11), 11), img[:, 2:13, 3:14])


def test_coords_round_trip_all_boxes_up_to_512():
    for H in range(1, 513):
        i = torch.arange(H).repeat_interleave(torch.arange(H, 0, -1))      # top
        h = torch.cat([torch.arange(1, H - t + 1) for t in range(H)])       # every height that fits
        box = torch.stack([i, i, h, h], dim=1)
        got = coords_to_box(crop_coords(box, H, H), H, H)
        assert torch.equal(got, box), H


def test_coords_match_float32_of_python_division():
    H, W = 224, 300
    c = crop_coords((13, 29, 101, 77), H, W)
    assert c.dtype == torch.float32
    assert torch.equal(c, torch.tensor([13 / H, 29 / W, 101 / H, 77 / W], dtype=torch.float32))


def test_sample_crop_fits_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    boxes = [sample_crop(40, 30, generator=g) for _ in range(200)]
    for top, left, h, w in boxes:
        assert 0 < h and 0 < w and top >= 0 and left >= 0 and top + h <= 40 and left + w <= 30
    g2 = torch.Generator().manual_seed(3)
    assert boxes == [sample_crop(40, 30, generator=g2) for _ in range(200)]


def test_sample_crop_fallback_is_centred():
    # a scale no box can satisfy forces the fallback: the full 10x10 image (ratio 1 is inside the range)
    assert sample_crop(10, 10, scale=(2.0, 2.0)) == (0, 0, 10, 10)
    # a very wide image is clamped to ratio 4/3 and centred
    top, left, h, w = sample_crop(10, 100, scale=(2.0, 2.0))
    assert (top, h, w, left) == (0, 10, 13, (100 - 13) // 2)


def test_hflip_mask():
    x = torch.rand(4, 1, 3, 5)
    m = torch.tensor([True, False, True, False])
    y = hflip(x, m)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    assert torch.equal(hflip(hflip(x)), x)


def test_cutmix_identity_perm_is_identity():
    x = torch.rand(6, 3, 16, 16)
    box = cutmix_box(16, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(apply_mix(x, "cutmix", torch.arange(6), 0.3, box), x)
    assert torch.equal(apply_mix(x, "mixup", torch.arange(6), 0.3, None), 0.3 * x + 0.7 * x)


def test_cutmix_uses_unmixed_donors():
    x = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    perm = torch.tensor([1, 2, 0])
    out = apply_mix(x, "cutmix", perm, 0.5, (1, 0, 3, 2))
    for b in range(3):
        assert torch.all(out[b, :, 1:3, 0:2] == perm[b])        # donor's original value
        assert out[b].sum() == b * 12 + perm[b] * 4
    assert torch.equal(x[:, :, 0, 0].flatten(), torch.arange(3.0))   # input untouched


def test_cutmix_box_semantics():
    g = torch.Generator().manual_seed(1)
    for lam in (0.0, 0.25, 0.9, 1.0):
        r0, c0, r1, c1 = cutmix_box(20, lam, g)
        side = int(20 * math.sqrt(1 - lam))
        assert 0 <= r0 <= r1 <= 20 and 0 <= c0 <= c1 <= 20
        assert r1 - r0 <= 2 * (side // 2) and c1 - c0 <= 2 * (side // 2)


def test_bad_box_is_refused():
    with pytest.raises(InputError, match="does not fit"):
        resized_crop(torch.rand(1, 8, 8), (4, 0, 8, 8), 4)
    with pytest.raises(InputError, match="mix type"):
        apply_mix(torch.rand(2, 1, 4, 4), "blend", torch.arange(2))
