import json

import numpy as np
import pytest

from pneuradnet.evaluation import confusion_matrix, evaluate

LABELS = ("A", "B", "C")
TRUE = ["A", "A", "A", "B", "B", "C"]
PREDICTED = ["A", "A", "B", "B", "C", "C"]


def test_confusion_matrix_rows_are_true_labels_columns_predicted():
    matrix = confusion_matrix(TRUE, PREDICTED, LABELS)

    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_follows_the_given_label_order():
    matrix = confusion_matrix(TRUE, PREDICTED, ("C", "B", "A"))

    assert matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]


def test_scores_of_a_known_example():
    scores = evaluate(TRUE, PREDICTED, LABELS)

    assert scores.accuracy == pytest.approx(4 / 6)
    assert (scores.correct, scores.total) == (4, 6)
    by_label = {c.label: c for c in scores.classes}
    assert (by_label["A"].precision, by_label["A"].recall, by_label["A"].f1) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (by_label["B"].precision, by_label["B"].recall, by_label["B"].f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (by_label["C"].precision, by_label["C"].recall, by_label["C"].f1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert [c.support for c in scores.classes] == [3, 2, 1]


def test_the_default_models_result_on_the_16_radiographs():
    # 7 of 8 NORMAL right, 6 of 8 PNEUMONIA right: what `pneuradnet evaluate` reports for the real set.
    true = ["NORMAL"] * 8 + ["PNEUMONIA"] * 8
    predicted = ["NORMAL"] * 7 + ["PNEUMONIA"] + ["NORMAL"] * 2 + ["PNEUMONIA"] * 6

    scores = evaluate(true, predicted, ["NORMAL", "PNEUMONIA"])

    assert scores.accuracy == 0.8125
    assert scores.confusion == ((7, 1), (2, 6))
    normal, pneumonia = scores.classes
    assert (normal.precision, normal.recall) == pytest.approx((7 / 9, 7 / 8))
    assert (pneumonia.precision, pneumonia.recall) == pytest.approx((6 / 7, 6 / 8))
    assert normal.f1 == pytest.approx(2 * (7 / 9) * (7 / 8) / (7 / 9 + 7 / 8))


def test_perfect_predictions():
    scores = evaluate(TRUE, TRUE, LABELS)

    assert scores.accuracy == 1.0
    assert all((c.precision, c.recall, c.f1) == (1.0, 1.0, 1.0) for c in scores.classes)
    assert np.array_equal(np.diag(scores.confusion), [3, 2, 1])


def test_undefined_scores_are_none_not_zero():
    # "C" is never true and never predicted; "B" is true once but never predicted.
    scores = evaluate(["A", "B"], ["A", "A"], LABELS)

    by_label = {c.label: c for c in scores.classes}
    assert by_label["B"].precision is None
    assert by_label["B"].recall == 0.0
    assert by_label["B"].f1 == 0.0
    assert (by_label["C"].precision, by_label["C"].recall, by_label["C"].f1, by_label["C"].support) == (
        None, None, None, 0)


def test_to_dict_is_plain_json():
    record = json.loads(json.dumps(evaluate(TRUE, PREDICTED, LABELS).to_dict()))

    assert record["labels"] == list(LABELS)
    assert record["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert record["classes"][0] == {"label": "A", "precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}


def test_a_label_outside_the_list_is_named():
    with pytest.raises(ValueError, match=r"labels \['D'\] are not among"):
        evaluate(["A", "D"], ["A", "A"], LABELS)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="3 true labels but 2 predicted"):
        confusion_matrix(["A", "B", "C"], ["A", "B"], LABELS)


def test_nothing_to_evaluate():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate([], [], LABELS)


def test_duplicate_labels_are_refused():
    with pytest.raises(ValueError, match="unique"):
        confusion_matrix(["A"], ["A"], ["A", "A"])
