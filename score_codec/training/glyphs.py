"""A many-class real image set: CJK characters rendered from the fonts Debian ships (``cjk-glyphs``).

One class per character, one image per (font face, character).  Characters are a seeded choice of
``classes`` from those in both GB2312 level 1 and JIS X 0208 that every face used covers; faces are
every installed face that covers them and renders them.  The split is by *type design*: test images
come only from design families the training split never saw, so test top-1 measures generalisation
to unseen designs, not memorised glyph shapes.

Rendering: each glyph is drawn at twice the output size, cropped to its ink bounding box, scaled to fit
``size - 2 * margin`` pixels (aspect kept), centred, and downsampled with a box filter; grayscale uint8,
white ink on black.  The set is rendered once and cached as ``.npz`` plus a JSON manifest (characters,
faces with files and design groups, the split, skipped faces with reasons, a SHA-256 of the pixels).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

__all__ = ["GLYPH_FONT_PACKAGES", "FONT_DIRS", "candidate_characters", "Face", "discover_faces", "design_of",
           "GlyphSet", "build_glyph_set", "load_glyph_set", "glyph_split", "parse_glyph_spec"]

log = logging.getLogger(__name__)

#: Debian packages of CJK fonts known to install and render (scripts/install-system-deps.sh installs them).
GLYPH_FONT_PACKAGES = (
    "fonts-noto-cjk", "fonts-arphic-ukai", "fonts-arphic-uming", "fonts-arphic-bkai00mp", "fonts-arphic-bsmi00lp",
    "fonts-arphic-gbsn00lp", "fonts-arphic-gkai00mp", "fonts-ipafont", "fonts-ipaexfont", "fonts-hanazono",
    "fonts-wqy-microhei", "fonts-wqy-zenhei", "fonts-takao", "fonts-sawarabi-gothic", "fonts-sawarabi-mincho",
    "fonts-lxgw-wenkai", "fonts-cwtex-fs", "fonts-cwtex-heib", "fonts-cwtex-kai", "fonts-cwtex-ming", "fonts-seto",
    "fonts-kiloji", "fonts-horai-umefont", "fonts-morisawa-bizud-gothic", "fonts-morisawa-bizud-mincho",
    "fonts-klee", "fonts-aoyagi-kouzan-t", "fonts-kouzan-mouhitsu", "fonts-smiley-sans", "fonts-migmix",
    "fonts-motoya-l-cedar", "fonts-motoya-l-maruberi", "fonts-cns11643-kai", "fonts-cns11643-sung",
)
FONT_DIRS = ("/usr/share/fonts",)
FONT_EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc")
CACHE_ENV = "SCORE_CACHE"

#: Derived designs share a group so that they never straddle the split (regex on the path -> group).
#: Anything else is grouped by the font's folder (its Debian package).
_DESIGN_RULES = [
    (r"/(ipafont-gothic|ipaexfont-gothic|takao-gothic|migmix)/", "ipa-gothic"),        # Takao/MigMix derive from IPA
    (r"/(ipafont-mincho|ipaexfont-mincho|takao-mincho)/", "ipa-mincho"),
    (r"/(arphic-bkai00mp|arphic-gkai00mp)/|/ukai\.ttc$", "arphic-kai"),               # UKai derives from KaitiM
    (r"/(arphic-bsmi00lp|arphic-gbsn00lp)/|/uming\.ttc$", "arphic-ming"),             # UMing derives from Mingti
    (r"/(klee|lxgw-wenkai)/", "klee"),                                               # WenKai derives from Klee One
    (r"/(kouzan-mouhitsu|aoyagi-kouzan-t)/", "kouzan"),
    (r"/NotoSansCJK", "source-han-sans"),
    (r"/NotoSerifCJK", "source-han-serif"),
    (r"/dejavu/", "dejavu"),
]


def candidate_characters() -> List[str]:
    """Characters of GB2312 level 1 (rows 16-55) that JIS X 0208 also encodes, in GB2312 order (2,370)."""
    out = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                ch = bytes([hi, lo]).decode("gb2312")
            except UnicodeDecodeError:
                continue
            try:
                b = ch.encode("euc_jp")
            except UnicodeEncodeError:
                continue
            if len(b) == 2 and 0xA1 <= b[0] <= 0xFE and 0xA1 <= b[1] <= 0xFE:  # JIS X 0208, not 0212
                out.append(ch)
    return out


@dataclass
class Face:
    """One font face: ``path`` (real path), ``index`` within a collection, Pillow's (family, style), design group."""

    path: str
    index: int
    family: str
    style: str
    design: str

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"


