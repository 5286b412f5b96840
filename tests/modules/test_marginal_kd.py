"""Token-level distillation (``model.marginal_kd``): the heads' soft cross-entropy and the training loss with it."""

import math
from dataclasses import asdict

import pytest
import torch

from refineg.config import ModelConfig, OptimConfig, load_config
from refineg.modules.heads import create_head
from refineg.modules.tagger_module import TaggerModule
from tests.modules.test_crf import LABELS, brute_log_z, enumerate_paths, make_batch
from tests.modules.test_rdrop import TYPES, _module_and_batch


def _targets(mask: torch.Tensor, k: int, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Per post: a soft row (``teacher`` or a random distribution), a one-hot row, an unlabelled row, soft rows."""
    gen = torch.Generator().manual_seed(5)
    t = torch.softmax(torch.randn(*mask.shape, k, generator=gen) * 2, -1) if teacher is None else teacher.clone()
    t[:, 1] = torch.nn.functional.one_hot(torch.tensor(3), k).float()
    t[:, 2] = 0.0
    return t


def test_crf_soft_cross_entropy_uses_the_crf_marginals_of_soft_rows_only():
    head = create_head("crf", hidden_size=4, labels=LABELS)
    with torch.no_grad():
        for p in (head.crf.start, head.crf.end, head.crf.transitions):
            p.normal_(0, 1)
    lengths = [5, 4]
    emissions, mask = make_batch(lengths)
    teacher = create_head("crf", hidden_size=4, labels=LABELS)  # another CRF's marginals, as a teacher's
    targets = _targets(mask, len(LABELS), teacher.crf.marginals(torch.randn_like(emissions) * 2, mask).detach())
    got = head.soft_cross_entropy(emissions, targets, mask)
    for b, length in enumerate(lengths):
        paths = enumerate_paths(head.crf, emissions[b], length)
        log_z = brute_log_z(paths)
        marg = torch.zeros(length, len(LABELS), dtype=torch.float64)
        for path, score in paths:
            for t, y in enumerate(path):
                marg[t, y] += math.exp(score - log_z)
        soft = [t for t in range(length) if t not in (1, 2)]  # word 1 is one-hot, word 2 unlabelled
        ce = [-(targets[b, t].double() * marg[t].clamp(min=1e-300).log()).sum() for t in soft]
        assert float(got[b].detach()) == pytest.approx(float(sum(ce) / len(ce)), rel=1e-4)
    assert head.soft_cross_entropy(emissions, torch.zeros_like(targets), mask).tolist() == [0.0, 0.0]


def test_softmax_soft_cross_entropy_and_its_gradient_moves_towards_the_targets():
    head = create_head("softmax", hidden_size=4, labels=LABELS)
    emissions, mask = make_batch([3])
    targets = _targets(mask, len(LABELS))
    log_p = emissions.log_softmax(-1)
    assert float(head.soft_cross_entropy(emissions, targets, mask)[0]) == pytest.approx(
        float(-(targets[0, 0] * log_p[0, 0]).sum()), rel=1e-5
    )  # only word 0 is soft
    crf = create_head("crf", hidden_size=4, labels=LABELS)
    em = emissions.clone().requires_grad_(True)
    loss = crf.soft_cross_entropy(em, targets, mask).sum()
    loss.backward()
    assert crf.soft_cross_entropy(em.detach() - 0.5 * em.grad, targets, mask).sum() < loss


def test_training_loss_adds_the_weighted_term_only_where_targets_are_soft(tiny_encoder):
    module, batch = _module_and_batch(tiny_encoder, rdrop=0.0)
    plain = TaggerModule(
        asdict(ModelConfig(encoder=tiny_encoder, dropout=0.0)), asdict(OptimConfig()), TYPES, pretrained=True
    )
    kd = TaggerModule(
        asdict(ModelConfig(encoder=tiny_encoder, dropout=0.0, marginal_kd=0.5)), asdict(OptimConfig()), TYPES
    )
    kd.load_state_dict(plain.state_dict())
    plain.eval(), kd.eval()
    # hard labels only (gold posts): the term is not there
    assert float(kd.tagging_loss(batch)) == pytest.approx(float(plain.tagging_loss(batch)), rel=1e-6)
    soft = {**batch, "targets": _targets(batch["word_mask"], len(plain.labels))}
    emissions = plain(soft)
    head, mask = plain.tagger.head, soft["word_mask"]
    per_post = head.target_loss(emissions, soft["targets"], mask) + 0.5 * head.soft_cross_entropy(
        emissions, soft["targets"], mask
    )
    weight = soft["weight"]
    expected = (per_post * weight).sum() / weight.sum()
    assert float(kd.tagging_loss(soft)) == pytest.approx(float(expected), rel=1e-5)
    assert float(kd.tagging_loss(soft)) > float(plain.tagging_loss(soft))


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="model.marginal_kd=-1.0 must not be negative"):
        load_config(["model.marginal_kd=-1"])
