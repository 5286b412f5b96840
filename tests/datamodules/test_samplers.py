import pytest

from refineg.datamodules.samplers import BucketBatchSampler, RatioBatchSampler


def test_ranks_split_each_global_batch():
    lengths = [i % 37 for i in range(100)]
    single = BucketBatchSampler(lengths, 8, seed=3)
    ranks = [BucketBatchSampler(lengths, 8, rank=r, world=2, seed=3) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(1)
    single_batches = list(single)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == len(single_batches) == len(single)
    for a, b, full in zip(r0, r1, single_batches):
        assert sorted(a + b) == sorted(full) and len(a) == len(b)
    assert sorted(i for b in single_batches for i in b) == list(range(100))


def test_bucketing_reduces_padding_and_epochs_differ():
    lengths = [(i * 7919) % 100 for i in range(400)]
    bucket = BucketBatchSampler(lengths, 16, seed=0)
    plain = BucketBatchSampler(lengths, 16, seed=0, bucket=False)

    def padding(s):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in s)

    assert padding(bucket) < 0.3 * padding(plain)
    first = list(bucket)
    bucket.set_epoch(1)
    assert list(bucket) != first


def test_ratio_sampler_fixed_share():
    s = RatioBatchSampler(n_gold=40, n_synthetic=100, batch_size=8, ratio=0.25)
    batches = list(s)
    assert len(batches) == len(s) == 7
    for b in batches[:-1]:
        assert sum(i >= 40 for i in b) == 2 and len(b) == 8
    assert sorted(i for b in batches for i in b if i < 40) == list(range(40))
    with pytest.raises(ValueError, match="ratio"):
        RatioBatchSampler(4, 4, 8, ratio=1.5)


def test_eval_sampler_covers_every_post_once_across_ranks():
    from refineg.datamodules.samplers import EvalBatchSampler

    lengths = list(range(11))
    got = [i for r in range(2) for b in EvalBatchSampler(lengths, 4, r, 2) for i in b]
    assert sorted(got) == list(range(11))
    assert list(EvalBatchSampler(lengths, 4))[0] == [10, 9, 8, 7]
