"""Options shared by the ``score-codec`` subcommands, declared without importing the library.

The method, quantisation and format names are spelled out here so that ``--help`` and argument errors
need only argparse; ``tests/cli/test_cli.py`` checks them against the registries.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

__all__ = ["METHODS", "QUANTS", "FORMAT_NAMES", "HelpFormatter", "add_codec_arguments", "codec_options", "count",
           "add_store_arguments", "store_argument"]

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
                      "the achieved ratio is reported exactly.")
    p.add_argument("--quant", default="fp16", choices=QUANTS, help="Quantisation of the stored factors "
                   "(int8: one scale per component).")
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
                   "save_model, or 'package.module:factory'); its final linear layer becomes the basis.")


def codec_options(args: argparse.Namespace, device: Optional[str] = None) -> Any:
    """A :class:`~score_codec.store.options.CodecOptions` from parsed :func:`add_codec_arguments` options."""
    from ..store.options import CodecOptions

    config: Dict[str, Any] = {}
    if args.fit_temperature is not None:
        config["fit_temperature"] = args.fit_temperature
    if args.class_rank is not None:
        config["class_rank"] = args.class_rank
    if args.newton_steps is not None:
        config["newton_steps"] = args.newton_steps
    return CodecOptions(method=args.method, rank=args.rank, energy=args.energy, ratio=args.ratio, quant=args.quant,
                        residual=args.residual, keep_mean=args.keep_mean, codec_config=config or None,
                        device=device or getattr(args, "device", None) or "cpu")


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
