"""The device paths (encode, random-row decode, SCORE selection) on the CPU and on CUDA, timed in one run.

    python -m benchmarks.label_path.device_paths                 # CPU, and CUDA when torch sees a GPU
    python -m benchmarks.label_path.device_paths --quick --devices cpu   # the CPU rows at a tenth of the size
    python -m benchmarks.label_path.device_paths --commit-results  # write benchmarks/label_path/results/device_paths.md

Each path runs on every device with the same data, so the table's ratios compare devices measured in the same
run (wall time includes host-device copies and ``torch.cuda.synchronize``; the first call of each path on a
device is a warm-up and is not timed):

* encode: ``score_codec.encode`` of teacher-like logits (C = 1000, ``W h + b`` rows) with the global codec
  at 30x, the least-squares projection (``newton_steps=0``) and the default KL fit;
* decode: ``LabelDecoder(store, device)`` on batches of 256 random (image, epoch) pairs, against gathering
  the same rows from fp16 labels held on that device;
* select: ``score_select.select`` (SCORE, alpha 1, beta 0.1) of IPC 50 from 13,000 x 512 features, 10 classes.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from benchmarks.shared import RUNS_DIR, feature_pool, teacher_like

__all__ = ["device_name", "measure", "table", "main"]

HERE = os.path.dirname(os.path.abspath(__file__))


def device_name(device: str) -> str:
    """What ``device`` is, in words: the GPU's name or the CPU model and core count."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    model = platform.processor() or "CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _seconds(fn: Callable[[], object], device: str, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls after one untimed warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def measure(device: str, tmp: str, quick: bool = False) -> Dict[str, float]:
    """Rows/s (encode, decode, the fp16 gather baseline) and seconds (select) of every path on ``device``."""
    import score_codec as sc
    import score_select
    from score_codec.training.dataset import LabelDecoder

    n, k = (100, 50) if quick else (1000, 100)
    y = teacher_like(n, k)
    out: Dict[str, float] = {}
    path = os.path.join(tmp, f"enc_{device.replace(':', '_')}.store")
    for name, cfg in (("encode_projection", {"newton_steps": 0}), ("encode_kl_fit", {})):
        t = _seconds(lambda: sc.encode(y, path, method="global", ratio=30.0, quant="int8", device=device,
                                       overwrite=True, codec_config=cfg, pool=False), device, repeat=1)
        out[name] = n * k / t
    store = sc.LabelStore(path)
    dec = LabelDecoder(store, device=device)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, n, 256), rng.integers(0, k, 256)) for _ in range(20 if quick else 200)]
    # what the timings are worth: the device decodes what the CPU reader decodes, and the device's encode
    # (the KL-fit store, written last) is as faithful as a CPU encode
    i0, a0 = batches[0]
    got, ref = dec(i0, a0).cpu(), store.rows(i0, a0, device="cpu")
    out["decode_max_abs_diff"] = float((got - ref).abs().max())
    t_log = torch.log_softmax(y[torch.as_tensor(i0), torch.as_tensor(a0)], -1)
    out["kl_t1"] = float((t_log.exp() * (t_log - torch.log_softmax(ref, -1))).sum(-1).mean())
    out["decode"] = 256 * len(batches) / _seconds(lambda: [dec(i, a) for i, a in batches], device)
    dense = y.half().to(device)
    idx = [(torch.as_tensor(i, device=device), torch.as_tensor(a, device=device)) for i, a in batches]
    out["gather_fp16"] = 256 * len(idx) / _seconds(lambda: [dense[i, a].float() for i, a in idx], device)
    X, lab = feature_pool(2000 if quick else 13000, 128 if quick else 512, 10)
    out["select_s"] = _seconds(lambda: score_select.select(X, lab, 10 if quick else 50, method="score", alpha=1.0,
                                                           beta=0.1, device=device), device, repeat=1)
    return out


def table(res: Dict[str, Dict[str, float]], quick: bool) -> List[str]:
    """Markdown rows: one per path, one column per device, and the last device's speed-up over the first."""
    devs = list(res)
    size = "100 images x 50 views" if quick else "1,000 images x 100 views"
    rows = [("encode, global 30x, projection (rows/s)", "encode_projection", size),
            ("encode, global 30x, KL fit (rows/s)", "encode_kl_fit", size),
            ("decode: LabelDecoder, batch 256 random rows (rows/s)", "decode", size),
            ("baseline: gather fp16 rows held on the device (rows/s)", "gather_fp16", size),
            ("select: SCORE (s)", "select_s", "2,000 x 128, IPC 10" if quick else "13,000 x 512, IPC 50")]
    head = "| path | data | " + " | ".join(devs) + (f" | {devs[-1]} vs {devs[0]} |" if len(devs) > 1 else " |")
    out = [head, "|---|---|" + "---:|" * (len(devs) + (len(devs) > 1))]
    rows = rows + [("check: KL(T=1) of the KL-fit store on 256 random rows (nats)", "kl_t1", size),
                   ("check: device decode vs the CPU reader, max abs difference", "decode_max_abs_diff", size)]
    for label, key, data in rows:
        check = key in ("kl_t1", "decode_max_abs_diff")
        cells = [f"{res[d][key]:.3g}" if check else f"{res[d][key]:.2f}" if key == "select_s" else f"{res[d][key]:,.0f}"
                 for d in devs]
        line = f"| {label} | {data} | " + " | ".join(cells) + " |"
        if check and len(devs) > 1:
            line += " |"
        elif len(devs) > 1:
            a, b = res[devs[0]][key], res[devs[-1]][key]
            line += f" {(a / b if key == 'select_s' else b / a):.1f}x |"
        out.append(line)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.label_path.device_paths", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--devices", nargs="+", help="devices to time (default: cpu, and cuda when available)")
    p.add_argument("--quick", action="store_true", help="a tenth of the sizes (a check that the paths run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="markdown output (default benchmarks/runs/device_paths.md)")
    p.add_argument("--commit-results", action="store_true", help="write benchmarks/label_path/results/device_paths.md")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d in devices:
            res[d] = measure(d, tmp, a.quick)
    lines = ["# Device paths: CPU and CUDA in one run", "",
             f"`python -m benchmarks.label_path.device_paths{' --quick' if a.quick else ''}` (torch {torch.__version__})", ""]
    lines += [f"- {d}: {device_name(d)}" for d in devices]
    if "cuda" not in " ".join(devices):
        lines.append("- no CUDA device was available to this run: the CUDA column is missing")
    lines += [""] + table(res, a.quick) + [""]
    out = a.out or os.path.join(os.path.join(HERE, "results") if a.commit_results else RUNS_DIR, "device_paths.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
