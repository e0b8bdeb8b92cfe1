"""Resume journal of a store being written: which shards are complete, and what they index.

After each shard is durably written, ``journal/shard-NNNNN.npz`` records its index entries and the
shared bases created so far; a shard without a journal entry is incomplete and is discarded on resume.
The journal lives only in the ``<path>.partial`` directory and is removed when the store is finished.
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from ..errors import InputError, ScoreError
from .integrity import SHARD_MEMBERS, check_shard_file
from .indexio import StoredBasis
from .layout import IMAGE_INDEX_DTYPE, SHARD_DIR, shard_name

__all__ = ["JOURNAL_DIR", "JournalState", "write_options", "write_entry", "load_journal"]

log = logging.getLogger(__name__)

JOURNAL_DIR = "journal"


@dataclass
class JournalState:
    """What a resumed writer starts from."""

    index: List[np.ndarray] = field(default_factory=list)
    shard_sizes: List[int] = field(default_factory=list)
    bases: List[StoredBasis] = field(default_factory=list)
    #: each complete shard's integrity members (file_bytes, data_offset, meta_crc32), as written
    shard_members: List[Dict[str, int]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(x) for x in self.index)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_options(root: str, options: Dict[str, Any]) -> None:
    """Record the writer's options so a resume with different options is refused."""
    os.makedirs(os.path.join(root, JOURNAL_DIR), exist_ok=True)
    _atomic_write(os.path.join(root, JOURNAL_DIR, "options.json"), json.dumps(options, sort_keys=True).encode())


def write_entry(root: str, shard: int, size: int, entries: np.ndarray, bases: List[StoredBasis],
                members: Dict[str, int]) -> None:
    """Mark ``shard`` complete: its byte size, its integrity members (``shard_entry`` of the written file),
    its index entries and all bases created so far."""
    buf = io.BytesIO()
    np.savez(buf, size=np.int64(size), entries=entries,
             members=np.array([members[k] for k in SHARD_MEMBERS], np.int64),
             basis_blob=np.frombuffer(b"".join(b.blob for b in bases), np.uint8),
             basis_lengths=np.array([len(b.blob) for b in bases], np.int64),
             basis_ranks=np.array([b.rank for b in bases], np.int64),
             basis_parents=np.array([b.parent for b in bases], np.int64),
             basis_flags=np.array([b.flags for b in bases], np.int64),
             basis_quants=np.array([b.quant for b in bases], dtype="U4"))
    _atomic_write(os.path.join(root, JOURNAL_DIR, f"{shard_name(shard)}.npz"), buf.getvalue())


def load_journal(root: str, options: Dict[str, Any]) -> JournalState:
    """Read the journal of a partial store; delete shards that were not completed."""
    jdir = os.path.join(root, JOURNAL_DIR)
    opt_file = os.path.join(jdir, "options.json")
    if not os.path.isfile(opt_file):
        raise InputError(f"{root}: has no resume journal; remove it or run without resume")
    with open(opt_file) as fh:
        saved = json.load(fh)
    if saved != json.loads(json.dumps(options, sort_keys=True)):
        diff = sorted(k for k in set(saved) | set(options) if saved.get(k) != options.get(k))
        raise InputError(f"{root}: cannot resume with different options ({', '.join(diff)} changed)")
    state = JournalState()
    s = 0
    while True:
        jf = os.path.join(jdir, f"{shard_name(s)}.npz")
        shard_file = os.path.join(root, SHARD_DIR, shard_name(s))
        if not (os.path.isfile(jf) and os.path.isfile(shard_file)):
            break
        with np.load(jf) as z:
            entries = z["entries"]
            if entries.dtype != IMAGE_INDEX_DTYPE:
                raise InputError(f"{jf}: journal entries have dtype {entries.dtype}, expected {IMAGE_INDEX_DTYPE}")
            if "members" not in z.files:
                raise InputError(f"{jf}: journal written by an older score_codec (no shard checksums); "
                                 "remove the partial store and encode again")
            members = {k: int(v) for k, v in zip(SHARD_MEMBERS, z["members"])}
            try:
                # the shard is sealed with what was measured when it was written, so check it is still that
                check_shard_file(shard_file, {"bytes": int(z["size"]), **members})
            except ScoreError as exc:
                log.warning("%s: resuming before shard %d, which changed after it was written (%s)", root, s, exc)
                break
            state.index.append(entries)
            state.shard_sizes.append(int(z["size"]))
            state.shard_members.append(members)
            blob, lengths = z["basis_blob"].tobytes(), z["basis_lengths"]
            offs = np.concatenate([[0], np.cumsum(lengths)])
            state.bases = [StoredBasis(blob[offs[i]:offs[i + 1]], int(z["basis_ranks"][i]), int(z["basis_parents"][i]),
                                       int(z["basis_flags"][i]), str(z["basis_quants"][i])) for i in range(len(lengths))]
        s += 1
    # bases created for records that never reached a complete shard are dropped (ids are assigned in order);
    # store-scope bases are written before any record and are all kept
    used = max((int(e["basis"].max()) for e in state.index if len(e)), default=-1) + 1
    if options.get("scope") != "store":
        state.bases = state.bases[:used]
    # shards after the last good journaled one were cut off mid-write (or damaged since): they and their
    # journal entries go, so a later interruption cannot pair a stale entry with a rewritten shard
    for folder in (SHARD_DIR, JOURNAL_DIR):
        for name in os.listdir(os.path.join(root, folder)):
            if name.startswith("shard-") and name[6:11].isdigit() and int(name[6:11]) >= s:
                os.remove(os.path.join(root, folder, name))
    return state
