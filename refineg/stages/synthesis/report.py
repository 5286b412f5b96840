"""What a synthesis run produced and rejected: counts by reason, per-type entity counts, JSON and a table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refineg.data import Example


@dataclass
class SynthesisReport:
    """Counters filled by the synthesisers and filters of one run.

    Attributes:
        seeds: Seeds used.
        seeds_without_entities: Seeds that have no entity (they get entity-free samples).
        requested: Samples asked for (LLM: ``n_reuse + n_new`` per seed; swap: ``per_seed`` per seed).
        produced: Candidate posts produced before any filter (LLM: samples parsed from the answers).
        requests: LLM request outcomes (``ok``, ``cached``, ``failed:<kind>``, ``budget_exhausted``).
        rejected_posts: Posts removed, by reason.
        dropped_entities: Entity labels removed while labelling or filtering, by reason.
        mapped_types: Unknown types renamed while labelling, ``"FROM->TO"``.
        relabelled_posts: Posts whose labels the consistency filter replaced.
        filled_entities: Entities the consistency filter added to unlabelled words.
        kept: Posts written per split (``train``, ``dev``).
        per_type: Entities written per split and type.
        settings: The config (for the JSON file).
    """

    seeds: int = 0
    seeds_without_entities: int = 0
    requested: int = 0
    produced: int = 0
    requests: Counter = field(default_factory=Counter)
    rejected_posts: Counter = field(default_factory=Counter)
    dropped_entities: Counter = field(default_factory=Counter)
    mapped_types: Counter = field(default_factory=Counter)
    relabelled_posts: int = 0
    filled_entities: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        """Counts ``n`` posts rejected for ``reason``."""
        self.rejected_posts[reason] += n

    def drop_entity(self, reason: str, n: int = 1) -> None:
        """Counts ``n`` entity labels dropped for ``reason``."""
        self.dropped_entities[reason] += n

    def record_output(self, split: str, examples: list[Example]) -> None:
        """Counts the posts and per-type entities written to ``split``."""
        self.kept[split] = len(examples)
        types: Counter = Counter(ent.type for ex in examples for ent in ex.entities)
        self.per_type[split] = dict(sorted(types.items()))

    @property
    def yield_rate(self) -> float:
        """Posts produced before filtering / posts requested."""
        return self.produced / self.requested if self.requested else 0.0

    @property
    def kept_rate(self) -> float:
        """Posts written / posts requested."""
        return sum(self.kept.values()) / self.requested if self.requested else 0.0

    def request_total(self) -> dict[str, Any]:
        """The LLM requests as a usage ``total`` (``requests``, ``ok``, ``failures_by_kind``; cached answers are ok).

        Malformed answers are counted with the answered requests they came from, not again.
        """
        requests = {k: v for k, v in self.requests.items() if k != "malformed_answer"}
        failures = {k.removeprefix("failed:"): v for k, v in requests.items() if k not in ("ok", "cached")}
        ok = requests.get("ok", 0) + requests.get("cached", 0)
        return {"requests": sum(requests.values()), "ok": ok, "failures_by_kind": failures}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "seeds": self.seeds,
            "seeds_without_entities": self.seeds_without_entities,
            "requested": self.requested,
            "produced": self.produced,
            "yield": round(self.yield_rate, 4),
            "kept": self.kept,
            "kept_rate": round(self.kept_rate, 4),
            "requests": dict(sorted(self.requests.items())),
            "rejected_posts": dict(self.rejected_posts.most_common()),
            "dropped_entities": dict(self.dropped_entities.most_common()),
            "mapped_types": dict(self.mapped_types.most_common()),
            "relabelled_posts": self.relabelled_posts,
            "filled_entities": self.filled_entities,
            "per_type": self.per_type,
            "settings": self.settings,
        }

    def table(self) -> str:
        """Readable summary: yield, per-type counts and reasons with counts."""
        lines = [
            f"seeds {self.seeds} ({self.seeds_without_entities} without entities)",
            f"requested {self.requested}   produced {self.produced} ({100 * self.yield_rate:.1f}%)   "
            f"kept {sum(self.kept.values())} ({100 * self.kept_rate:.1f}%)   "
            + "  ".join(f"{k} {v}" for k, v in self.kept.items()),
        ]
        if self.requests:
            lines.append("LLM requests: " + ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())))
        splits = list(self.per_type)
        types = sorted({t for counts in self.per_type.values() for t in counts})
        if types:
            lines += ["", f"{'type':<12}" + "".join(f"{s:>8}" for s in splits)]
            lines += [f"{t:<12}" + "".join(f"{self.per_type[s].get(t, 0):>8}" for s in splits) for t in types]
        for title, counter in (
            ("rejected posts", self.rejected_posts),
            ("dropped entity labels", self.dropped_entities),
            ("mapped types", self.mapped_types),
        ):
            if counter:
                lines += ["", f"{title:<28}{'count':>8}"]
                lines += [f"  {reason:<26}{n:>8}" for reason, n in counter.most_common()]
        if self.relabelled_posts or self.filled_entities:
            lines += [
                "",
                f"consistency: relabelled posts {self.relabelled_posts}, filled entities {self.filled_entities}",
            ]
        return "\n".join(lines)

    def write(self, stem: Path) -> tuple[Path, Path]:
        """Writes ``<stem>.report.json`` and ``<stem>.report.txt``; returns both paths."""
        json_path, txt_path = stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".report.txt")
        json_path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        txt_path.write_text(self.table() + "\n", encoding="utf-8")
        return json_path, txt_path
