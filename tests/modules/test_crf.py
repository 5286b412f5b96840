"""Tests for refineg.modules.crf against brute-force enumeration and pytorch-crf."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from refineg.modules.crf import IMPOSSIBLE, LinearChainCRF, bio_constraints, bio_span_tags

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # K = 5


def make_crf(constrained: bool, num_tags: int = 5, seed: int = 0) -> LinearChainCRF:
    torch.manual_seed(seed)
    if constrained:
        crf = LinearChainCRF.from_bio_labels(LABELS[:num_tags])
    else:
        crf = LinearChainCRF(num_tags)
    with torch.no_grad():  # larger scores than the default init make the tests more discriminative
        crf.start.normal_(0, 1)
        crf.end.normal_(0, 1)
        crf.transitions.normal_(0, 1)
    return crf


def make_batch(lengths: list[int], num_tags: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    emissions = torch.randn(len(lengths), steps, num_tags, generator=gen) * 2
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    return emissions, mask


def path_allowed(crf: LinearChainCRF, path: tuple[int, ...]) -> bool:
    if not crf.allowed_start[path[0]] or not crf.allowed_end[path[-1]]:
        return False
    return all(bool(crf.allowed_transitions[a, b]) for a, b in itertools.pairwise(path))


def path_score(crf: LinearChainCRF, em: torch.Tensor, path: tuple[int, ...]) -> float:
    """Raw (unconstrained) score of a path for one post, in float64."""
    start, end, trans = crf.start.detach().double(), crf.end.detach().double(), crf.transitions.detach().double()
    em = em.double()
    score = start[path[0]] + end[path[-1]] + sum(em[t, y] for t, y in enumerate(path))
    score = score + sum(trans[a, b] for a, b in itertools.pairwise(path))
    return float(score)


def enumerate_paths(crf: LinearChainCRF, em: torch.Tensor, length: int) -> list[tuple[tuple[int, ...], float]]:
    """All allowed paths of a post with their raw scores (impossible paths have probability 0)."""
    out = []
    for path in itertools.product(range(crf.num_tags), repeat=length):
        if path_allowed(crf, path):
            out.append((path, path_score(crf, em[:length], path)))
    return out


def brute_log_z(paths: list[tuple[tuple[int, ...], float]]) -> float:
    scores = torch.tensor([s for _, s in paths], dtype=torch.float64)
    return float(torch.logsumexp(scores, 0))


def random_allowed_tags(crf: LinearChainCRF, lengths: list[int], seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tags = torch.full((len(lengths), max(lengths)), -100, dtype=torch.long)
    for b, length in enumerate(lengths):
        while True:
            path = torch.randint(crf.num_tags, (length,), generator=gen)
            if path_allowed(crf, tuple(path.tolist())):
                break
        tags[b, :length] = path
    return tags


LENGTHS = [4, 1, 3, 2]


# ---------------------------------------------------------------- BIO helpers


def test_bio_constraints() -> None:
    allowed_start, allowed = bio_constraints(LABELS)
    assert allowed_start.tolist() == [True, True, False, True, False]
    o, bp, ip, bl, il = range(5)
    assert not allowed[o, ip] and not allowed[o, il]
    assert allowed[bp, ip] and allowed[ip, ip] and not allowed[bl, ip] and not allowed[il, ip]
    assert allowed[bl, il] and allowed[il, il] and not allowed[bp, il]
    assert allowed[:, [o, bp, bl]].all()
    with pytest.raises(ValueError):
        bio_constraints(["O", "S-PER"])


def test_bio_span_tags() -> None:
    types, tags = bio_span_tags(LABELS)
    assert types == ["PER", "LOC"]
    assert tags.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError):
        bio_span_tags(["O", "B-PER"])


# ---------------------------------------------------------------- nll / Viterbi vs brute force


@pytest.mark.parametrize("constrained", [False, True])
def test_nll_matches_brute_force(constrained: bool) -> None:
    crf = make_crf(constrained)
    emissions, mask = make_batch(LENGTHS)
    tags = random_allowed_tags(crf, LENGTHS)
    loss = crf.nll(emissions, tags, mask, reduction="none")
    expected = []
    for b, length in enumerate(LENGTHS):
        paths = enumerate_paths(crf, emissions[b], length)
        gold = tuple(tags[b, :length].tolist())
        expected.append(brute_log_z(paths) - path_score(crf, emissions[b], gold))
    torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(crf.nll(emissions, tags, mask, reduction="sum"), loss.sum())
    torch.testing.assert_close(crf.nll(emissions, tags, mask), loss.mean())
    torch.testing.assert_close(crf.nll(emissions, tags, mask, reduction="token_mean"), loss.sum() / mask.sum())
    log_z = crf.log_partition(emissions, mask)
    expected_z = [brute_log_z(enumerate_paths(crf, emissions[b], n)) for b, n in enumerate(LENGTHS)]
    torch.testing.assert_close(log_z.double(), torch.tensor(expected_z, dtype=torch.float64), atol=1e-4, rtol=1e-5)


def test_impossible_gold_path_has_huge_loss() -> None:
    crf = make_crf(constrained=True)
    emissions, mask = make_batch([3])
    tags = torch.tensor([[0, 2, 2]])  # O -> I-PER
    assert crf.nll(emissions, tags, mask).item() > -IMPOSSIBLE / 2


@pytest.mark.parametrize("constrained", [False, True])
def test_viterbi_matches_brute_force(constrained: bool) -> None:
    crf = make_crf(constrained)
    emissions, mask = make_batch(LENGTHS)
    paths, scores = crf.decode(emissions, mask)
    assert paths.shape == mask.shape and paths.dtype == torch.long
    for b, length in enumerate(LENGTHS):
        best_path, best_score = max(enumerate_paths(crf, emissions[b], length), key=lambda item: item[1])
        assert tuple(paths[b, :length].tolist()) == best_path
        assert (paths[b, length:] == -1).all()
        assert scores[b].item() == pytest.approx(best_score, abs=1e-4)


def test_decode_respects_constraints() -> None:
    crf = LinearChainCRF.from_bio_labels(LABELS)
    with torch.no_grad():  # make I- tags very attractive everywhere
        crf.start.zero_()
        crf.end.zero_()
        crf.transitions.zero_()
    torch.manual_seed(3)
    emissions = torch.randn(16, 12, 5)
    emissions[..., 2] += 5.0
    emissions[..., 4] += 5.0
    lengths = torch.randint(1, 13, (16,))
    mask = torch.arange(12)[None] < lengths[:, None]
    paths, _ = crf.decode(emissions, mask)
    allowed_start, allowed = bio_constraints(LABELS)
    for b in range(16):
        path = paths[b, : lengths[b]].tolist()
        assert allowed_start[path[0]]
        assert all(allowed[x, y] for x, y in itertools.pairwise(path))
    assert (paths == 2).any() or (paths == 4).any()  # the I- tags are still used where legal


# ---------------------------------------------------------------- pytorch-crf reference


def test_nll_matches_pytorch_crf() -> None:
    torchcrf = pytest.importorskip("torchcrf")
    crf = make_crf(constrained=False)
    ref = torchcrf.CRF(5, batch_first=True)
    with torch.no_grad():
        ref.start_transitions.copy_(crf.start)
        ref.end_transitions.copy_(crf.end)
        ref.transitions.copy_(crf.transitions)
    lengths = [7, 3, 1, 5, 7]
    emissions, mask = make_batch(lengths)
    tags = torch.randint(5, mask.shape, generator=torch.Generator().manual_seed(4))
    ours = crf.nll(emissions, tags.masked_fill(~mask, -100), mask, reduction="none")
    theirs = -ref(emissions, tags, mask, reduction="none")
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    ref_paths = ref.decode(emissions, mask)
    paths, _ = crf.decode(emissions, mask)
    for b, length in enumerate(lengths):
        assert paths[b, :length].tolist() == ref_paths[b]


# ---------------------------------------------------------------- marginals


@pytest.mark.parametrize("constrained", [False, True])
def test_token_marginals_match_brute_force(constrained: bool) -> None:
    crf = make_crf(constrained)
    emissions, mask = make_batch(LENGTHS)
    marg = crf.marginals(emissions, mask)
    assert marg.shape == emissions.shape
    torch.testing.assert_close(marg.sum(-1), mask.float(), atol=1e-5, rtol=0)
    for b, length in enumerate(LENGTHS):
        paths = enumerate_paths(crf, emissions[b], length)
        log_z = brute_log_z(paths)
        expected = torch.zeros(length, crf.num_tags, dtype=torch.float64)
        for path, score in paths:
            for t, y in enumerate(path):
                expected[t, y] += math.exp(score - log_z)
        torch.testing.assert_close(marg[b, :length].double(), expected, atol=1e-5, rtol=1e-4)
        assert (marg[b, length:] == 0).all()


def brute_span_prob(crf: LinearChainCRF, em: torch.Tensor, length: int, s: int, e: int, bx: int, ix: int) -> float:
    if not (0 <= s < e <= length):
        return 0.0
    paths = enumerate_paths(crf, em, length)
    log_z = brute_log_z(paths)
    total = 0.0
    for path, score in paths:
        exact = path[s] == bx and all(path[t] == ix for t in range(s + 1, e)) and (e == length or path[e] != ix)
        if exact:
            total += math.exp(score - log_z)
    return total


@pytest.mark.parametrize("constrained", [False, True])
def test_span_marginals_match_brute_force(constrained: bool) -> None:
    crf = make_crf(constrained)
    emissions, mask = make_batch(LENGTHS)
    _, type_tags = bio_span_tags(LABELS)
    # (batch, start, end exclusive, type); includes spans at position 0, spans ending at the last token,
    # single-token spans, whole-post spans, a span of a length-1 post and invalid spans (probability 0).
    spans = torch.tensor(
        [
            [0, 0, 1, 0],
            [0, 0, 2, 1],
            [0, 1, 3, 0],
            [0, 2, 4, 1],
            [0, 3, 4, 0],
            [0, 0, 4, 0],
            [1, 0, 1, 1],
            [2, 1, 3, 0],
            [2, 0, 3, 1],
            [2, 2, 3, 1],
            [3, 0, 1, 0],
            [3, 0, 2, 1],
            [3, 1, 3, 0],  # end beyond the post's length -> 0
            [0, 2, 2, 0],  # empty -> 0
        ]
    )
    probs = crf.span_marginals(emissions, mask, spans, type_tags)
    assert probs.shape == (len(spans),)
    expected = []
    for b, s, e, typ in spans.tolist():
        bx, ix = type_tags[typ].tolist()
        expected.append(brute_span_prob(crf, emissions[b], LENGTHS[b], s, e, bx, ix))
    torch.testing.assert_close(probs.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-4)
    assert probs[-2:].eq(0).all()
    # Reusing a precomputed forward-backward gives the same result.
    fb = crf.forward_backward(emissions, mask)
    torch.testing.assert_close(crf.span_marginals(emissions, mask, spans, type_tags, fb=fb), probs)


def test_span_at_last_token_equals_token_marginal() -> None:
    # A single-token span at the last token has nothing after it: its probability is P(y_t = B-X).
    crf = make_crf(constrained=True)
    emissions, mask = make_batch([6], seed=5)
    marg = crf.marginals(emissions, mask)
    _, type_tags = bio_span_tags(LABELS)
    prob_last = crf.span_marginals(emissions, mask, torch.tensor([[0, 5, 6, 0]]), type_tags)
    torch.testing.assert_close(prob_last, marg[0, 5, 1:2], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- gradients, shapes, dtypes


def test_gradients_flow() -> None:
    crf = make_crf(constrained=True)
    emissions, mask = make_batch(LENGTHS)
    emissions.requires_grad_(True)
    tags = random_allowed_tags(crf, LENGTHS)
    crf.nll(emissions, tags, mask).backward()
    assert emissions.grad is not None and torch.isfinite(emissions.grad).all()
    assert (emissions.grad[~mask] == 0).all()
    for param in (crf.start, crf.end, crf.transitions):
        assert param.grad is not None and torch.isfinite(param.grad).all()
    # Impossible entries are constants: no gradient reaches the raw parameter there.
    assert (crf.transitions.grad[~crf.allowed_transitions] == 0).all()
    assert (crf.start.grad[~crf.allowed_start] == 0).all()
    # Span marginals are differentiable too.
    emissions.grad = None
    _, type_tags = bio_span_tags(LABELS)
    crf.span_marginals(emissions, mask, torch.tensor([[0, 1, 3, 0]]), type_tags).sum().backward()
    assert torch.isfinite(emissions.grad).all() and emissions.grad.abs().sum() > 0


def test_batch_of_one_and_no_mask() -> None:
    crf = make_crf(constrained=True)
    emissions, _ = make_batch([4])
    tags = random_allowed_tags(crf, [4])
    loss = crf.nll(emissions, tags)  # mask=None -> all tokens real
    assert loss.shape == () and torch.isfinite(loss)
    paths, scores = crf.decode(emissions)
    assert paths.shape == (1, 4) and scores.shape == (1,)
    assert crf.marginals(emissions).shape == (1, 4, 5)
    # A single time step (T = 1).
    em1 = emissions[:, :1]
    expected = torch.logsumexp(crf._potentials()[0] + em1[0, 0] + crf._potentials()[2], 0) - (
        crf.start[1] + em1[0, 0, 1] + crf.end[1]
    )
    torch.testing.assert_close(crf.nll(em1, torch.tensor([[1]])), expected)
    assert crf.decode(em1)[0].shape == (1, 1)


def test_bf16_autocast_on_cpu() -> None:
    crf = make_crf(constrained=True)
    emissions, mask = make_batch(LENGTHS)
    tags = random_allowed_tags(crf, LENGTHS)
    ref_loss = crf.nll(emissions.bfloat16().float(), tags, mask)
    ref_paths, _ = crf.decode(emissions.bfloat16().float(), mask)
    em_bf16 = emissions.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crf.nll(em_bf16, tags, mask)
        paths, scores = crf.decode(em_bf16, mask)
        marg = crf.marginals(em_bf16, mask)
    assert loss.dtype == torch.float32 and scores.dtype == torch.float32 and marg.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss)
    assert torch.equal(paths, ref_paths)
    loss.backward()
    assert em_bf16.grad is not None and em_bf16.grad.dtype == torch.bfloat16


def test_invalid_inputs() -> None:
    crf = LinearChainCRF(3)
    with pytest.raises(ValueError):
        crf.nll(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        crf.nll(torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError):
        LinearChainCRF(3, allowed_transitions=torch.ones(2, 2, dtype=torch.bool))


def test_state_dict_round_trip_keeps_constraints() -> None:
    crf = make_crf(constrained=True)
    clone = LinearChainCRF(5)
    clone.load_state_dict(crf.state_dict())
    assert torch.equal(clone.allowed_transitions, crf.allowed_transitions)
    emissions, mask = make_batch(LENGTHS)
    torch.testing.assert_close(clone.log_partition(emissions, mask), crf.log_partition(emissions, mask))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    crf = make_crf(constrained=True)
    emissions, mask = make_batch(LENGTHS)
    tags = random_allowed_tags(crf, LENGTHS)
    _, type_tags = bio_span_tags(LABELS)
    spans = torch.tensor([[0, 1, 3, 0], [2, 0, 1, 1]])
    cuda_crf = make_crf(constrained=True).cuda()
    cuda_crf.load_state_dict(crf.state_dict())
    em_c, mask_c, tags_c = emissions.cuda(), mask.cuda(), tags.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_c = cuda_crf.nll(em_c, tags_c, mask_c)
    torch.testing.assert_close(loss_c.cpu(), crf.nll(emissions, tags, mask), atol=1e-4, rtol=1e-5)
    assert torch.equal(cuda_crf.decode(em_c, mask_c)[0].cpu(), crf.decode(emissions, mask)[0])
    torch.testing.assert_close(
        cuda_crf.span_marginals(em_c, mask_c, spans, type_tags).cpu(),
        crf.span_marginals(emissions, mask, spans, type_tags),
        atol=1e-5,
        rtol=1e-4,
    )
