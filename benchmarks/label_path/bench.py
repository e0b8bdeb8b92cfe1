"""The label path at ImageNet scale, as ratios measured in one run on this machine.

    python -m benchmarks.label_path          # writes benchmarks/label_path/results/label_path.md
    python -m benchmarks.label_path --device cuda --sections decode encode \
        --out benchmarks/label_path/results/label_path_cuda.md

At C = 1000, rank 16, int8 factors, 256 images x 300 views of teacher-like logits (``W h + b`` with a
128-wide feature process: the structure of a real teacher's last layer):

* random-row decode in batches of 256 against gathering the same rows from fp16 labels held in RAM;
* peak memory growth of one 65,536-row call (in a fresh process, ``VmHWM``);
* full-matrix decode rows/s;
* reader memory: a simulated ImageNet-1K IPC 50 store (50,000 images x 300 epochs of augmentation
  metadata) opened for training in a fresh process, per-epoch access against loading the whole table;
* ``score-codec --help`` and an argument error, wall time of the whole command;
* whole-dump encode (``score-codec encode`` of an SRe2L dump, global codec) against ``torch.load`` of
  the same batch files;
* a training data path with 2 DataLoader workers: labels from the store against labels held in RAM.

``--device cuda`` runs the decode and encode sections on the GPU (decode into and gather from GPU memory,
peak growth from ``torch.cuda.max_memory_allocated``; ``score-codec encode --device cuda``); the other
sections are CPU-only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from benchmarks.shared import cpu_name, make_meta, replay_epochs, teacher_like

__all__ = ["main", "RESULTS_DIR"]

HERE = os.path.dirname(os.path.abspath(__file__))
#: the repository root: the working directory and import path of the fresh interpreters timed here
ROOT = os.path.dirname(os.path.dirname(HERE))
#: the committed results
RESULTS_DIR = os.path.join(HERE, "results")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _rate(fn: Callable[[], int], repeat: int = 3, device: str = "cpu") -> float:
    """Best items/s of ``repeat`` calls (``fn`` returns its item count; CUDA work is waited for)."""
    best = 0.0
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        n = fn()
        _sync(device)
        best = max(best, n / (time.perf_counter() - t))
    return best


def _child(code: str) -> Dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line (with VmHWM in MB added)."""
    wrapper = code + "\nimport json\nhwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n" \
                     "RES['vmhwm_mb']=int(hwm)/1024\nprint(json.dumps(RES))"
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_growth_mb(path: str, n: int, k: int, device: str) -> Dict:
    """Peak memory growth (MB) of one 65,536-row ``rows`` call: VmHWM of a fresh process on the CPU, the
    allocator's peak on CUDA; with the result's own size."""
    if device == "cpu":
        res = _child(f"import numpy as np, score_codec as sc\nst = sc.LabelStore({path!r}); st.rows([0], [0])\n"
                     f"hwm=[l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
                     f"g = np.random.default_rng(1)\nout = st.rows(g.integers(0, {n}, 65536), g.integers(0, {k}, 65536))\n"
                     f"RES = dict(before_mb=int(hwm) / 1024, out_mb=out.numel() * 4 / 2**20)")
        return dict(growth=res["vmhwm_mb"] - res["before_mb"], out_mb=res["out_mb"])
    import score_codec as sc

    st = sc.LabelStore(path)
    st.rows([0], [0], device=device)
    _sync(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    g = np.random.default_rng(1)
    out = st.rows(g.integers(0, n, 65536), g.integers(0, k, 65536), device=device)
    _sync(device)
    return dict(growth=(torch.cuda.max_memory_allocated() - before) / 2**20, out_mb=out.numel() * 4 / 2**20)


def decode_section(tmp: str, device: str = "cpu") -> List[str]:
    import score_codec as sc

    y = teacher_like(256, 300)
    n, k, c = y.shape
    dense = y.half().numpy()
    dense_dev = y.half().to(device)
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, n, 256), rng.integers(0, k, 256)) for _ in range(300)]
    pairs_dev = [(torch.as_tensor(i, device=device), torch.as_tensor(a, device=device)) for i, a in pairs]

    def gather() -> int:
        if device == "cpu":   # numpy fancy indexing: the cheapest in-RAM gather on the CPU
            for i, a in pairs:
                torch.from_numpy(dense[i, a]).float()
        else:
            for i, a in pairs_dev:
                dense_dev[i, a].float()
        return 256 * len(pairs)

    gather()
    base = _rate(gather, device=device)
    where = "in RAM" if device == "cpu" else f"in {device} memory"
    lines = [f"## Decode on {device} (C = 1000, rank 16, int8 factors, 256 images x 300 views)", "",
             f"Baseline: fp16 labels {where}, gather 256 random rows and widen to float32: {base:,.0f} rows/s.", "",
             "| codec | random rows, batch 256 (rows/s) | vs fp16 gather | 65,536-row call: peak growth | "
             "full matrices (rows/s) |", "|---|---:|---:|---:|---:|"]
    for method, kw in (("global", dict(codec_config={"newton_steps": 0})), ("svd", {})):
        path = os.path.join(tmp, f"{method}.store")
        sc.encode(y, path, method=method, rank=16, quant="int8", overwrite=True, **kw)
        st = sc.LabelStore(path)
        st.rows(*pairs[0], device=device)

        def rows(st=st) -> int:
            for i, a in pairs:
                st.rows(i, a, device=device)
            return 256 * len(pairs)

        r = _rate(rows, device=device)
        fac = st.factors(device)

        def full(fac=fac) -> int:
            for s in range(0, n, 4):
                fac.matrices(range(s, min(s + 4, n)))
            return n * k

        full()
        f = _rate(full, device=device)
        mem = _peak_growth_mb(path, n, k, device)
        lines.append(f"| {method} | {r:,.0f} | {r / base:.2f}x | {mem['growth']:.0f} MB (the (65536, 1000) float32 "
                     f"result is {mem['out_mb']:.0f} MB) | {f:,.0f} |")
    lines += ["", "Per-image bases must be read for every row (16 x 1000 int8 values per row against 1000 fp16 values "
              "of the raw label), so random-row decode of per-image codecs is memory-bound far below the raw "
              "gather; a store-scope basis is read once per batch.", ""]
    return lines


