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
