"""The teacher's labels of the pool, kept on disk: a continued run, or another run with the same teacher, reads them.

Labelling a large pool with an ensemble teacher is the costly part of a round besides training. A run continued
after it stopped in the middle of a round would label the pool again, and the runs of several seeds whose teacher is
the same ensemble (``bench/selftrain.py --ensemble``) each label the same pool with the same models. Each entry is a
folder named by a key over everything the labels depend on (:func:`label_key`); the first process that needs a key
computes it while holding a file lock, and the others wait for it and read the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from refineg.data import Example, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

#: What a labelling returns and the cache keeps: ``preds`` (posts with scored entities), ``rows`` (per post one label
#: distribution per word, or ``None``), ``labels`` and ``teacher_dev_mner_f1`` (``None`` for a one-checkpoint teacher).
Labels = dict[str, Any]


def _stamp(path: str) -> list[Any]:
    """A file by resolved path, size, modification and status-change time.

    The status-change time (``st_ctime_ns``) cannot be set from user space: a file replaced by a copy that keeps the
    old modification time (``cp -p``, ``rsync -a``, ``tar x``) still gets a new one.
    """
    resolved = Path(path).resolve()
    stat = os.stat(resolved)
    return [str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def label_key(members: Sequence[str], posts: Sequence[Example], cfg: DictConfig) -> str:
    """A key over the teacher, the pool and the settings that shape the labels.

    The teacher's checkpoints count by :func:`_stamp`, in sorted order (an ensemble's members in another order give
    the same labels up to float rounding); the pool by its posts' ids, words, images and image sizes (the labelled
    posts carry the images on); the settings are ``selftrain.head`` and ``head_kwargs`` (with the files they name,
    e.g. a fitted ``path``), whether per-word rows are kept (``soft_targets`` or ``outside_min``),
    ``data.max_length`` and, for the teacher's dev score, the dev split.
    """
    teacher = sorted(_stamp(m) for m in members)
    pool = hashlib.sha256(json.dumps([[p.id, p.tokens, p.image, p.image_size] for p in posts]).encode()).hexdigest()
    st = cfg.selftrain
    head_kwargs = OmegaConf.to_container(st.head_kwargs, resolve=True)
    settings = {
        "head": st.head,
        "head_kwargs": head_kwargs,
        "head_files": {k: _stamp(v) for k, v in head_kwargs.items() if isinstance(v, str) and Path(v).is_file()},
        "rows": bool(st.soft_targets or st.outside_min is not None),
        "max_length": cfg.data.max_length,
        "dev": [cfg.data.root, cfg.data.dev, cfg.data.format],
    }
    blob = json.dumps({"teacher": teacher, "pool": pool, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (POSIX ``flock``; elsewhere none: runs sharing a folder must not overlap).

    Without the lock, two writers of one key share the ``.tmp`` folder and the second ``os.replace`` meets the first
    one's entry: one of the runs fails.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(entry: Path, labels: Labels) -> None:
    tmp = entry.with_name(entry.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_jsonl(labels["preds"], tmp / "preds.jsonl")
    rows = labels["rows"]
    lengths = None if rows is None else [len(r) for r in rows]
    if rows is not None:
        flat = [w for r in rows for w in r]
        np.save(tmp / "rows.npy", np.asarray(flat, dtype=np.float32).reshape(len(flat), len(labels["labels"])))
    meta = {"labels": labels["labels"], "teacher_dev_mner_f1": labels["teacher_dev_mner_f1"], "lengths": lengths}
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, entry)


def _read(entry: Path) -> Labels:
    meta = json.loads((entry / "meta.json").read_text())
    preds = read_jsonl(entry / "preds.jsonl")
    rows = None
    if meta["lengths"] is not None:
        flat = np.load(entry / "rows.npy").tolist()
        rows, at = [], 0
        for n in meta["lengths"]:
            rows.append(flat[at : at + n])
            at += n
    return {"preds": preds, "rows": rows, "labels": meta["labels"], "teacher_dev_mner_f1": meta["teacher_dev_mner_f1"]}


def cached_labels(folder: Path, key: str, label: Callable[[], Labels]) -> tuple[Labels, bool]:
    """The labels of ``key`` from ``folder``, or ``label()``'s, written there first.

    Returns:
        The labels and whether they came from the cache.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / key
    with _locked(folder / f"{key}.lock"):
        if (entry / "meta.json").is_file():
            return _read(entry), True
        if entry.exists():  # meta.json is written last, so an entry without it was left by a removal cut short
            logger.warning("%s: incomplete label cache entry; labelling again", entry)
            shutil.rmtree(entry)
        labels = label()
        _write(entry, labels)
        return labels, False
