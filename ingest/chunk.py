"""Split a document into chunks that fit the model, with langchain-text-splitters.

Three strategies:
- "content-aware" (the app's): langchain's RecursiveCharacterTextSplitter with paragraph > sentence >
  word > punctuation separators and a MiniLM token count as its length function;
- "fixed": windows of whole-text tokens (langchain's split_text_on_tokens);
- "overlapping": the same windows, each repeating the last `overlap_tokens` tokens of the one before.

langchain returns strings, never where they are, and sums the token counts of the pieces it merges. So
the char offsets are computed here (the content-aware chunks partition the text, so each one starts at
the first non-space after the one before; token windows record their span as they are decoded), and
every chunk is re-tokenised on its own: one that no longer fits (a cut inside a word re-tokenises into
other word-pieces, "##ple" alone is "ple") is cut again into token windows until it does.

langchain is imported where text is split, not with this module: model/ reads CHUNK_TOKENS from here
on the GPU machine, which does not carry langchain.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ingest.types import Chunk, ParsedDocument

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHUNK_TOKENS = 256  # model window per chunk, [CLS] and [SEP] included: the app's chunks and BSBR's chunk size
SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every chunk
STRATEGIES = ("content-aware", "fixed", "overlapping")

Span = tuple[int, int]

# A sentence ends at a mark, maybe inside up to three closing quotes or brackets, not after a title or
# an initial ("Mr. Bennet", "J. Smith"). Look-behinds must have a fixed width in `re`, hence one each.
_MARKS = "[.!?…。！？]"
_CLOSERS = "[\"')\\]}»”’]"
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Prof", "Rev", "Capt", "Col", "Gen", "Lt", "Mt")
_SENTENCE_END = (
    "(?:" + "|".join(f"(?<={_MARKS}{_CLOSERS * n})" for n in range(4)) + ")"
    + "".join(rf"(?<!\b{word}\.)" for word in (*_ABBREVIATIONS, "vs", "[A-Z]"))
)  # fmt: skip
_SENTENCE_END_AT = re.compile(_SENTENCE_END)
_BLANK_LINE = r"\n[^\S\n]*\n\s*"
# langchain keeps each separator at the start of the next piece (keep_separator="start"), so the pieces
# tile the text. No capturing groups: langchain wraps a separator in one for re.split.
_SEPARATORS = [
    rf"{_SENTENCE_END}[^\S\n]*{_BLANK_LINE}",  # paragraph: a blank line after a sentence
    # sentence: after a mark and a space, after a CJK mark without one, or a blank line after a heading
    rf"{_SENTENCE_END}\s+|(?<=[。！？])(?=\S)|{_BLANK_LINE}",
    r"\s+",  # word
    r"(?<=[^\w\s])|(?=[^\w\s])",  # punctuation: BERT splits there too, so the token counts add up
]
_SPACES = re.compile(r"\s*")


def chunk_document(
    doc: ParsedDocument,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_tokens: int = CHUNK_TOKENS,
    overlap_tokens: int = 0,
    strategy: str = "content-aware",
) -> list[Chunk]:
    """Split `doc.text` into chunks of at most `max_tokens` tokens, special tokens included.

    Args:
        doc: the parsed document.
        tokenizer: a Hugging Face fast tokenizer (default: the MiniLM one from ingest.tokenizer).
        max_tokens: model window per chunk INCLUDING [CLS] and [SEP]; a chunk holds at most
            max_tokens - 2 word-piece tokens, counted on the chunk text on its own.
        overlap_tokens: tokens each "overlapping" window repeats from the one before (in [1, budget));
            0 for the other strategies, whose chunks partition the text.
        strategy: "content-aware" (ends at paragraph, else sentence, else word ends), "fixed" or
            "overlapping" (token windows).

    Returns:
        Chunks in reading order, index 0..n-1, each non-empty, stripped of surrounding whitespace and
        equal to doc.text[char_start:char_end]; starts and ends strictly increase and every non-space
        char is in a chunk (without overlap in exactly one). Empty (or whitespace-only) text gives [].

    Raises:
        ValueError: an unknown strategy, max_tokens leaves no room for a token, overlap_tokens does not
            suit the strategy, or the tokenizer is not a fast one (offsets are needed).
    """
    budget = max_tokens - SPECIAL_TOKENS
    _check_parameters(budget, overlap_tokens, strategy)
    if not doc.text.strip():
        return []
    if tokenizer is None:
        from ingest.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking needs a fast tokenizer: it reads the tokens' character offsets")
    if strategy == "content-aware":
        spans = _content_aware_spans(doc, budget, tokenizer)
    else:
        spans = _token_windows(doc.text, (0, len(doc.text)), budget, overlap_tokens, tokenizer)
    fitted = _drop_contained(_fit(doc.text, spans, budget, tokenizer))
    return [_make_chunk(doc, index, start, end, n) for index, (start, end, n) in enumerate(fitted)]


def _check_parameters(budget: int, overlap_tokens: int, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if budget < 1:
        raise ValueError(f"max_tokens must be at least {SPECIAL_TOKENS + 1}, got {budget + SPECIAL_TOKENS}")
    if strategy == "overlapping" and not 0 < overlap_tokens < budget:
        raise ValueError(f"overlapping windows need overlap_tokens in [1, {budget}), got {overlap_tokens}")
    if strategy != "overlapping" and overlap_tokens:
        raise ValueError(f'overlap_tokens needs strategy="overlapping", got {strategy!r}')


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


def _count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Word-piece tokens of each text on its own, without special tokens (one batched call)."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [len(row) for row in ids]


def _cached_counter(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """langchain's length function. It measures every piece at each separator level and again while
    merging; words and their leading spaces repeat ("the", " the"), so a cache spares most calls.

    A piece of chars that the tokenizer drops (a zero-width space) counts 1, not 0: langchain keeps
    pieces of length 0 as overlap and would repeat it at the start of the next chunk."""

    @functools.cache
    def count(text: str) -> int:
        n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        return n or int(bool(text.strip()))

    return count


def _content_aware_spans(doc: ParsedDocument, budget: int, tokenizer: PreTrainedTokenizerBase) -> list[Span]:
    """Char spans of langchain's recursive split (stripped, in order, tiling the text but for spaces)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        separators=_SEPARATORS,
        keep_separator="start",
        is_separator_regex=True,
        chunk_size=budget,
        chunk_overlap=0,
        length_function=_cached_counter(tokenizer),
    )
    view = _boundary_view(doc)
    spans, cursor = [], 0
    # A piece that no separator can cut comes back as it is, spaces around it included.
    for piece in filter(None, map(str.strip, splitter.split_text(view))):
        start = _SPACES.match(view, cursor).end()
        end = start + len(piece)
        if view[start:end] != piece:
            raise RuntimeError(f"chunk {len(spans)} is not at offset {start} of the text")
        spans.append((start, end))
        cursor = end
    if view[cursor:].strip():
        raise RuntimeError(f"text after offset {cursor} is in no chunk")
    return spans


