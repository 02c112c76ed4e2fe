"""Split a document into chunks that fit the model, on token boundaries, preferring paragraph ends.

The text is tokenised once with the fast tokenizer's offsets. Every gap between two tokens gets a
class (paragraph break > sentence end > word boundary > inside a word), and each chunk ends at the
best gap its token budget reaches. A chunk is then re-tokenised on its own, because word-pieces at a
cut inside a word differ from the whole-text ones ("##ple" alone is "ple"); a chunk that no longer
fits is shortened until it does. Offsets come from the tokenizer, never from a text search.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest.types import Chunk, ParsedDocument

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every chunk

INVALID, TOKEN, WORD, SENTENCE, PARAGRAPH = -1, 0, 1, 2, 3

_SENTENCE_ENDS = frozenset(".!?…。！？")
# CJK sentences end without a following space.
_SPACELESS_SENTENCE_ENDS = frozenset("。！？")
_CLOSERS = frozenset("\"')]}»”’")
_MAX_CLOSERS = 3
# A period after these is not a sentence end ("Mr. Bennet"); nor after a single capital ("J. Smith").
_ABBREVIATION = re.compile(r"(?:^|\W)(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Rev|Capt|Col|Gen|Lt|Mt|vs|[A-Z])$")
_ABBREVIATION_WINDOW = 6
# Paragraph and sentence cuts must fill at least this share of the budget, else a word cut is better.
_MIN_FILL = 0.5

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class _Tokens:
    """Char offsets of the whole-text tokens and the sorted gap positions of each minimum class."""

    text: str
    starts: list[int]
    ends: list[int]
    cuts: dict[int, list[int]]  # class -> sorted k where gap k (before token k) has class >= it

    @property
    def n(self) -> int:
        return len(self.starts)

    def char_at(self, k: int) -> int:
        """Char offset of the cut before token k (the text end for k == n)."""
        return self.starts[k] if k < self.n else len(self.text)

    def last_cut(self, level: int, lo: int, hi: int) -> int | None:
        """Largest cut of class >= level in [lo, hi], or None."""
        positions = self.cuts[level]
        i = bisect.bisect_right(positions, hi) - 1
        return positions[i] if i >= 0 and positions[i] >= lo else None

    def nearest_cut(self, level: int, target: int, lo: int, hi: int) -> int | None:
        """Cut of class >= level in [lo, hi] closest to target, or None."""
        positions = self.cuts[level]
        i = bisect.bisect_left(positions, target)
        near = [positions[j] for j in (i - 1, i) if 0 <= j < len(positions) and lo <= positions[j] <= hi]
        return min(near, key=lambda k: abs(k - target), default=None)


def chunk_document(
    doc: ParsedDocument,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_tokens: int = 256,
    overlap_tokens: int = 0,
) -> list[Chunk]:
    """Split `doc.text` into chunks of at most `max_tokens` tokens, special tokens included.

    Args:
        doc: the parsed document.
        tokenizer: a Hugging Face fast tokenizer (default: the MiniLM one from ingest.tokenizer).
        max_tokens: model window per chunk INCLUDING [CLS] and [SEP]; a chunk holds at most
            max_tokens - 2 word-piece tokens, counted on the chunk text on its own.
        overlap_tokens: about this many tokens of the previous chunk are repeated at the start of the
            next one, starting at a sentence where one is near; 0 for a partition of the text.

    Returns:
        Chunks in reading order, index 0..n-1, each non-empty, stripped of surrounding whitespace and
        equal to doc.text[char_start:char_end]; without overlap they cover every non-space char once.
        Empty (or whitespace-only) text gives [].

    Raises:
        ValueError: max_tokens leaves no room for a token, overlap_tokens is not below the budget, or
            the tokenizer is not a fast one (offsets are needed).
    """
    budget = max_tokens - SPECIAL_TOKENS
    if budget < 1:
        raise ValueError(f"max_tokens must be at least {SPECIAL_TOKENS + 1}, got {max_tokens}")
    if not 0 <= overlap_tokens < budget:
        raise ValueError(f"overlap_tokens must be in [0, {budget}), got {overlap_tokens}")
    if not doc.text.strip():
        return []
    if tokenizer is None:
        from ingest.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking needs a fast tokenizer: it reads the tokens' character offsets")
    tokens = _tokenize(doc.text, frozenset(doc.page_starts[1:]), tokenizer)
    spans = _plan_spans(tokens, budget, overlap_tokens, _token_counter(tokenizer), tokenizer)
    return [_make_chunk(doc, index, start, end, n) for index, (start, end, n) in enumerate(spans)]


def _token_counter(tokenizer: PreTrainedTokenizerBase) -> CountTokens:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return count


def _make_chunk(doc: ParsedDocument, index: int, start: int, end: int, n_tokens: int) -> Chunk:
    return Chunk(
        index=index,
        char_start=start,
        char_end=end,
        page_start=doc.page_of(start),
        page_end=doc.page_of(end - 1),
        n_tokens=n_tokens,
        text=doc.text[start:end],
    )


def _tokenize(text: str, page_starts: Collection[int], tokenizer: PreTrainedTokenizerBase) -> _Tokens:
    """Tokenise the whole text once and classify every gap between tokens."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    starts = [start for start, _ in encoding["offset_mapping"]]
    ends = [end for _, end in encoding["offset_mapping"]]
    classes = gap_classes(text, starts, ends, encoding.word_ids(), page_starts)
    cuts = {
        level: [k for k, c in enumerate(classes) if c >= level]
        for level in (TOKEN, WORD, SENTENCE, PARAGRAPH)
    }
    return _Tokens(text=text, starts=starts, ends=ends, cuts=cuts)


