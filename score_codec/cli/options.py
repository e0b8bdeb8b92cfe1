"""Options shared by the ``score-codec`` subcommands, declared without importing the library.

The method, quantisation and format names are spelled out here so that ``--help`` and argument errors
need only argparse; ``tests/cli/test_cli.py`` checks them against the registries.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

__all__ = ["METHODS", "QUANTS", "FORMAT_NAMES", "HelpFormatter", "add_codec_arguments", "codec_config", "codec_options", "count",
           "add_teacher_arguments", "add_store_arguments", "store_argument"]

#: registered codecs (``score_codec.registered_codecs()``)
METHODS = ("cur", "global", "rpca", "rsvd", "shared", "svd", "two-level")
QUANTS = ("fp16", "bf16", "int8", "fp32")
#: dump families with a reader and a writer (``score_codec.formats.FORMATS`` / ``WRITERS``)
FORMAT_NAMES = ("edc", "fkd", "gvbsm", "lpld", "lpqld", "npy", "sre2l")


def count(minimum: int):
    """An argparse ``type`` for integers >= ``minimum``: anything else is a usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps example epilogs as written and shows every option's default."""


def add_codec_arguments(p: argparse.ArgumentParser, rank_default: Any = None) -> None:
    """Codec, rate-control and quantisation options (``encode`` and ``relabel``)."""
    p.add_argument("--method", default="global", choices=METHODS,
                   help="Codec: per-image svd, rsvd, cur, rpca; shared (a basis per class); global (one basis for "
                        "the whole store, best for many classes and CutMix dumps); two-level (global plus per-class "
                        "refinements).")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rank", type=int, default=rank_default, help="Rank per image (per-image codecs) or of the "
                      "global basis; 8 when no rate option is given.")
    rate.add_argument("--energy", type=float, default=None, help="Share of squared singular values (or of the "
                      "store's variance, for global) to keep.")
    rate.add_argument("--ratio", type=float, default=None, help="Target compression ratio against fp16 logits; "
                      "global counts record sizes after zstd, measured on a sample, so it lands within about 1%%; "
                      "the achieved ratio is reported exactly.")
    pool = p.add_mutually_exclusive_group()
    pool.add_argument("--no-pool", action="store_true", help="With --ratio: code every label epoch at the ratio "
                      "even when that takes the decoded labels past --max-kl (a warning names the measured KL). "
                      "By default the global codec keeps fewer epochs instead (pooling).")
    pool.add_argument("--keep-epochs", type=_positive_int, default=None, metavar="N", help="Keep exactly N label "
                      "epochs, evenly spaced from the first, and code them (with --ratio, the ratio counts every "
                      "source row).")
    p.add_argument("--max-kl", type=_positive_float, default=0.01, help="Largest KL(T=1) between source and decoded "
                   "rows, measured on a sample, that the automatic split of --ratio accepts for the codec.")
    p.add_argument("--quant", default=argparse.SUPPRESS, choices=QUANTS, help="Quantisation of the stored factors "
                   "(int8: one fp32 scale per component; one per record for global). Default: int8 for global and two-level, fp16 for the "
                   "image-scope codecs.")
    p.add_argument("--residual", type=int, default=0, help="Sparse residual entries kept per row.")
    p.add_argument("--keep-mean", action="store_true", help="Store each row's mean so decoding returns the exact "
                   "logits; without it decoded rows are row-centred (softmax is unchanged).")
    p.add_argument("--fit-temperature", type=float, default=None, help="global/two-level: fit coefficients for "
                   "softmax at this temperature (the student's; default 1).")
    p.add_argument("--newton-steps", type=int, default=None, help="global/two-level: KL-fit Newton steps per row "
                   "(default 1; 0: least-squares projection, the fastest encode).")
    p.add_argument("--class-rank", type=int, default=None, help="two-level: directions per class beyond the "
                   "global basis (default 2; chosen by rate control with --ratio).")
    p.add_argument("--head", default=None, help="global: the teacher (a safetensors file written by score's "
                   "save_model, 'package.module:factory', or in relabel the TEACHER spec itself, loaded with its "
                   "--weights); its final linear layer becomes the basis.")


def codec_config(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The store-scope codec's ``codec_config`` from ``--fit-temperature``, ``--class-rank`` and
    ``--newton-steps`` (those a subcommand has and the user gave; None when none was)."""
    config = {name: getattr(args, name) for name in ("fit_temperature", "class_rank", "newton_steps")
              if getattr(args, name, None) is not None}
    return config or None


def codec_options(args: argparse.Namespace, device: Optional[str] = None) -> Any:
    """A :class:`~score_codec.store.options.CodecOptions` from parsed :func:`add_codec_arguments` options."""
    from ..store.options import CodecOptions

    return CodecOptions(method=args.method, rank=args.rank, energy=args.energy, ratio=args.ratio, quant=getattr(args, "quant", None),
                        residual=args.residual, keep_mean=args.keep_mean, codec_config=codec_config(args),
                        device=device or getattr(args, "device", None) or "cpu", pool=not args.no_pool,
                        keep_epochs=args.keep_epochs, max_kl=args.max_kl)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, found {text!r}")
    return v


def _floats(text: str):
    """An argparse ``type`` for a comma-separated list of numbers (``0.485,0.456,0.406``)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, found {text!r}") from None


_floats.__name__ = "comma-separated numbers"


def add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    """``--weights``, ``--num-classes`` and the input normalisation (``--normalize``, ``--mean``, ``--std``)
    of a teacher named on the command line (``score_codec.training.teachers.load_teacher``)."""
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="Weights of the teacher: a state dict or a checkpoint holding one (under 'state_dict', "
                        "'model', ...), a torch.save or safetensors file; a 'module.' prefix is removed.")
    p.add_argument("--num-classes", type=count(1), default=None,
                   help="Logits of a torchvision:/timm: teacher; unset: the final layer's rows in --weights, "
                        "else the library's default.")
    p.add_argument("--normalize", default=None, choices=("imagenet", "none"),
                   help="Normalise every teacher input per channel: 'imagenet' is mean 0.485,0.456,0.406 and "
                        "std 0.229,0.224,0.225 of [0, 1] pixels.")
    p.add_argument("--mean", type=_floats, default=None, help="Per-channel means to subtract (comma-separated).")
    p.add_argument("--std", type=_floats, default=None, help="Per-channel standard deviations to divide by.")


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """``--allow-unchecked``, for subcommands that read a store."""
    p.add_argument("--allow-unchecked", action="store_true", help="Read a store written by format version 1 or 2 "
                   "(no table of contents) through libhdf5, which can hang on a damaged or crafted file; "
                   "'score-codec upgrade' converts such a store once instead.")


def store_argument(args: argparse.Namespace, name: str = "store") -> Any:
    """The store to hand to the library call: the path, or with ``--allow-unchecked`` the store opened
    with ``allow_unchecked=True`` (every library call that reads a store accepts either)."""
    path = getattr(args, name)
    if not getattr(args, "allow_unchecked", False):
        return path
    from ..store.reader import LabelStore

    return LabelStore(path, allow_unchecked=True)