def _boundary_view(doc: ParsedDocument) -> str:
    """doc.text with the blank line of every page break inside a sentence turned into spaces (the same
    length, so offsets hold): such a break is a word boundary, not a paragraph end."""
    text, parts, done = doc.text, [], 0
    for page_start in doc.page_starts[1:]:
        gap = page_start
        while gap > done and text[gap - 1].isspace():
            gap -= 1
        if "\n" in text[gap:page_start] and not _SENTENCE_END_AT.match(text, gap):
            parts += [text[done:gap], " " * (page_start - gap)]
            done = page_start
    return "".join([*parts, text[done:]])


def _token_windows(
    text: str, span: Span, budget: int, overlap: int, tokenizer: PreTrainedTokenizerBase
) -> list[Span]:
    """Char spans of windows of `budget` tokens (`overlap` of them shared) over text[span] tokenised on
    its own, by langchain's split_text_on_tokens. Token positions stand in for the ids so that decode
    knows each window's chars (decoding ids gives lower-cased word-pieces, not the text). A window runs
    up to the next window's first token, so chars the tokenizer drops stay in a chunk."""
    from langchain_text_splitters import Tokenizer, split_text_on_tokens

    base = span[0]
    piece = text[span[0] : span[1]]
    cuts: list[int] = []  # cuts[k]: char offset in piece where token k's window starts; cuts[-1] = end
    windows: list[Span] = []

    def encode(part: str) -> list[int]:
        offsets = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        cuts[:] = [0, *(start for start, _ in offsets["offset_mapping"][1:]), len(part)]
        return list(range(len(cuts) - 1))

    def decode(positions: list[int]) -> str:
        start, end = cuts[positions[0]], cuts[positions[-1] + 1]
        windows.append((base + start, base + end))
        return piece[start:end]

    splitter = Tokenizer(chunk_overlap=overlap, tokens_per_chunk=budget, decode=decode, encode=encode)
    split_text_on_tokens(text=piece, tokenizer=splitter)
    # No token at all (only chars the tokenizer drops): the span is one chunk of 0 tokens.
    return windows or [span]


def _fit(
    text: str, spans: Sequence[Span], budget: int, tokenizer: PreTrainedTokenizerBase
) -> list[tuple[int, int, int]]:
    """(start, end, n_tokens) of the stripped, non-empty spans, each cut into token windows of its own
    tokens (recursively) while it does not fit the budget re-tokenised alone."""
    stripped = [s for s in (_strip(text, *span) for span in spans) if s[0] < s[1]]
    counts = _count_tokens(tokenizer, [text[start:end] for start, end in stripped])
    fitted = []
    for (start, end), n in zip(stripped, counts, strict=True):
        windows = _token_windows(text, (start, end), budget, 0, tokenizer) if n > budget else []
        if len(windows) < 2 or (start, end) in (_strip(text, *w) for w in windows):
            # It fits, or cannot be cut (one char that the tokenizer expands into more tokens).
            fitted.append((start, end, n))
        else:
            fitted += _fit(text, windows, budget, tokenizer)
    return fitted


def _drop_contained(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Spans sorted by start, without those inside another one: a window cut again to fit can end up
    inside the next, overlapping window; what is left has strictly increasing starts and ends."""
    kept: list[tuple[int, int, int]] = []
    for span in sorted(spans, key=lambda s: (s[0], -s[1])):
        if not kept or span[1] > kept[-1][1]:
            kept.append(span)
    return kept


def _strip(text: str, start: int, end: int) -> Span:
    """Shrink [start, end) to its first and last non-whitespace characters (empty if none)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
