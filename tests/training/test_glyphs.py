"""The cjk-glyphs image source: characters, faces, the split by design family, rendering and the cache."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from score_codec.errors import InputError
from score_codec.training import glyphs
from score_codec.training.glyphs import (GLYPH_FONT_PACKAGES, build_glyph_set, candidate_characters, design_of,
                                         load_glyph_set, parse_glyph_spec)

CLASSES = 12


@pytest.fixture(scope="module")
def gset(tmp_path_factory):
    if not glyphs.discover_faces():
        pytest.skip("no CJK fonts installed (apt-get install " + " ".join(GLYPH_FONT_PACKAGES[:3]) + " ...)")
    return load_glyph_set(classes=CLASSES, size=24, cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_candidates_are_in_both_character_sets():
    chars = candidate_characters()
    assert len(chars) == len(set(chars)) == 2370
    for ch in chars:
        b = ch.encode("gb2312")
        assert 0xB0 <= b[0] <= 0xD7            # GB2312 level 1 rows 16-55
        j = ch.encode("euc_jp")
        assert len(j) == 2 and j[0] >= 0xA1     # a two-byte JIS X 0208 code


def test_every_used_face_covers_every_character(gset):
    from fontTools.ttLib import TTFont

    assert len(gset.chars) == CLASSES
    for f in gset.faces:
        font = TTFont(f.path, fontNumber=f.index, lazy=True)
        cmap = font.getBestCmap()
        assert all(ord(c) in cmap for c in gset.chars), f.name


def test_split_is_by_design_family(gset):
    train = {f.design for f, s in zip(gset.faces, gset.split_of_face) if s == "train"}
    test = {f.design for f, s in zip(gset.faces, gset.split_of_face) if s == "test"}
    assert train and test and not (train & test)
    assert gset.split_of_face.count("test") >= 0.2 * len(gset.faces)
    # every face contributes one image of every class
    x, y = gset.split("test")
    assert np.array_equal(np.bincount(y, minlength=CLASSES), np.full(CLASSES, gset.split_of_face.count("test")))


def test_derived_designs_share_a_group():
    assert design_of("/usr/share/fonts/truetype/takao-gothic/TakaoGothic.ttf") == design_of(
        "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf")
    assert design_of("/usr/share/fonts/truetype/arphic/ukai.ttc") == design_of(
        "/usr/share/fonts/truetype/arphic-gkai00mp/gkai00mp.ttf")
    assert design_of("/usr/share/fonts/truetype/arphic/uming.ttc") != design_of("/usr/share/fonts/truetype/arphic/ukai.ttc")
    assert design_of("/usr/share/fonts/truetype/lxgw-wenkai/LXGWWenKai-Bold.ttf") == design_of(
        "/usr/share/fonts/truetype/klee/KleeOne-Regular.ttf")


def test_glyphs_are_inked_and_centred(gset):
    imgs = gset.images[:, 0].astype(np.float64)
    assert imgs.max(axis=(1, 2)).min() >= 64                   # no blank or faint glyph survived
    s = imgs.shape[-1]
    for img in imgs:
        rows, cols = np.flatnonzero(img.max(1) > 0), np.flatnonzero(img.max(0) > 0)
        # bounding-box centre within one pixel of the image centre; a 1-pixel margin is kept
        assert abs((rows[0] + rows[-1]) / 2 - (s - 1) / 2) <= 1.0
        assert abs((cols[0] + cols[-1]) / 2 - (s - 1) / 2) <= 1.0
        assert rows[0] >= 0 and rows[-1] <= s - 1


def test_cache_round_trip_and_checksum(gset, tmp_path):
    a = load_glyph_set(classes=CLASSES, size=24, cache_dir=str(tmp_path))
    assert a.checksum == gset.checksum                         # deterministic render
    files = os.listdir(os.path.join(tmp_path, "glyphs"))
    manifest = json.load(open(os.path.join(tmp_path, "glyphs", [f for f in files if f.endswith(".json")][0])))
    assert manifest["characters"] == "".join(gset.chars) and manifest["sha256"] == gset.checksum
    assert {f["split"] for f in manifest["faces"]} == {"train", "test"}
    assert all(s["reason"] for s in manifest["skipped"])        # every skip names its reason
    b = load_glyph_set(classes=CLASSES, size=24, cache_dir=str(tmp_path))
    assert np.array_equal(a.images, b.images) and b.faces == a.faces
    # a damaged cache is detected by its checksum and rendered again
    npz = os.path.join(tmp_path, "glyphs", [f for f in files if f.endswith(".npz")][0])
    z = dict(np.load(npz))
    z["images"] = z["images"].copy()
    z["images"][0, 0, 0, 0] ^= 0xFF
    np.savez(npz, **z)
    c = load_glyph_set(classes=CLASSES, size=24, cache_dir=str(tmp_path))
    assert c.checksum == gset.checksum


def test_image_source_spec(gset, monkeypatch, tmp_path):
    from score_codec import load_images

    monkeypatch.setenv("SCORE_CACHE", str(tmp_path))
    ds = load_images(f"cjk-glyphs:test:7?classes={CLASSES}&size=24")
    assert len(ds) == 7 and tuple(ds[0][0].shape) == (1, 24, 24) and ds.classes == gset.chars
    assert parse_glyph_spec("cjk-glyphs") == ("train", None, {})
    for bad in ("cjk-glyphs:val", "cjk-glyphs:train:0", "cjk-glyphs?colours=3", "cjk-glyphs?size=x"):
        with pytest.raises(InputError):
            parse_glyph_spec(bad)


def test_missing_fonts_name_the_packages(tmp_path):
    with pytest.raises(InputError, match="fonts-noto-cjk"):
        build_glyph_set(classes=5, dirs=[str(tmp_path)])
