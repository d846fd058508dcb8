"""Tests of common.paraphrase: PTB-style tokens, translation groups, components, negatives, splits."""
import random

import pytest

from common import paraphrase as P


def test_ptb_tokenize_splits_clitics_numbers_and_drops_punctuation():
    assert P.ptb_tokenize("I can't pay $300.") == ["i", "ca", "n't", "pay", "N"]
    assert P.ptb_tokenize("We're sure they won't, aren't they?") == \
        ["we", "'re", "sure", "they", "wo", "n't", "are", "n't", "they"]
    assert P.ptb_tokenize("Tom\u2019s dog\xa0barked!") == ["tom", "'s", "dog", "barked"]
    assert P.ptb_tokenize("It's 10 o'clock.") == ["it", "'s", "N", "o", "'clock"]
    assert P.ptb_tokenize("!?") == []
    with pytest.raises(TypeError):
        P.ptb_tokenize(["not", "a", "str"])


def test_translation_groups_keep_french_sentences_with_two_english_ones():
    lines = ["Go.\tVa !", "Go!\tVa !", "Hi.\tSalut !", "Hello.\tSalut !", "", "Run.\tCours !"]
    groups = P.translation_groups(lines)
    # "Go." and "Go!" tokenise alike: one sentence, no pair; "Run." has a single translation
    assert groups == {"Salut !": {("hi",), ("hello",)}}
    with pytest.raises(ValueError, match="english<TAB>french"):
        P.translation_groups(["no tab here"])
    with pytest.raises(ValueError, match="empty"):
        P.translation_groups(["", "  "])


def test_positive_pairs_and_components():
    groups = {"x": {("a",), ("b",), ("c",)}, "y": {("c",), ("d",)}, "z": {("e",), ("f",)}}
    pairs = P.positive_pairs(groups)
    assert pairs == [(("a",), ("b",)), (("a",), ("c",)), (("b",), ("c",)), (("c",), ("d",)), (("e",), ("f",))]
    comp = P.components(pairs)
    assert comp[("a",)] == comp[("b",)] == comp[("c",)] == comp[("d",)]  # linked through "c"
    assert comp[("e",)] == comp[("f",)] != comp[("a",)]
    assert sorted(set(comp.values())) == [0, 1]


def test_negative_partner_prefers_a_shared_content_word_of_the_right_length():
    a, b = ("the", "dog", "runs"), ("the", "dog", "is", "running")
    sharing = ("my", "dog", "is", "asleep")     # shares "dog", length 4
    function_only = ("the", "cat", "is", "here")  # shares only function words
    far = ("a", "dog", "sat", "on", "the", "mat", "all", "day", "long")  # shares "dog", too long
    same_component = ("dog", "dog", "dog", "dog")
    pool = {}
    for s in (a, b, sharing, function_only, far, same_component):
        pool.setdefault(len(s), []).append(s)
    component = {a: 0, b: 0, same_component: 0, sharing: 1, function_only: 2, far: 3}
    for seed in range(10):
        c, how = P.negative_partner(a, b, pool, component, random.Random(seed))
        assert (c, how) == (sharing, "shared word")
    pool[4].remove(sharing)
    c, how = P.negative_partner(a, b, pool, component, random.Random(0))
    assert (c, how) == (function_only, "length only")  # "far" shares "dog" but is 5 tokens longer
    with pytest.raises(ValueError, match="single component"):
        P.negative_partner(a, b, {3: [a], 4: [b]}, {a: 0, b: 0}, random.Random(0))
    with pytest.raises(ValueError, match="pool is empty"):
        P.negative_partner(a, b, {}, component, random.Random(0))


def _corpus(n_groups=60):
    """Lines of a toy corpus: n_groups French sentences with 2-3 English translations each."""
    nouns = ["dog", "cat", "car", "book", "house", "tree", "river", "phone", "key", "song"]
    verbs = ["see", "like", "want", "need", "have", "find"]
    lines = []
    for g in range(n_groups):
        noun, verb = nouns[g % len(nouns)], verbs[g // len(nouns) % len(verbs)]
        french = f"phrase {g}"
        lines += [f"I {verb} the {noun}.\t{french}", f"I {verb} this {noun}.\t{french}"]
        if g % 3 == 0:
            lines.append(f"I really {verb} the {noun}!\t{french}")
    return lines


def test_paraphrase_pairs_are_balanced_leak_free_and_repeatable():
    task = P.paraphrase_pairs(_corpus(), fractions=(0.6, 0.2, 0.2), seed=0)
    assert set(task.splits) == set(P.SPLITS)
    seen = {}
    for name, pairs in task.splits.items():
        assert pairs
        labels = [label for *_, label in pairs]
        assert 2 * sum(labels) == len(labels)
        for a, b, label in pairs:
            assert a != b
            assert (task.component[a] == task.component[b]) == (label == 1)
            for s in (a, b):
                assert seen.setdefault(s, name) == name, f"{s} is in {seen[s]} and {name}"
    assert sum(task.how.values()) == sum(len(p) for p in task.splits.values()) // 2
    assert P.paraphrase_pairs(_corpus(), fractions=(0.6, 0.2, 0.2), seed=0).splits == task.splits
    assert P.paraphrase_pairs(_corpus(), fractions=(0.6, 0.2, 0.2), seed=1).splits != task.splits


def test_paraphrase_pairs_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fractions"):
        P.paraphrase_pairs(_corpus(), fractions=(0.8, 0.2))
    with pytest.raises(ValueError, match="fractions"):
        P.paraphrase_pairs(_corpus(), fractions=(0.8, 0.3, -0.1))
    with pytest.raises(ValueError, match="no paraphrase pair"):
        P.paraphrase_pairs(["Go.\tVa !", "Hi.\tSalut !"])


def test_overlap_features():
    assert P.overlap_features(["i", "like", "dogs"], ["i", "love", "dogs", "a", "lot"]) == \
        [2 / 6, 2, 1, 8, 2]