def gap_classes(
    text: str,
    starts: Sequence[int],
    ends: Sequence[int],
    word_ids: Sequence[int | None],
    page_starts: Collection[int] = (),
) -> list[int]:
    """Class of the cut before each token (index 0 and tokens that share chars with the previous one
    are INVALID): PARAGRAPH, SENTENCE, WORD (between the tokenizer's pre-tokenised words) or TOKEN.

    Args:
        text: the text that was tokenised.
        starts, ends: char offsets of each token.
        word_ids: the tokenizer's word index of each token (cuts between words re-tokenise exactly).
        page_starts: offsets where pages start (pages are joined with a blank line).

    Returns:
        One class per token.
    """
    classes = [INVALID] * len(starts)
    for k in range(1, len(starts)):
        prev_end, start = ends[k - 1], starts[k]
        if start < prev_end or start <= starts[k - 1]:
            continue
        gap = text[prev_end:start]
        if gap.count("\n") >= 2:
            classes[k] = _blank_line_class(text, prev_end, start, page_starts)
        elif gap and not gap.isspace():
            # Characters the tokenizer dropped (zero-width, controls): a word cut only beside a space.
            classes[k] = WORD if any(ch.isspace() for ch in gap) else TOKEN
        elif not gap and word_ids[k] == word_ids[k - 1]:
            classes[k] = TOKEN
        elif _ends_sentence(text, prev_end, spaced=bool(gap)):
            classes[k] = SENTENCE
        else:
            classes[k] = WORD
    return classes


def _blank_line_class(text: str, prev_end: int, start: int, page_starts: Collection[int]) -> int:
    """A blank line is a paragraph end after a sentence; after a heading ("Chapter 9") it is only as
    good as a sentence end, so a chunk does not end on a heading; and where it is a page break inside
    a sentence it is only a word boundary."""
    if _ends_sentence(text, prev_end, spaced=True):
        return PARAGRAPH
    return WORD if start in page_starts else SENTENCE


def _ends_sentence(text: str, end: int, spaced: bool) -> bool:
    """Whether text[:end] ends a sentence: a terminal mark, maybe inside closing quotes/brackets."""
    if end <= 0:
        return False
    i = end - 1
    while i > 0 and text[i] in _CLOSERS and end - i <= _MAX_CLOSERS:
        i -= 1
    mark = text[i]
    if mark not in _SENTENCE_ENDS or not (spaced or mark in _SPACELESS_SENTENCE_ENDS):
        return False
    return mark != "." or not _ABBREVIATION.search(text[max(0, i - _ABBREVIATION_WINDOW) : i])


