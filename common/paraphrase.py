"""Paraphrase pairs built from the English side of the fra-eng corpus (a sentence-pair task).

Introduced in ``chapter_attention-mechanisms/bert-fine-tuning.ipynb``, which fine-tunes a BERT
on it in place of d2l's SNLI (not in the course's data mirror). The construction:

* every English sentence is tokenised the way the Penn Treebank is (:func:`ptb_tokenize`), so
  that a BERT pretrained on PTB reads it with its own vocabulary;
* two *different* English sentences that translate the *same* French sentence are a paraphrase
  pair (label 1): human translators gave both for one meaning;
* the English sentences linked through shared French sentences form connected components; the
  components (not the pairs) are split into train/validation/test, so that no sentence appears
  in two splits;
* each positive pair ``(a, b)`` gets one negative ``(a, c)`` (label 0): ``c`` is a sentence of
  the same split from another component (so it never shares a French translation with ``a``,
  directly or through other sentences), of about ``b``'s length, and sharing at least one
  content word with ``a`` where the split has one (:func:`negative_partner`). Negatives are
  thus not separable by length, and not by "any common word" either;
* the two sentences of every pair are put in random order.

The labels are what the corpus says, not a judgement: two sentences of different components can
still mean nearly the same thing, so a few negatives are in truth paraphrases.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Sentence = tuple[str, ...]
"""A tokenised sentence (a tuple, so that it can be a dict key)."""

Pair = tuple[Sentence, Sentence, int]
"""``(first sentence, second sentence, label)``, label 1 for a paraphrase, 0 otherwise."""

SPLITS = ("train", "valid", "test")

STOPWORDS = frozenset("""
a an the and or but of to in on at for with from by as about into up out off over so if than then
is are was were be been being am do does did done have has had having will would can ca could should
shall may might must wo n't not no i you he she it we they me him her us them my your his its our
their mine yours this that these those there here what who whom how why when where which 's 're 'm
'll 've 'd very too just all some any""".split())
"""Function words: :func:`negative_partner` asks for a shared word *outside* this list."""

_CLITIC = re.compile(r"'(s|re|ll|ve|d|m)\b")
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-.][a-z0-9]+)*")
_NUMBER = re.compile(r"[0-9][0-9.,-]*")


def ptb_tokenize(sentence: str) -> list[str]:
    """Tokens of an English sentence as Mikolov's Penn Treebank writes them.

    Lower case; clitics split off (``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``won't`` ->
    ``wo n't``, ``we're`` -> ``we 're``); numbers become ``N``; punctuation is dropped (PTB has
    none). ``"I can't pay $300."`` -> ``['i', 'ca', "n't", 'pay', 'N']``.
    """
    if not isinstance(sentence, str):
        raise TypeError(f"ptb_tokenize expects a str, got {type(sentence).__name__}.")
    s = sentence.lower().replace("\u2019", "'").replace("\u202f", " ").replace("\xa0", " ")
    s = re.sub(r"\bcan't\b", "ca n't", s)
    s = re.sub(r"\bwon't\b", "wo n't", s)
    s = re.sub(r"n't\b", " n't", s)
    s = _CLITIC.sub(r" '\1", s)
    return ["N" if _NUMBER.fullmatch(w) else w for w in _TOKEN.findall(s)]


def translation_groups(lines: Iterable[str]) -> dict[str, set[Sentence]]:
    """The tokenised English sentences of each French sentence that has at least two, from
    ``english<TAB>french`` lines.

    Two English sentences that differ only in punctuation or case become one, so a French
    sentence whose translations all tokenise alike has one and is left out.
    """
    raw: dict[str, set[str]] = defaultdict(set)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"Line {number} is not 'english<TAB>french': {line[:60]!r}.")
        raw[parts[1].strip()].add(parts[0])
    if not raw:
        raise ValueError("No 'english<TAB>french' line: the text is empty.")
    groups = {}
    for french, english in raw.items():
        if len(english) > 1:  # tokenise only what can make a pair
            tokenised = {tuple(ptb_tokenize(e)) for e in english} - {()}
            if len(tokenised) > 1:
                groups[french] = tokenised
    return groups


def positive_pairs(groups: dict[str, set[Sentence]]) -> list[tuple[Sentence, Sentence]]:
    """Every unordered pair of different English sentences with a common French sentence, sorted."""
    pairs = set()
    for english in groups.values():
        ordered = sorted(english)
        pairs.update((a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:])
    return sorted(pairs)


def components(pairs: Iterable[tuple[Sentence, Sentence]]) -> dict[Sentence, int]:
    """The connected component (an id 0, 1, ...) of every sentence of ``pairs`` (union-find)."""
    parent: dict[Sentence, Sentence] = {}

    def root(x: Sentence) -> Sentence:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    ids: dict[Sentence, int] = {}
    return {s: ids.setdefault(root(s), len(ids)) for s in sorted(parent)}


