"""Times ContextSelector (text + entity terms, no images) on a pool and a query file; CPU, one torch thread.

Usage: python bench/grounding_selector.py POOL.jsonl QUERIES.jsonl INDEX.pt
"""

import sys
import time

import torch

from refineg.data import read_jsonl
from refineg.stages.grounding.config import SelectorConfig
from refineg.stages.grounding.images import PostImages
from refineg.stages.grounding.selector import ContextSelector

torch.set_num_threads(1)
pool, queries = read_jsonl(sys.argv[1]), read_jsonl(sys.argv[2])
t0 = time.perf_counter()
sel = ContextSelector(pool, SelectorConfig(w_image=0.0), PostImages(None), sys.argv[3])
sel.build_index()
t1 = time.perf_counter()
demos = []
for lo in range(0, len(queries), 64):
    demos += sel.select(queries[lo : lo + 64])
t2 = time.perf_counter()
names = [{e.text(p.tokens).lower() for e in p.entities} for p in pool]
with_ents = [(q, d) for q, d in zip(queries, demos, strict=True) if q.entities]
share = sum(any(names[i] & {e.text(q.tokens).lower() for e in q.entities} for i in d) for q, d in with_ents)
print(
    f"index build ({len(pool)} posts, {len(sel.index['ent'])} entity strings): {t1 - t0:.1f}s; "
    f"select {len(queries)} queries k=3: {t2 - t1:.1f}s; "
    f"queries with entities whose top-3 demos share an entity string: {share}/{len(with_ents)}"
)