def _plan_spans(
    tokens: _Tokens, budget: int, overlap: int, count: CountTokens, tokenizer: PreTrainedTokenizerBase
) -> list[tuple[int, int, int]]:
    """(char_start, char_end, n_tokens) of every chunk, in order."""
    if tokens.n == 0:
        # Only characters the tokenizer drops (controls, zero-width): one chunk, no tokens.
        start, end = _strip(tokens.text, 0, len(tokens.text))
        return [(start, end, 0)]
    spans: list[tuple[int, int, int]] = []
    # A chunk starts at (token, char); `plain` is where it would start without overlap.
    start = plain = (0, 0)
    min_end = 1
    while True:
        end_tok, end_char, span = _fit_chunk(tokens, *start, min_end, budget, count, tokenizer)
        if spans and span[1] < spans[-1][1] and start != plain:
            # The overlapped start re-tokenised longer and pulled the end back: no overlap here.
            start = plain
            continue
        if span[0] < span[1]:
            spans.append(span)
        if end_char >= len(tokens.text):
            return spans
        if end_char < tokens.char_at(end_tok):
            # The chunk ended inside a token: go on from there, without overlap.
            start = plain = (end_tok - 1, end_char)
            min_end = end_tok
            continue
        plain = (end_tok, end_char)
        next_tok = _overlap_start(tokens, start[0], end_tok, overlap) if overlap else end_tok
        start, min_end = (next_tok, tokens.char_at(next_tok)), end_tok + 1


def _fit_chunk(
    tokens: _Tokens,
    tok: int,
    char: int,
    min_end: int,
    budget: int,
    count: CountTokens,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[int, int, tuple[int, int, int]]:
    """Choose where the chunk starting at (token tok, char offset char) ends.

    Returns:
        (end_tok, end_char, (span_start, span_end, n_tokens)); the chunk covers
        text[char:end_char], stripped to the span; the next chunk starts at token end_tok.
    """
    hi, previous_end = min(tok + budget, tokens.n), tokens.n + 1
    while True:
        end = _best_end(tokens, tok, hi, min_end, budget)
        if end >= previous_end:
            return _split_inside_token(tokens, tok, char, budget, count, tokenizer)
        start, stop = _strip(tokens.text, char, tokens.char_at(end))
        n_tokens = count(tokens.text[start:stop])
        if n_tokens <= budget:
            return end, tokens.char_at(end), (start, stop, n_tokens)
        # Word-pieces re-tokenised on their own came out longer: shorten by the excess and retry.
        hi, previous_end = max(tok + 1, end - (n_tokens - budget)), end


def _best_end(tokens: _Tokens, tok: int, hi: int, min_end: int, budget: int) -> int:
    """Token index to end before: the text end when it is within reach, else the last paragraph or
    sentence cut that fills at least half the budget, else the last word cut, else any token cut."""
    if hi >= tokens.n:
        return tokens.n
    lo = min_end if min_end <= hi else tok + 1
    fill = max(lo, tok + int(_MIN_FILL * budget))
    for level, low in ((PARAGRAPH, fill), (SENTENCE, fill), (WORD, lo), (TOKEN, lo)):
        cut = tokens.last_cut(level, low, hi)
        if cut is not None:
            return cut
    # No valid cut within reach (tokens sharing characters): the first one after it.
    i = bisect.bisect_right(tokens.cuts[TOKEN], hi)
    return tokens.cuts[TOKEN][i] if i < len(tokens.cuts[TOKEN]) else tokens.n


def _split_inside_token(
    tokens: _Tokens,
    tok: int,
    char: int,
    budget: int,
    count: CountTokens,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[int, int, tuple[int, int, int]]:
    """Last resort when even one whole-text token does not fit re-tokenised on its own: cut the
    text from `char` after `budget` of its own tokens (a word-piece prefix re-tokenises the same)."""
    stop_char = tokens.char_at(tok + 1)
    local = tokenizer(
        tokens.text[char:stop_char], add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    local_starts = [char + start for start, _ in local["offset_mapping"]]
    for k in range(min(budget, len(local_starts) - 1), 0, -1):
        start, stop = _strip(tokens.text, char, local_starts[k])
        n_tokens = count(tokens.text[start:stop])
        if n_tokens <= budget and local_starts[k] > char:
            return tok + 1, local_starts[k], (start, stop, n_tokens)
    start, stop = _strip(tokens.text, char, stop_char)
    return tok + 1, stop_char, (start, stop, count(tokens.text[start:stop]))


def _overlap_start(tokens: _Tokens, tok: int, end: int, overlap: int) -> int:
    """First token of the next chunk: about `overlap` tokens before `end`, moved to a nearby sentence
    start, else a word start (never inside a word); always after `tok` so that chunks move forward.
    Returns `end` (no overlap) when no word starts near the target."""
    target = max(tok + 1, end - overlap)
    lo, hi = max(tok + 1, target - overlap // 2), min(end - 1, target + overlap // 2)
    for level in (SENTENCE, WORD):
        cut = tokens.nearest_cut(level, target, lo, hi)
        if cut is not None:
            return cut
    return end


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink [start, end) to its first and last non-whitespace characters (empty if none)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