def negative_partner(a: Sentence, b: Sentence, pool: dict[int, list[Sentence]], component: dict[Sentence, int],
                     rng: random.Random, index: dict[tuple[str, int], list[Sentence]] | None = None,
                     max_gap: int = 3) -> tuple[Sentence, str]:
    """A sentence ``c`` to pair with ``a`` as a non-paraphrase, and how it was found.

    ``pool`` maps a length to the sentences of the split with that many tokens; ``index`` (made
    from ``pool`` by :func:`word_index` if not given) maps ``(word, length)`` to the sentences of
    that length that contain the word. ``c`` is drawn uniformly among the sentences of another
    component than ``a``'s whose length is within ``gap`` of ``len(b)`` and which share a content
    word (not in :data:`STOPWORDS`; any word if ``a`` has none) with ``a``, for the smallest
    ``gap`` from 1 to ``max_gap`` that has one (``"shared word"``); failing that, among those of
    the nearest length (``"length only"``).
    """
    if not pool:
        raise ValueError("pool is empty: give the sentences of the split, by length.")
    index = word_index(pool) if index is None else index
    content = sorted((set(a) - STOPWORDS) or set(a))
    for gap in range(1, max_gap + 1):
        found = sorted({c for w in content for n in range(len(b) - gap, len(b) + gap + 1)
                        for c in index.get((w, n), ()) if component[c] != component[a]})
        if found:
            return rng.choice(found), "shared word"
    for gap in range(max(pool) + 1):
        found = [c for n in range(len(b) - gap, len(b) + gap + 1) for c in pool.get(n, ())
                 if component[c] != component[a]]
        if found:
            return rng.choice(found), "length only"
    raise ValueError("The split has a single component: there is no sentence to make a negative pair with.")


def word_index(pool: dict[int, list[Sentence]]) -> dict[tuple[str, int], list[Sentence]]:
    """``(word, length)`` -> the sentences of ``pool`` (length -> sentences) of that length that
    contain the word."""
    index: dict[tuple[str, int], list[Sentence]] = defaultdict(list)
    for n, sentences in pool.items():
        for s in sentences:
            for w in sorted(set(s)):
                index[w, n].append(s)
    return dict(index)


@dataclass
class ParaphraseData:
    """:func:`paraphrase_pairs`'s result: ``splits[name]`` the pairs of ``"train"``, ``"valid"``,
    ``"test"``; ``component`` of every sentence; ``how`` counts of how negatives were found."""

    splits: dict[str, list[Pair]]
    component: dict[Sentence, int]
    how: dict[str, int] = field(default_factory=dict)


def paraphrase_pairs(lines: Iterable[str] | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                     seed: int = 0) -> ParaphraseData:
    """The paraphrase task: balanced, leak-free train/validation/test pairs (see the module doc).

    ``lines`` default to the fra-eng corpus (``common.seq2seq.read_data_nmt``). ``fractions`` of
    the components go to train, validation and test. ``seed`` fixes the split and the negatives,
    so the task is the same in every run whatever the training seed.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers (train, valid, test) summing to 1, got {fractions}.")
    if lines is None:
        from .seq2seq import read_data_nmt
        lines = read_data_nmt().split("\n")
    positives = positive_pairs(translation_groups(lines))
    if not positives:
        raise ValueError("No French sentence has two different English translations: there is no paraphrase pair.")
    component = components(positives)
    rng = random.Random(seed)
    order = list(range(max(component.values()) + 1))
    rng.shuffle(order)
    cut1, cut2 = round(fractions[0] * len(order)), round((fractions[0] + fractions[1]) * len(order))
    split_of = {c: SPLITS[0] if i < cut1 else SPLITS[1] if i < cut2 else SPLITS[2] for i, c in enumerate(order)}
    splits: dict[str, list[Pair]] = {}
    how: dict[str, int] = defaultdict(int)
    for name in SPLITS:
        mine = [(a, b) for a, b in positives if split_of[component[a]] == name]
        pool: dict[int, list[Sentence]] = defaultdict(list)
        for s in sorted({s for pair in mine for s in pair}):
            pool[len(s)].append(s)
        index = word_index(pool)
        pairs: list[Pair] = []
        for a, b in mine:
            if rng.random() < 0.5:  # which sentence of the positive pair the negative keeps
                a, b = b, a
            c, found = negative_partner(a, b, pool, component, rng, index)
            how[found] += 1
            for x, y, label in ((a, b, 1), (a, c, 0)):
                pairs.append((x, y, label) if rng.random() < 0.5 else (y, x, label))
        rng.shuffle(pairs)
        splits[name] = pairs
    return ParaphraseData(splits, component, dict(how))


def overlap_features(a: Sequence[str], b: Sequence[str]) -> list[float]:
    """Surface features of a pair for a reference baseline: Jaccard overlap of the word sets,
    number of shared words, shared content words, total length and length difference."""
    A, B = set(a), set(b)
    shared = A & B
    return [len(shared) / max(1, len(A | B)), len(shared), len(shared - STOPWORDS),
            len(a) + len(b), abs(len(a) - len(b))]


__all__ = ["SPLITS", "STOPWORDS", "Pair", "ParaphraseData", "Sentence", "components", "negative_partner",
           "overlap_features", "paraphrase_pairs", "positive_pairs", "ptb_tokenize", "translation_groups",
           "word_index"]