def design_of(path: str) -> str:
    """The design group of a font file (see ``_DESIGN_RULES``); derived designs share one."""
    for pat, group in _DESIGN_RULES:
        if re.search(pat, path):
            return group
    return os.path.basename(os.path.dirname(path))


def _font_files(dirs: Sequence[str]) -> List[str]:
    seen: Dict[str, str] = {}
    for d in dirs:
        for root, _, files in os.walk(d, followlinks=True):
            for f in sorted(files):
                if f.lower().endswith(FONT_EXTENSIONS):
                    p = os.path.realpath(os.path.join(root, f))
                    if os.path.isfile(p):
                        seen.setdefault(p, p)   # symlinks (fonts-japanese-gothic.ttf) count once
    return sorted(seen)


def discover_faces(dirs: Sequence[str] = FONT_DIRS) -> List[Face]:
    """Every face of every font file under ``dirs``, sorted by (path, index)."""
    from fontTools.ttLib import TTCollection
    from PIL import ImageFont

    faces = []
    for p in _font_files(dirs):
        try:
            n = len(TTCollection(p, lazy=True).fonts) if p.lower().endswith((".ttc", ".otc")) else 1
        except Exception as exc:  # fontTools raises many types on damaged files
            log.info("skip font file %s: unreadable (%s)", p, exc)
            continue
        for i in range(n):
            try:
                family, style = ImageFont.truetype(p, 16, index=i).getname()
            except OSError as exc:
                log.info("skip face %s#%d: FreeType cannot open it (%s)", p, i, exc)
                continue
            faces.append(Face(p, i, family or "?", style or "", design_of(p)))
    return faces


def _coverage(face: Face, chars: Sequence[str]) -> np.ndarray:
    """(len(chars),) bool: the face's cmap maps the character to a glyph (not .notdef)."""
    from fontTools.ttLib import TTFont

    try:
        f = TTFont(face.path, fontNumber=face.index, lazy=True)
        cmap = f.getBestCmap() or {}
        f.close()
    except Exception:  # noqa: BLE001 - a face whose cmap cannot be read covers nothing
        return np.zeros(len(chars), dtype=bool)
    return np.array([ord(c) in cmap for c in chars], dtype=bool)


