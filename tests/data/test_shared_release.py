"""Reads the real Twitter-GMNER v2.0 release in ../shared (skipped when it is absent)."""

import pytest

from refineg.data import ReadReport
from refineg.data.twitter_gmner import read_twitter_gmner
from tests.conftest import SHARED_GMNER

pytestmark = pytest.mark.skipif(not SHARED_GMNER.is_dir(), reason=f"Twitter-GMNER release not found at {SHARED_GMNER}")


@pytest.mark.parametrize("split, posts, entities", [("train", 7000, 11779), ("dev", 1500, 2450)])
def test_release_counts(split, posts, entities):
    report = ReadReport()
    examples = read_twitter_gmner(SHARED_GMNER / "txt" / f"{split}.txt", SHARED_GMNER / "xml", report=report)
    assert len(examples) == posts
    assert sum(len(e.entities) for e in examples) == entities
    grounded = sum(1 for e in examples for ent in e.entities if ent.boxes)
    assert 0.35 < grounded / entities < 0.45  # about 60% of entities have no box
    assert not report.counts
