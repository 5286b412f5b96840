"""Typed configuration of ``refineg selftrain``: a whole training config plus ``selftrain`` and ``refine`` sections.

``load_selftrain_config(["data.unlabeled_from_train=true", "selftrain.rounds=2", "selftrain.refine_backend=mllm",
"refine.llm.model=M"])`` reads the training config's files and groups (``configs/default.yaml``, ``data=``,
``model=``, ``experiment=``) with the one grammar of :mod:`refineg.config`; ``refine`` is every ``refineg refine`` key
of the delegation (its ``backend``, ``tau``, ``types`` and ``run_dir`` are set by the stage from ``selftrain``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refineg.config import TrainConfig, load_typed
from refineg.stages.refinement.config import RefineConfig

from .select import SELECTIONS, UNCERTAIN_POLICIES


@dataclass
class SelfTrainSettings:
    """The ``selftrain`` section: the rounds, the pseudo-label selection and the delegation."""

    rounds: int = 3  # most pseudo-labelling rounds after the round-0 model (trained on gold + synthetic only)
    head: str = "crf_marginal"  # uncertainty head (registry name) that scores each pseudo-labelled entity
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    tau: float = 0.2  # an entity with uncertainty <= tau is confident
    selection: str = "entity"  # entity: keep confident entities | post: keep posts whose entities are all confident
    uncertain: str = "mask"  # entity selection, posts with uncertain entities: mask | drop_entity | drop_post
    empty_posts: bool = True  # keep pool posts where the teacher finds no entity (all words O)
    soft_targets: bool = False  # train on the teacher's per-word CRF marginals instead of its decoded labels
    # a word outside the kept entities counts as O only when the teacher's P(O) >= outside_min, else it is left
    # unlabelled (the teacher's missed entities then do not train as O); None: every such word is O
    outside_min: float | None = None
    # trainer.max_epochs of the pseudo-labelling rounds (None: the same as round 0); when set, those rounds are scored
    # on dev every epoch (trainer.check_val_every_n_epoch then applies to round 0 only)
    epochs: int | None = None
    init: str = "scratch"  # scratch: every round starts from the pretrained encoder | teacher: from the teacher
    teacher: str = "best"  # best: the best round so far labels the pool | last: the previous round
    # more teacher checkpoints (same encoder and types, e.g. other seeds): the round's teacher and these label the
    # pool as one geometric-mean ensemble (refineg.inference.ensemble); may be set when a run is continued
    ensemble: list[str] = field(default_factory=list)
    # folder of the teacher's pool labels, shared by runs whose teacher can be the same (e.g. the seeds of one
    # ensemble); None: <run folder>/labels, so that a continued run does not label a round's pool again
    label_cache: str | None = None
    patience: int = 1  # stop after this many rounds without a dev MNER F1 gain of more than min_delta
    min_delta: float = 0.0
    # none | mllm | oracle | noisy-oracle: delegate uncertain pseudo-labels (settings in the refine section)
    refine_backend: str = "none"


@dataclass
class SelfTrainConfig(TrainConfig):
    """Everything ``refineg selftrain`` needs: the training keys, the rounds and the delegation.

    Attributes:
        selftrain: The rounds, the pseudo-label selection and the delegation backend.
        refine: The delegation's refinement settings (``selftrain.refine_backend`` other than ``none``);
            ``gold`` defaults to the hidden labels of a training-split pool for the simulations.
    """

    selftrain: SelfTrainSettings = field(default_factory=SelfTrainSettings)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def validate(self) -> SelfTrainConfig:
        """Checks the ``selftrain`` section and the training keys self-training cannot use; returns ``self``.

        Raises:
            ValueError: A value out of range, an unknown choice or a training setting the rounds cannot use.
        """
        super().validate()
        st = self.selftrain
        if st.selection not in SELECTIONS:
            raise ValueError(f"selftrain.selection must be one of {SELECTIONS}, got {st.selection!r}")
        if st.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"selftrain.uncertain must be one of {UNCERTAIN_POLICIES}, got {st.uncertain!r}")
        if st.init not in ("scratch", "teacher"):
            raise ValueError(f"selftrain.init must be scratch or teacher, got {st.init!r}")
        if st.teacher not in ("best", "last"):
            raise ValueError(f"selftrain.teacher must be best or last, got {st.teacher!r}")
        if not 0 <= st.tau <= 1:
            raise ValueError(f"selftrain.tau must be in [0, 1], got {st.tau}")
        if st.outside_min is not None and not 0 <= st.outside_min <= 1:
            raise ValueError(f"selftrain.outside_min must be in [0, 1], got {st.outside_min}")
        missing = [c for c in st.ensemble if not Path(c).is_file()]
        if missing:
            raise ValueError(f"selftrain.ensemble: no such checkpoint {missing[0]}")
        if st.ensemble and st.head == "evidential":
            raise ValueError(
                "selftrain.ensemble: the evidential head reads one tagger's word states, which an ensemble teacher "
                "does not have: use another selftrain.head (e.g. crf_marginal)"
            )
        if st.rounds < 0 or st.patience < 1 or (st.epochs is not None and st.epochs < 1):
            raise ValueError("selftrain.rounds must be >= 0, selftrain.patience >= 1 and selftrain.epochs >= 1")
        if st.soft_targets and self.model.head != "crf":
            raise ValueError("selftrain.soft_targets=true uses CRF marginals: it needs model.head=crf")
        if self.trainer.strategy == "ddp":
            raise ValueError(
                "self-training runs on one device (DDP relaunches the whole command): trainer.strategy=auto"
            )
        if st.refine_backend != "none":  # checked now, not after round 0 has trained
            from refineg.stages.refinement import list_refinement_backends

            if st.refine_backend not in list_refinement_backends():
                known = ", ".join(["none", *list_refinement_backends()])
                raise ValueError(f"selftrain.refine_backend={st.refine_backend!r}: choose one of {known}")
        if st.refine_backend != "none" and self.refine.mode != "gated":
            raise ValueError(
                f"self-training delegates uncertain pseudo-labels with the gated refinement mode; "
                f"refine.mode={self.refine.mode!r} is not supported here"
            )
        simulated = st.refine_backend in ("oracle", "noisy-oracle")
        if simulated and not (self.refine.gold or self.data.unlabeled_from_train or self.data.unlabeled_hidden_gold):
            raise ValueError(
                f"selftrain.refine_backend={st.refine_backend} simulates an MLLM from gold labels: set refine.gold, "
                "data.unlabeled_from_train=true or data.unlabeled_hidden_gold=true"
            )
        if self.data.pseudo:
            raise ValueError("data.pseudo is set by each self-training round; leave it unset")
        if self.model.groundability:
            raise ValueError("self-training trains the tagger only: set model.groundability=false")
        return self


def load_selftrain_config(overrides: Sequence[str] | None = None, *layers: Any) -> SelfTrainConfig:
    """Builds a :class:`SelfTrainConfig` from the training config's files, ``layers`` and ``key=value`` overrides.

    Raises:
        ValueError: A misspelt key, a wrongly typed value, a malformed override or a value ``validate()`` refuses.
    """
    return load_typed(SelfTrainConfig, overrides, *layers)