def _render(font, ch: str, size: int, margin: int) -> Optional[np.ndarray]:
    """One glyph as (size, size) uint8, centred by its ink bounding box; None when it has no ink."""
    from PIL import Image

    mask = font.getmask(ch, mode="L")
    w, h = mask.size
    if w == 0 or h == 0:
        return None
    img = Image.frombytes("L", (w, h), bytes(mask))
    box = img.getbbox()
    if box is None:
        return None
    img = img.crop(box)
    w, h = img.size
    inner = 2 * (size - 2 * margin)
    s = inner / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    canvas = Image.new("L", (2 * size, 2 * size), 0)
    canvas.paste(img.resize((nw, nh), Image.LANCZOS), ((2 * size - nw) // 2, (2 * size - nh) // 2))
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.uint8)


@dataclass
class GlyphSet:
    """A rendered glyph set.  ``images`` (N, 1, S, S) uint8, ``labels`` (N,) int64 class = character index,
    ``face_of`` (N,) int64 index into ``faces``, ``split_of_face`` "train" / "test" per face."""

    images: np.ndarray
    labels: np.ndarray
    face_of: np.ndarray
    chars: List[str]
    faces: List[Face]
    split_of_face: List[str]
    skipped: List[Tuple[str, str]]
    checksum: str

    def split(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the faces in split ``name``, ordered by (face, class)."""
        keep = np.array([self.split_of_face[f] == name for f in self.face_of], dtype=bool)
        return self.images[keep], self.labels[keep]

    def manifest(self) -> Dict:
        return dict(characters="".join(self.chars), num_classes=len(self.chars), size=int(self.images.shape[-1]),
                    faces=[dict(asdict(f), name=f.name, split=s) for f, s in zip(self.faces, self.split_of_face)],
                    skipped=[dict(face=a, reason=b) for a, b in self.skipped], images=int(len(self.images)),
                    sha256=self.checksum)


def _split_designs(faces: List[Face], test_fraction: float, seed: int) -> Dict[str, str]:
    """design -> "train"/"test": whole design groups, a seeded order, until test holds >= the fraction."""
    designs = sorted({f.design for f in faces})
    if len(designs) < 2:
        raise InputError(f"the glyph split needs faces from at least 2 design families, found {designs}; install "
                         f"more of: apt-get install {' '.join(GLYPH_FONT_PACKAGES)}")
    count = {d: sum(f.design == d for f in faces) for d in designs}
    order = [designs[i] for i in np.random.default_rng(seed).permutation(len(designs))]
    out, test = {}, 0
    for d in order:
        # never put the last remaining design into test: the training split must keep one
        if test < test_fraction * len(faces) and len(out) < len(designs) - 1:
            out[d], test = "test", test + count[d]
        else:
            out[d] = "train"
    return out


def build_glyph_set(classes: int = 1000, size: int = 32, seed: int = 0, test_fraction: float = 0.2,
                    margin: int = 1, dirs: Sequence[str] = FONT_DIRS, min_coverage: float = 0.9,
                    progress: bool = False) -> GlyphSet:
    """Render the glyph set (see module docstring); ``classes`` characters, ``size`` x ``size`` pixels."""
    from PIL import ImageFont
    from ..progress import progress_bar

    cand = candidate_characters()
    faces = discover_faces(dirs)
    skipped: List[Tuple[str, str]] = []
    kept, cover = [], []
    for f in faces:
        cov = _coverage(f, cand)
        if cov.mean() < min_coverage:
            skipped.append((f"{f.name} ({f.path}#{f.index})", f"covers {cov.mean():.1%} of the {len(cand)} candidates"))
            continue
        kept.append(f)
        cover.append(cov)
    if not kept:
        raise InputError(f"no installed font covers {min_coverage:.0%} of the GB2312/JIS X 0208 characters; install: "
                         f"apt-get install {' '.join(GLYPH_FONT_PACKAGES)}")
    pool = np.flatnonzero(np.logical_and.reduce(cover))
    if len(pool) < classes:
        raise InputError(f"only {len(pool)} characters are covered by every usable face, {classes} were asked for")
    pick = np.sort(np.random.default_rng(seed).choice(pool, size=classes, replace=False))
    chars = [cand[i] for i in pick]
    images, labels, face_of, used = [], [], [], []
    for f in progress_bar(kept, desc="render glyphs", unit="face", enabled=progress):
        try:
            font = ImageFont.truetype(f.path, 2 * size, index=f.index)
            rendered = [_render(font, ch, size, margin) for ch in chars]
        except OSError as exc:   # e.g. FreeType "invalid opcode" in some hinted faces
            skipped.append((f"{f.name} ({f.path}#{f.index})", f"FreeType error: {exc}"))
            continue
        blank = sum(r is None or int(r.max()) < 64 for r in rendered)
        if blank:
            skipped.append((f"{f.name} ({f.path}#{f.index})", f"{blank} of {classes} glyphs render blank or faint"))
            continue
        images.append(np.stack(rendered)[:, None])
        labels.append(np.arange(classes, dtype=np.int64))
        face_of.append(np.full(classes, len(used), dtype=np.int64))
        used.append(f)
    for name, why in skipped:
        log.info("glyphs: skipped %s: %s", name, why)
    if not used:
        raise InputError("no font face rendered the chosen characters; install: apt-get install "
                         + " ".join(GLYPH_FONT_PACKAGES))
    split = _split_designs(used, test_fraction, seed)
    imgs = np.concatenate(images)
    return GlyphSet(images=imgs, labels=np.concatenate(labels), face_of=np.concatenate(face_of), chars=chars,
                    faces=used, split_of_face=[split[f.design] for f in used], skipped=skipped,
                    checksum=hashlib.sha256(imgs.tobytes()).hexdigest())


def _cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "score")


def load_glyph_set(classes: int = 1000, size: int = 32, seed: int = 0, test_fraction: float = 0.2,
                   cache_dir: Optional[str] = None, dirs: Sequence[str] = FONT_DIRS, progress: bool = False) -> GlyphSet:
    """:func:`build_glyph_set`, cached in ``cache_dir`` (default ``$SCORE_CACHE`` or ``~/.cache/score``).

    The cache key covers the arguments and the installed font files (paths and sizes), so installing or
    removing fonts renders a new set; the pixels' SHA-256 is checked on every load."""
    files = _font_files(dirs)
    key = hashlib.sha1(json.dumps([classes, size, seed, test_fraction, [(p, os.path.getsize(p)) for p in files]])
                       .encode()).hexdigest()[:12]
    d = os.path.join(cache_dir or _cache_dir(), "glyphs")
    base = os.path.join(d, f"cjk-glyphs-c{classes}-s{size}-seed{seed}-{key}")
    if os.path.isfile(base + ".npz") and os.path.isfile(base + ".json"):
        with open(base + ".json") as fh:
            m = json.load(fh)
        z = np.load(base + ".npz")
        if hashlib.sha256(z["images"].tobytes()).hexdigest() == m["sha256"]:
            faces = [Face(f["path"], f["index"], f["family"], f["style"], f["design"]) for f in m["faces"]]
            return GlyphSet(z["images"], z["labels"], z["face_of"], list(m["characters"]), faces,
                            [f["split"] for f in m["faces"]], [(s["face"], s["reason"]) for s in m["skipped"]], m["sha256"])
        log.warning("glyph cache %s fails its checksum; rendering again", base)
    gs = build_glyph_set(classes, size, seed, test_fraction, dirs=dirs, progress=progress)
    os.makedirs(d, exist_ok=True)
    np.savez(base + ".tmp.npz", images=gs.images, labels=gs.labels, face_of=gs.face_of)
    with open(base + ".tmp.json", "w") as fh:
        json.dump(gs.manifest(), fh, ensure_ascii=False, indent=1)
    os.replace(base + ".tmp.npz", base + ".npz")
    os.replace(base + ".tmp.json", base + ".json")
    log.info("glyphs: %d classes x %d faces (%d train, %d test) cached in %s", classes, len(gs.faces),
             gs.split_of_face.count("train"), gs.split_of_face.count("test"), base)
    return gs


def parse_glyph_spec(spec: str) -> Tuple[str, Optional[int], Dict[str, int]]:
    """``"cjk-glyphs[:split[:N]][?classes=C&size=S&seed=X]"`` -> (split, N or None, options)."""
    head, _, query = spec.partition("?")
    name, _, rest = head.partition(":")
    if name != "cjk-glyphs":
        raise InputError(f"not a glyph spec: {spec!r}")
    split, _, count = rest.partition(":")
    split = split or "train"
    if split not in ("train", "test"):
        raise InputError(f"image source {spec!r}: split must be 'train' or 'test', found {split!r}")
    if count and (not count.isdigit() or int(count) < 1):
        raise InputError(f"image source {spec!r}: the count after the split must be a positive integer")
    opts: Dict[str, int] = {}
    for part in filter(None, query.split("&")):
        k, _, v = part.partition("=")
        if k not in ("classes", "size", "seed") or not v.isdigit():
            raise InputError(f"image source {spec!r}: options are classes=, size= and seed= (integers), found {part!r}")
        opts[k] = int(v)
    return split, (int(count) if count else None), opts


def glyph_split(spec: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """A ``cjk-glyphs`` spec -> (images (N, 1, S, S) uint8, classes (N,), characters).

    ``N`` in the spec keeps a seeded random subset of N images of the split (classes in proportion)."""
    split, count, opts = parse_glyph_spec(spec)
    gs = load_glyph_set(**opts)
    x, y = gs.split(split)
    if count is not None and count < len(x):
        idx = np.sort(np.random.default_rng(0).choice(len(x), size=count, replace=False))
        x, y = x[idx], y[idx]
    return np.ascontiguousarray(x), y, gs.chars
