"""DataModule mixing gold and synthetic posts for the small tagger."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import lightning as L
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from refineg.config import MIXING_MODES, DataConfig, as_dictconfig, resolve_data_root
from refineg.data import DataFormatError, Example, ReadReport, bio_labels, read_jsonl
from refineg.data.formats import create_data_format
from refineg.datamodules.encoding import EncodedPost, PostCollator, encode_posts
from refineg.datamodules.samplers import BucketBatchSampler, EvalBatchSampler, RatioBatchSampler
from refineg.errors import UsageError
from refineg.weights import load_tokenizer

logger = logging.getLogger(__name__)


class EncodedDataset(Dataset):
    """A list of :class:`EncodedPost` (items are already tokenised)."""

    def __init__(self, posts: list[EncodedPost]) -> None:
        self.posts = posts

    def __len__(self) -> int:
        return len(self.posts)

    def __getitem__(self, i: int) -> EncodedPost:
        return self.posts[i]


def read_split(data: DictConfig, split: str) -> list[Example]:
    """Reads one split (``train``/``dev``/``test``) as configured by ``data`` (format, root, paths).

    The format's ``split_reader`` (:class:`refineg.data.formats.DataFormat`) reads it.

    Raises:
        KeyError: ``data.format`` is not a registered format (the message lists them).
        ValueError: The format has no split reader (convert it to JSONL first).
    """
    data = as_dictconfig(data)
    root = resolve_data_root(data)
    path = root / data[split]
    report = ReadReport()
    fmt = create_data_format(data.format)
    if fmt.split_reader is None:
        raise ValueError(
            f"data.format {data.format!r} is not a training format; convert it to jsonl first (refineg convert)"
        )
    examples = fmt.split_reader(path, root, data, report)
    if report.counts:
        logger.warning("%s: reader warnings\n%s", path, report.summary())
    return examples


def has_test_split(data: DictConfig) -> bool:
    """Whether ``data`` has a test split to read.

    A release folder without the standard ``txt/test.txt`` (the data groups' default path) has none: a warning says
    so and the run goes on with dev scores only. Any other test path that does not exist is an error.

    Raises:
        FileNotFoundError: ``data.test`` names a file other than the default that does not exist.
    """
    data = as_dictconfig(data)
    if not data.get("test"):
        return False
    path = resolve_data_root(data) / data.test
    if path.is_file():
        return True
    if data.test == DataConfig.test:
        logger.warning(
            "%s does not exist: no test split, only dev scores (data.test=null says so and silences this)", path
        )
        return False
    raise FileNotFoundError(f"{path}: test split not found; set data.test=null to train without a test split")


def sample_gold(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """The fixed seeded sample of ``limit`` gold training posts (all of them when ``limit`` is ``None`` or larger).

    Training (``data.gold_limit``) and synthesis (seeds from a data config) draw the same posts for the same seed.
    """
    if limit is None or limit >= len(examples):
        return examples
    return random.Random(seed).sample(examples, limit)


def gold_posts(examples: list[Example], data: DataConfig | DictConfig, seed: int) -> list[Example]:
    """A run's gold training posts: the :func:`sample_gold` of ``data.gold_limit`` posts.

    They are drawn with ``data.gold_seed``, or with the run's ``seed`` when that is unset.
    """
    gold_seed = getattr(data, "gold_seed", None)
    return sample_gold(examples, data.gold_limit, seed if gold_seed is None else gold_seed)


def apply_pseudo_labels(
    encoded: list[EncodedPost], examples: list[Example], labels: list[str], source: str | Path | None
) -> None:
    """Adds what ``meta["pseudo"]`` of pseudo-labelled posts says to their encodings (in place).

    ``meta["pseudo"]["unlabeled"]``: ``[start, end)`` word spans whose labels are unknown (no supervision there);
    ``meta["pseudo"]["word_targets"]``: one label distribution per word over ``meta["pseudo"]["labels"]`` (soft
    targets; the label order must be the tagger's).

    Raises:
        DataFormatError: Soft targets over another label inventory, or not one row per word.
    """
    for post, ex in zip(encoded, examples):
        info = ex.meta.get("pseudo") or {}
        kept = len(post.word_starts)
        rows = info.get("word_targets")
        if rows is not None:
            if list(info.get("labels") or []) != labels:
                raise DataFormatError(
                    source or "pseudo", f"word_targets are over labels {info.get('labels')}, not {labels}", record=ex.id
                )
            if len(rows) != len(ex.tokens) or any(len(r) != len(labels) for r in rows):
                raise DataFormatError(
                    source or "pseudo", f"word_targets need {len(ex.tokens)} rows of {len(labels)}", record=ex.id
                )
            post.targets = [[float(v) for v in r] for r in rows[:kept]]
        for start, end in info.get("unlabeled") or []:
            for w in range(max(0, start), min(end, kept)):
                post.labels[w] = -100
                if post.targets is not None:
                    post.targets[w] = [0.0] * len(labels)


class GMNERDataModule(L.LightningDataModule):
    """Gold (+ synthetic) posts -> length-bucketed, dynamically padded batches.

    Mixing modes: ``gold_only``; ``concat`` (one shuffled pool); ``ratio`` (a fixed synthetic share in every batch);
    ``two_stage`` (synthetic only for ``synthetic_epochs`` epochs, then gold only). Synthetic posts carry the loss
    weight ``synthetic_weight``. Pseudo-labelled posts (``data.pseudo``, self-training) join the synthetic pool
    with the weight ``pseudo_weight`` (see :func:`apply_pseudo_labels`). ``batch_size`` is global and divided by
    the world size.

    Args:
        data: The ``data`` config node.
        encoder: Encoder name (its tokenizer is used).
        word_dropout: Word dropout probability for training batches.
        seed: Seed for the gold sample and shuffling.
        run_dir: Where to record the chosen gold ids when ``gold_limit`` is set.
        image_transform: The image-aware model's preprocessing; images are loaded only when it is given.
    """

    def __init__(
        self,
        data: DictConfig,
        encoder: str,
        word_dropout: float = 0.0,
        seed: int = 42,
        run_dir: str | Path | None = None,
        image_transform=None,
    ) -> None:
        super().__init__()
        data = as_dictconfig(data)
        if data.mixing not in MIXING_MODES:
            raise UsageError(f"data.mixing must be one of {MIXING_MODES}, got {data.mixing!r}")
        if data.mixing != "gold_only" and not data.synthetic and not data.pseudo:
            raise UsageError(f"data.mixing={data.mixing} needs data.synthetic=<file.jsonl> or data.pseudo=<file.jsonl>")
        if 0 < data.pack_length < data.max_length:
            raise UsageError(
                f"data.pack_length={data.pack_length} is shorter than data.max_length={data.max_length}: "
                "a post of max_length subwords must fit a packed row"
            )
        self.cfg, self.encoder, self.word_dropout, self.seed = data, encoder, word_dropout, seed
        self.run_dir = Path(run_dir) if run_dir else None
        self.image_transform = image_transform
        if image_transform is not None and not data.image_dir:
            logger.warning("image-aware model without data.image_dir: every post is tagged text-only")
        self.labels = bio_labels(list(data.types))
        self.label_ids = {t: i for i, t in enumerate(self.labels)}
        self.tokenizer = None
        self.examples: dict[str, list[Example]] = {}
        self.encoded: dict[str, list[EncodedPost]] = {}

    def _tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.encoder)
            if not self.tokenizer.is_fast:
                raise ValueError(f"encoder {self.encoder!r} has no fast tokenizer (needed for word alignment)")
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Reads and tokenises every split once (idempotent)."""
        if self.encoded:
            return
        cfg = self.cfg
        train = read_split(cfg, "train")
        if cfg.gold_limit is not None and cfg.gold_limit < len(train):
            train = gold_posts(train, cfg, self.seed)
            if self.run_dir is not None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "gold_ids.json").write_text(json.dumps([e.id for e in train]))
        synthetic = (
            read_jsonl(cfg.synthetic, types=list(cfg.types)) if cfg.synthetic and cfg.mixing != "gold_only" else []
        )
        pseudo = read_jsonl(cfg.pseudo, types=list(cfg.types)) if cfg.pseudo and cfg.mixing != "gold_only" else []
        self.examples = {"train": train, "synthetic": synthetic, "pseudo": pseudo, "dev": read_split(cfg, "dev")}
        self._check_not_empty()
        if has_test_split(cfg):
            self.examples["test"] = read_split(cfg, "test")
        tok = self._tokenizer()
        for name, examples in self.examples.items():
            weight = {"synthetic": cfg.synthetic_weight, "pseudo": cfg.pseudo_weight}.get(name)
            weights = [weight] * len(examples) if weight is not None else None
            image_dir = cfg.image_dir if self.image_transform is not None else None
            self.encoded[name] = encode_posts(examples, tok, self.label_ids, cfg.max_length, weights, image_dir)
        apply_pseudo_labels(self.encoded["pseudo"], self.examples["pseudo"], self.labels, cfg.pseudo)
        # pseudo-labelled posts join the synthetic ones: every mixing mode treats them as the non-gold pool
        self.encoded["synthetic"] += self.encoded.pop("pseudo")
        for k, post in enumerate(self.encoded["synthetic"]):  # batch "index" = position in the gold + non-gold pool
            post.index = len(self.encoded["train"]) + k
        logger.info("posts: %s", {k: len(v) for k, v in self.examples.items()})

    def _check_not_empty(self) -> None:
        """Raises :class:`DataFormatError` when a training stage or the dev split would have no posts."""
        cfg, root = self.cfg, resolve_data_root(self.cfg)
        train, synthetic = self.examples["train"], self.examples["synthetic"] + self.examples["pseudo"]
        extra = " and ".join(str(f) for f in (cfg.synthetic, cfg.pseudo) if f)
        gold_file = str(root / cfg.train) + (
            f" (data.gold_limit={cfg.gold_limit})" if cfg.gold_limit is not None else ""
        )
        stages = {"gold_only": [(train, gold_file)], "two_stage": [(synthetic, extra), (train, gold_file)]}
        for posts, source in stages.get(cfg.mixing, [(train + synthetic, f"{gold_file} and {extra}")]):
            if not posts:
                raise DataFormatError(source, "no posts to train on")
        if not self.examples["dev"]:
            raise DataFormatError(root / cfg.dev, "no posts to validate on (the dev split picks the checkpoint)")

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _collator(self, train: bool) -> PostCollator:
        tok = self._tokenizer()
        return PostCollator(
            tok.pad_token_id,
            tok.unk_token_id,
            self.word_dropout if train else 0.0,
            self.image_transform,
            pad_to_multiple_of=self.cfg.pad_to_multiple_of,
            pack_length=self.cfg.pack_length,
            num_labels=len(self.labels),
        )

    def train_token_ids(self) -> list[int]:
        """Sorted subword ids a training batch can hold (call after :meth:`setup`).

        Every training post's ids (gold and non-gold, all epochs) and the tokenizer's special ids (padding, word
        dropout's unknown id, separators). The same on every DDP rank: each rank encodes the whole training pool
        (the samplers split it).
        """
        ids = set(self._tokenizer().all_special_ids)
        for post in self.encoded["train"] + self.encoded["synthetic"]:
            ids.update(post.input_ids)
        return sorted(ids)

    def train_posts(self, epoch: int) -> tuple[list[EncodedPost], int]:
        """Posts of the training pool for ``epoch`` and how many of them (the first ones) are gold."""
        gold, syn = self.encoded["train"], self.encoded["synthetic"]
        mode = self.cfg.mixing
        if mode == "gold_only":
            return gold, len(gold)
        if mode == "two_stage":
            return (syn, 0) if epoch < self.cfg.synthetic_epochs else (gold, len(gold))
        return gold + syn, len(gold)

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        rank, world = self._world()
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        posts, n_gold = self.train_posts(epoch)
        if self.cfg.mixing == "ratio":
            sampler = RatioBatchSampler(
                n_gold, len(posts) - n_gold, self.cfg.batch_size, self.cfg.synthetic_ratio, rank, world, self.seed
            )
        else:
            sampler = BucketBatchSampler(
                [len(p.input_ids) for p in posts],
                self.cfg.batch_size,
                shuffle=True,
                bucket=self.cfg.bucket,
                rank=rank,
                world=world,
                seed=self.seed,
            )
        return self._loader(posts, sampler, train=True)

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = self._world()
        posts = self.encoded[split]
        sampler = EvalBatchSampler([len(p.input_ids) for p in posts], self.cfg.eval_batch_size, rank, world)
        return self._loader(posts, sampler, train=False)

    def _loader(self, posts: list[EncodedPost], sampler, train: bool) -> DataLoader:
        return DataLoader(
            EncodedDataset(posts),
            batch_sampler=sampler,
            collate_fn=self._collator(train),
            num_workers=self.cfg.num_workers,
            pin_memory=self._pin(),
            persistent_workers=self.cfg.num_workers > 0,
        )

    def _pin(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        return self._eval_loader("dev")

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self._eval_loader("test")

    def steps_per_epoch(self, epoch: int) -> int:
        """Optimizer batches in ``epoch`` (before gradient accumulation)."""
        posts, n_gold = self.train_posts(epoch)
        if self.cfg.mixing == "ratio":
            return len(RatioBatchSampler(n_gold, len(posts) - n_gold, self.cfg.batch_size, self.cfg.synthetic_ratio))
        return len(BucketBatchSampler([0] * len(posts), self.cfg.batch_size, world=self._world()[1]))
