"""Real English sentences that ship with Python, and a deterministic fallback tokenizer.

``pydoc_data.topics`` holds the text of Python's ``help()`` topics: a few thousand sentences of
ordinary technical English, available offline everywhere. Token models without their own tokenizer
get a hash tokenizer: every word maps to a fixed id, so the same sentence always gives the same ids
and the id statistics (repeats, sentence lengths, padding) resemble real text - what matters for
int8 calibration of embeddings and attention - even though the ids mean nothing to a random model.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import numpy as np

from pipeline.core.errors import PipelineError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
#: BERT WordPiece conventions: [PAD]=0, [CLS]=101, [SEP]=102, ordinary tokens from about 1000 up.
PAD, CLS, SEP, FIRST_WORD = 0, 101, 102, 1000


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Sentences of 5-64 words from Python's help topics, in a fixed order, without duplicates.

    Returns:
        A few thousand sentences (the exact count depends on the Python version).
    """
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            # Indented paragraphs are code or grammar listings, not prose.
            if para.startswith((" ", "\t")) or "::=" in para:
                continue
            for sent in _SENTENCE_END.split(" ".join(para.split())):
                words = sent.split()
                if 5 <= len(words) <= 64 and sum(c.isalpha() for c in sent) > 0.6 * len(sent):
                    seen.setdefault(sent, None)
    return tuple(seen)


def hash_tokenize(texts: list[str], seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` into ``input_ids``/``attention_mask`` (int64, (N, seq_len)) without a vocabulary.

    Lower-cased words and punctuation marks map to ``crc32(word)`` folded into the vocabulary; the
    sequence is ``[CLS] words... [SEP]`` padded with ``[PAD]`` (mask 0) or truncated to ``seq_len``.

    Args:
        texts: sentences.
        seq_len: tokens per sample (>= 3).
        vocab_size: ids stay in ``[0, vocab_size)`` (>= 8).
    """
    if seq_len < 3 or vocab_size < 8:
        raise PipelineError(
            f"text data needs seq_len >= 3 and vocab_size >= 8, got {seq_len} and {vocab_size}",
            "use a longer model.input_shape or a larger model.vocab_size, or data=random",
        )
    # Small vocabularies (toy models) keep the specials at 0/1/2 and words from 3 up.
    pad, cls, sep, first = (PAD, CLS, SEP, FIRST_WORD) if vocab_size > 2 * FIRST_WORD else (0, 1, 2, 3)
    ids = np.full((len(texts), seq_len), pad, dtype=np.int64)
    mask = np.zeros((len(texts), seq_len), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())[: seq_len - 2]
        row = [cls, *(first + zlib.crc32(w.encode()) % (vocab_size - first) for w in words), sep]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
