from app import metrics


def test_normalize_answer_follows_squad():
    assert metrics.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert metrics.normalize_answer("an apple, a pear") == "apple pear"


def test_exact_match_takes_the_best_reference():
    assert metrics.exact_match("the Eiffel tower", ["Louvre", "Eiffel Tower"]) == 1.0
    assert metrics.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0


def test_f1_counts_token_overlap():
    # prediction "eiffel tower paris" vs gold "eiffel tower": precision 2/3, recall 1 -> F1 0.8
    assert abs(metrics.f1_score("Eiffel Tower, Paris", ["the Eiffel Tower"]) - 0.8) < 1e-9
    assert metrics.f1_score("", ["x"]) == 0.0
    assert metrics.f1_score("", [""]) == 1.0


def test_recall_at_k():
    ranking = [7, 3, 9, 1]
    assert metrics.recall_at_k(ranking, {9}, 2) == 0.0
    assert metrics.recall_at_k(ranking, {9}, 3) == 1.0
    assert metrics.recall_at_k([], {1}, 5) == 0.0


def test_percentile():
    assert metrics.percentile([1, 2, 3, 4, 100], 50) == 3
    assert metrics.percentile([], 95) == 0.0


def test_rouge_l_is_the_longest_common_subsequence_f1():
    # "the cat sat on the mat" vs "a cat was on the mat": LCS "cat on the mat" = 4 of 6 and of 6 tokens
    assert abs(metrics.rouge_l("The cat sat on the mat.", ["a cat was on the mat"]) - 4 / 6) < 1e-9
    # order matters, unlike F1: "killed by police" vs "police killed" share only one in order
    assert abs(metrics.rouge_l("police killed", ["killed by police"]) - 0.4) < 1e-9
    assert metrics.f1_score("police killed", ["killed by police"]) > 0.79
    assert metrics.rouge_l("a well-to-do farmer", ["nobody", "A well-to-do farmer"]) == 1.0
    assert metrics.rouge_l("", ["x"]) == 0.0


def test_answer_order_pools_passages_that_give_the_same_answer():
    from app.answering import answer_order

    # "Darcy" twice at 1.0 and 0.9 (log-sum-exp ~1.64) beats "Bingley" once at 1.5
    readings = [(1.5, "Bingley"), (1.0, "Mr. Darcy"), (0.2, ""), (0.9, "mr darcy"), (-5.0, "")]
    assert answer_order(readings) == [1, 3, 0, 2, 4]
    # alone, each passage keeps its own rank; empty answers never pool together
    assert answer_order([(1.5, "Bingley"), (1.0, "Darcy"), (0.1, ""), (0.0, "")]) == [0, 1, 2, 3]
    assert answer_order([(float("-inf"), "x"), (0.0, "y")]) == [1, 0]
