"""How well a model's uncertainty predicts where raters disagree: the library's exact pixel AUROC and
Spearman against scikit-learn and scipy computed here, and the per-case and project figures the app
reports from a store's own raters and predictions (on both engines)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from annotation_support import box, case_with_prediction
from medclipseg.team.agreement import pixel_auroc, uncertainty_vs_disagreement


def independent_measures(entropy, masks):
    votes = np.mean(np.stack(masks), axis=0)
    disputed = (votes > 0) & (votes < 1)
    share = np.clip(votes, 1e-9, 1 - 1e-9)
    vote_entropy = np.where(disputed, -(share * np.log(share) + (1 - share) * np.log(1 - share)), 0.0)
    return (roc_auc_score(disputed.ravel(), entropy.ravel()),
            spearmanr(entropy.ravel(), vote_entropy.ravel()).statistic, int(disputed.sum()))


def test_pixel_auroc_is_sklearns_with_ties_and_undefined_with_one_class():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 8, (30, 40)).astype(float)  # many ties
    positive = rng.random((30, 40)) < scores / 10
    assert pixel_auroc(scores, positive) == pytest.approx(roc_auc_score(positive.ravel(), scores.ravel()), abs=1e-12)
    assert pixel_auroc(scores, np.zeros_like(positive)) is None
    assert pixel_auroc(scores, np.ones_like(positive)) is None


@pytest.mark.parametrize("shape", [(24, 32), (5, 16, 20)])
def test_uncertainty_vs_disagreement_in_2d_and_3d(shape):
    rng = np.random.default_rng(1)
    truth = np.zeros(shape, bool)
    truth[(slice(None),) * (len(shape) - 2) + (slice(4, 14), slice(5, 17))] = True
    masks = [truth ^ (rng.random(shape) < 0.08) for _ in range(3)]
    entropy = rng.random(shape) + 0.5 * (np.mean(masks, axis=0) % 1 > 0)
    found = uncertainty_vs_disagreement(entropy, masks)
    auroc, rho, disputed = independent_measures(entropy, masks)
    assert found["pixel_auroc"] == pytest.approx(auroc, abs=1e-12)
    assert found["pixel_spearman"] == pytest.approx(rho, abs=1e-9)
    assert (found["disputed_pixels"], found["raters"]) == (disputed, 3)
    unanimous = uncertainty_vs_disagreement(entropy, [truth, truth])
    assert unanimous["pixel_auroc"] is None and unanimous["pixel_spearman"] is None
    with pytest.raises(ValueError, match="uncertainty map is"):
        uncertainty_vs_disagreement(entropy[..., :-1], masks)


def test_the_service_reports_each_case_and_the_project(store):
    from medclipseg.annotation.service import AnnotationService

    store.set_project_settings(raters_per_case=3)
    service = AnnotationService(store, num_samples=4)  # the model is never loaded: stored predictions only
    try:
        labelled = []
        for seed in (1, 2, 3):
            case, prediction_id = case_with_prediction(store, seed)
            masks = [box(4 + seed, 5), box(5, 6 + seed), box(3, 5, height=12 + seed)]
            for name, mask in zip(("ann", "bea", "cyd"), masks):
                store.save_correction(case.id, mask, annotator=name)
            labelled.append((case.id, prediction_id, masks))
        single, _ = case_with_prediction(store, 9)
        store.save_correction(single.id, box(1, 1), annotator="ann")  # one rater: no figure
        assert service.uncertainty_vs_disagreement(single.id) is None
        report = service.uncertainty_vs_disagreement_report()
        assert [case["case_id"] for case in report["cases"]] == [case_id for case_id, _, _ in labelled]
        aurocs, rhos = [], []
        for (case_id, prediction_id, masks), found in zip(labelled, report["cases"]):
            entropy = store.load_prediction(prediction_id).entropy
            auroc, rho, disputed = independent_measures(entropy, masks)
            assert found["prediction_id"] == prediction_id and found["model_id"] == "test-model"
            assert found["pixel_auroc"] == pytest.approx(auroc, abs=1e-12)
            assert found["pixel_spearman"] == pytest.approx(rho, abs=1e-9)
            assert found == {**service.uncertainty_vs_disagreement(case_id), "case_id": case_id,
                             "band_entropy": found["band_entropy"], "disagreement": found["disagreement"]}
            aurocs.append(auroc)
            rhos.append(rho)
        assert report["median_pixel_auroc"] == pytest.approx(np.median(aurocs), abs=1e-12)
        assert report["median_pixel_spearman"] == pytest.approx(np.median(rhos), abs=1e-9)
    finally:
        service.close()


def test_the_reviewer_reads_the_figure_of_the_case_they_open(store):
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.app import review as review_page

    store.set_project_settings(raters_per_case=2, review_required=True)
    service = AnnotationService(store, num_samples=4)
    try:
        case, prediction_id = case_with_prediction(store, 4)
        masks = [box(5, 5), box(7, 9)]
        for name, mask in zip(("ann", "bea"), masks):
            store.save_correction(case.id, mask, annotator=name)
        screen = review_page.next_case_to_review(service, "disagreement", "rev")
        auroc, _, disputed = independent_measures(store.load_prediction(prediction_id).entropy, masks)
        assert f"Reviewing case #{case.id}" in screen.status
        assert f"finds the {disputed:,} disputed pixels with AUROC {auroc:.2f}" in screen.status
    finally:
        service.close()