def metadata_section(tmp: str) -> List[str]:
    """A store with 50,000 images x 300 epochs of metadata (C = 10, rank 1: the labels do not matter here)."""
    import score_codec as sc
    from score_codec.store.meta import AugMeta, BATCH_DTYPE, IMAGE_DTYPE, MIX_CUTMIX, ROW_DTYPE

    n, e_count, bs = 50_000, 300, 1024
    path = os.path.join(tmp, "imagenet_meta.store")
    rng = np.random.default_rng(0)
    nb = -(-n // bs)
    rows = np.zeros(n * e_count, ROW_DTYPE)
    batches = np.zeros(nb * e_count, BATCH_DTYPE)
    at = 0
    for e in range(e_count):
        perm = rng.permutation(n)
        rows["image"][at:at + n], rows["aug"][at:at + n], rows["epoch"][at:at + n] = perm, e, e
        for b in range(nb):
            m = min(bs, n - b * bs)
            batches[e * nb + b] = (e, b, at + b * bs, m, MIX_CUTMIX, 0.5, (0, 0, 100, 100))
            rows["batch"][at + b * bs:at + b * bs + m] = b
            rows["pos"][at + b * bs:at + b * bs + m] = np.arange(m)
            rows["mix_index"][at + b * bs:at + b * bs + m] = rng.permutation(m)
        at += n
    rows["coords"] = rng.random((len(rows), 4), dtype=np.float32)
    images = np.zeros(n, IMAGE_DTYPE)
    meta = AugMeta(rows=rows, batches=batches, images=images, attrs=dict(input_size=224, batch_size=bs))
    y = torch.zeros(n, e_count, 10)
    y[..., 0] = 1.0
    t = time.perf_counter()
    with sc.StoreWriter(path, 10, method="global", rank=1, quant="int8") as w:
        w.fit([y[0]])
        for s in range(0, n, 5000):
            w.add(y[s:s + 5000])
        w.set_meta(meta)
    build = time.perf_counter() - t
    del rows, meta, y
    lazy = _child(f"import score_codec as sc\nfrom score_codec.training.replay import EpochPlan, ReplayBatchSampler\n"
                  f"st = sc.LabelStore({path!r})\nfor e in (0, 1, 299):\n"
                  f"    p = EpochPlan.from_store(st, len(st), e)\n"
                  f"s = ReplayBatchSampler(st)\ns.set_epoch(5)\nb = sum(len(x) for x in s)\nRES = dict(rows=b)")
    whole = _child(f"import score_codec as sc\nst = sc.LabelStore({path!r})\nRES = dict(rows=len(st.aug.rows))")
    bare = _child("import score_codec as sc, score_codec.training.replay, torch\nRES = dict()")
    workers = _child(_WORKER_CODE.replace("STORE", repr(path)))
    return ["## Reader memory: simulated ImageNet-1K IPC 50 store (50,000 images x 300 epochs)", "",
            f"Metadata: {n * e_count:,} rows of {ROW_DTYPE.itemsize} B ({n * e_count * ROW_DTYPE.itemsize / 2**30:.2f} GiB "
            f"in memory); written in {build:.0f} s.", "",
            "| reader | peak resident memory of the process |", "|---|---:|",
            f"| per-epoch access (EpochPlan.from_store for 3 epochs + ReplayBatchSampler epoch) | {lazy['vmhwm_mb']:.0f} MB |",
            f"| whole table (LabelStore.aug) | {whole['vmhwm_mb']:.0f} MB |",
            f"| (the interpreter with torch and score_codec imported, nothing opened) | {bare['vmhwm_mb']:.0f} MB |", "",
            f"Per-epoch access adds {lazy['vmhwm_mb'] - bare['vmhwm_mb']:.0f} MB over the imported library; loading the "
            f"whole table adds {whole['vmhwm_mb'] - bare['vmhwm_mb']:.0f} MB.", "",
            "Per DataLoader worker (2 forked workers, each builds 2 epochs' plans and decodes labels; "
            "/proc/self/smaps_rollup at the end of its work, the largest of the workers):", "",
            "| per worker | MB |", "|---|---:|",
            f"| resident (RSS: counts the pages shared with the parent, torch's libraries included) | {workers['rss']:.0f} |",
            f"| proportional (PSS: shared pages split between the processes that map them) | {workers['pss']:.0f} |",
            f"| unique (USS: private pages, what each further worker adds) | {workers['uss']:.0f} |", ""]


# a forked worker's memory: RSS counts the torch pages it shares with its parent; USS is its own cost
_WORKER_CODE = """
import numpy as np, torch
import score_codec as sc
from score_codec.training.replay import EpochPlan
st = sc.LabelStore(STORE)

def mem():
    m = {}
    for line in open('/proc/self/smaps_rollup'):
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == 'kB':
            m[parts[0].rstrip(':')] = int(parts[1]) / 1024
    return [m['Rss'], m['Pss'], m['Private_Clean'] + m['Private_Dirty']]

class Worker(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        plan = EpochPlan.from_store(st, len(st), 7 * i)
        st.rows(np.arange(0, len(st), 97), np.full(len(range(0, len(st), 97)), 7 * i))
        return torch.tensor(mem())

dl = torch.utils.data.DataLoader(Worker(), batch_size=None, num_workers=2, multiprocessing_context='fork')
got = torch.stack(list(dl)).max(0).values.tolist()
RES = dict(rss=got[0], pss=got[1], uss=got[2])
"""


def cli_section(tmp: str = "") -> List[str]:
    def wall(argv) -> float:
        best = 1e9
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(argv, capture_output=True)
            best = min(best, time.perf_counter() - t)
        return best

    exe = [sys.executable, "-m", "score_codec.cli.main"]
    py = wall([sys.executable, "-c", "pass"])
    return ["## Command line", "", "| command | wall time (s) |", "|---|---:|",
            f"| python -c pass (interpreter start) | {py:.2f} |",
            f"| score-codec --help | {wall(exe + ['--help']):.2f} |",
            f"| score-codec encode --help | {wall(exe + ['encode', '--help']):.2f} |",
            f"| score-codec encode (argument error) | {wall(exe + ['encode']):.2f} |",
            f"| python -c 'import torch' (for scale) | {wall([sys.executable, '-c', 'import torch']):.2f} |", ""]


#: runs ``score-codec`` with the given arguments, then writes the process's peak resident set (VmHWM, KiB) to
#: stderr; measured inside the command's own process (a forked child's rusage also counts the parent's pages)
_PEAK = ("import sys\nfrom score_codec.cli.main import main\nrc = main(sys.argv[1:])\n"
         "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
         "sys.stderr.write('\\nVmHWM %s\\n' % (hwm[0] if hwm else 'nan'))\nsys.exit(rc)\n")


def _encode_wall(src: str, dst: str, extra: List[str]) -> Tuple[float, float]:
    """Wall time (s) and peak resident memory (MB) of one ``score-codec encode`` command (a fresh interpreter:
    torch import included)."""
    argv = [sys.executable, "-c", _PEAK, "encode", src, dst, "--method", "global", "--ratio", "30",
            "--quant", "int8", "--overwrite", "--quiet", "--trust-order"] + extra
    t = time.perf_counter()
    r = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    peak = [line.split()[1] for line in r.stderr.splitlines() if line.startswith("VmHWM ")]
    return wall, float(peak[-1]) / 1024 if peak else float("nan")


def encode_section(tmp: str, device: str = "cpu") -> List[str]:
    """An SRe2L dump at C = 1000 (4,000 images x 25 epochs, batch 500), and the same files repeated to 100
    epochs, encoded by the CLI against torch.load of the same files: total and per-row (marginal) cost."""
    from score_codec.formats.safe_load import safe_torch_load
    from score_codec.formats import write_dump
    import shutil
    import score_codec as sc

    n, k, bs, reps = 4000, 25, 500, 4
    y = teacher_like(n, k, seed=3)
    src = os.path.join(tmp, "dump")
    sc.encode(y, os.path.join(tmp, "src.store"), method="svd", rank=min(k, 20), quant="fp32",
              meta=make_meta(n, k, batch=bs), keep_mean=True, overwrite=True)
    write_dump(sc.LabelStore(os.path.join(tmp, "src.store")), src, "sre2l", overwrite=True)
    # the large dump: the same batch files as epochs k..reps*k-1 (the reading cost is what matters)
    big = os.path.join(tmp, "dump_big")
    for e in range(k * reps):
        shutil.copytree(os.path.join(src, f"epoch_{e % k}"), os.path.join(big, f"epoch_{e}"))

    def files(root: str, epochs: int) -> List[str]:
        return [os.path.join(root, f"epoch_{e}", f"batch_{b}.tar") for e in range(epochs) for b in range(n // bs)]

    def load_time(fs: List[str], loader) -> float:
        def run() -> int:
            for f in fs:
                loader(f)
            return len(fs)
        return len(fs) / _rate(run, 2)

    plain = (lambda f: torch.load(f, weights_only=False))
    sizes = [(src, k), (big, k * reps)]
    t_plain = [load_time(files(d, e), plain) for d, e in sizes]
    t_safe = [load_time(files(d, e), safe_torch_load) for d, e in sizes]
    rows = [n * e for _, e in sizes]
    mb = [sum(os.path.getsize(f) for f in files(d, e)) / 2**20 for d, e in sizes]
    lines = [f"## Whole-dump encode on {device} (SRe2L dump, C = 1000, {n:,} images, {bs}-row batch files, in the page cache)", "",
             f"Reading the batch files alone ({rows[0]:,} / {rows[1]:,} rows, {mb[0]:,.0f} / {mb[1]:,.0f} MB on disk): "
             f"torch.load {t_plain[0]:.2f} / {t_plain[1]:.2f} s; our safe loader (weights_only + allow-list) "
             f"{t_safe[0]:.2f} / {t_safe[1]:.2f} s. Each encode reads every batch file once (its rows parked in a "
             f"scratch file beside the store, coded once the basis is fitted); peak memory is the encode process's "
             f"peak resident set (torch's libraries included).", "",
             "| score-codec encode (--method global --ratio 30) | rows | wall time (s) | vs torch.load | rows/s | peak memory (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    marginal = {}
    for name, extra in (("--newton-steps 0 (projection)", ["--newton-steps", "0"]), ("default (KL fit)", [])):
        runs = [_encode_wall(d, os.path.join(tmp, "enc.store"), extra + ["--device", device]) for d, _ in sizes]
        walls = [w for w, _ in runs]
        for j in range(2):
            lines.append(f"| {name} | {rows[j]:,} | {walls[j]:.2f} | {walls[j] / t_plain[j]:.1f}x | {rows[j] / walls[j]:,.0f} "
                         f"| {runs[j][1]:,.0f} |")
        per_row = (walls[1] - walls[0]) / (rows[1] - rows[0])
        marginal[name] = (walls[0] - per_row * rows[0], per_row)
    load_row = (t_plain[1] - t_plain[0]) / (rows[1] - rows[0])
    lines += ["", f"Cost model from the two sizes (time = fixed + rows x per-row): torch.load {load_row * 1e6:.2f} us/row; "]
    for name, (fixed, per_row) in marginal.items():
        lines.append(f"encode {name}: {fixed:.1f} s fixed (interpreter, torch import, basis fit) + {per_row * 1e6:.2f} us/row, "
                     f"{per_row / load_row:.1f}x torch.load per row (the ratio a very large dump approaches).")
    return lines + [""]


def dataloader_section(tmp: str) -> List[str]:
    """Views + labels with 2 DataLoader workers: labels decoded from the store vs looked up in RAM."""
    import score_codec as sc

    from score_codec.training.images import TensorImages

    n, k, bs = 2048, 8, 256
    y = teacher_like(n, k, seed=4)
    imgs = TensorImages((torch.rand(n, 3, 32, 32) * 255).to(torch.uint8), np.arange(n) % 1000)
    path = os.path.join(tmp, "dl.store")
    meta = make_meta(n, k, batch=bs)
    meta.attrs["input_size"] = 32
    meta.rows["coords"] = (0.1, 0.1, 0.8, 0.8)          # a valid crop of every image
    meta.batches["mix_bbox"] = (4, 4, 20, 20)
    sc.encode(y, path, method="global", rank=16, quant="int8", meta=meta, overwrite=True,
              codec_config={"newton_steps": 0})

    class InRAM(sc.CompressedSoftLabelDataset):
        def labels(self, indices):
            return y[torch.as_tensor(np.asarray(indices, dtype=np.int64)), self.epoch]

    def run(cls) -> int:
        return replay_epochs(cls(imgs, path), path, k, 2)

    ram = _rate(lambda: run(InRAM), 2)
    store = _rate(lambda: run(sc.CompressedSoftLabelDataset), 2)
    return ["## Training data path, 2 DataLoader workers (2,048 images 32 x 32 x 3, 8 epochs, batch 256, C = 1000)", "",
            "| labels | images/s | step time vs labels in RAM |", "|---|---:|---:|",
            f"| held in RAM (same views) | {ram:,.0f} | 1.00x |",
            f"| decoded from the store (global, rank 16, int8) | {store:,.0f} | {ram / store:.2f}x |", ""]


SECTIONS = {"decode": decode_section, "metadata": metadata_section, "encode": encode_section,
            "dataloader": dataloader_section, "cli": cli_section}
ON_DEVICE = ("decode", "encode")   # sections that take the --device (the others measure CPU processes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.label_path", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "label_path.md"), help="markdown output")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=sorted(SECTIONS),
                   help="run only these sections (the table then holds only them)")
    p.add_argument("--device", default="cpu", help="device of the decode and encode sections: cpu or cuda[:N]")
    a = p.parse_args(argv)
    if a.device != "cpu" and not torch.cuda.is_available():
        p.error(f"--device {a.device}: torch sees no CUDA device here")
    torch.set_num_threads(a.threads)

    where = "" if a.device == "cpu" else f", {torch.cuda.get_device_name(torch.device(a.device))} (CUDA {torch.version.cuda})"
    cmd = "python -m benchmarks.label_path" + (f" --device {a.device}" if a.device != "cpu" else "") + \
        (f" --threads {a.threads}" if a.threads != 2 else "") + \
        (" --sections " + " ".join(a.sections) if sorted(a.sections) != sorted(SECTIONS) else "")
    md = [f"# Label path at ImageNet scale ({cpu_name()}, {os.cpu_count()} CPUs, {a.threads} torch threads{where}, "
          f"torch {torch.__version__})", "", f"`{cmd}`", ""]
    with tempfile.TemporaryDirectory(prefix="label_path_") as tmp:
        for name in ("decode", "metadata", "encode", "dataloader", "cli"):
            if name in a.sections:
                md += SECTIONS[name](tmp, a.device) if name in ON_DEVICE else SECTIONS[name](tmp)
                print("\n".join(md[-12:]), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0

