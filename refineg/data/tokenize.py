"""Word tokenisation of raw text (projecting entity strings onto the tokens: :mod:`refineg.data.spans`)."""

from __future__ import annotations

import re

# URLs, @mentions and #hashtags stay whole; otherwise words (with inner apostrophes/hyphens/dots) and single symbols.
_TOKEN = re.compile(r"https?://\S+|[@#]\w+|\w+(?:['’\-.]\w+)*|[^\w\s]", re.UNICODE)


def word_tokenize(text: str) -> list[str]:
    """Splits ``text`` into tokens: URLs, mentions and hashtags whole, words, and single punctuation marks."""
    return _TOKEN.findall(text)
