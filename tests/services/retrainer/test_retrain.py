"""Retrain runs: triggers, the gate, publishing, the lock, rollback."""

from __future__ import annotations

import logging
import threading
import time

import pandas as pd
import pytest

from mlplatform_common import keys
from mlplatform_common.lock import LockHeld, StoreLock
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import Store, for_model
from mlplatform_retrainer import retrain as retrain_module
from mlplatform_retrainer.gate import decide
from mlplatform_retrainer.job import publish, upload_dataset
from mlplatform_retrainer.retrain import promote, rollback, run, unpin
from mlplatform_retrainer.rollout import RolloutFailed
from mlplatform_retrainer.train import TrainConfig
from tests.conftest import DATA, SIGNING_KEY, free_port, publish_trained
from tests.services.reporter.conftest import PromStack
from tests.services.retrainer.conftest import (
    add_feedback,
    gate_held_out_rows,
    label,
    retrainer_settings,
)


def _scores(holdout: float, reference: float) -> dict[str, dict[str, float]]:
    return {"holdout": {"f1": holdout}, "reference": {"f1": reference}}


def test_gate_promotes_within_tolerance_only() -> None:
    assert decide(_scores(0.95, 0.95), _scores(0.955, 0.955), "f1", 0.01, 100).promote
    assert decide(_scores(0.97, 0.96), _scores(0.95, 0.96), "f1", 0.0, 100).promote
    rejected = decide(_scores(0.90, 0.95), _scores(0.95, 0.95), "f1", 0.01, 100)
    assert not rejected.promote
    assert rejected.reason.startswith("rejected: candidate f1=0.9000 vs production 0.9500")


def test_gate_stops_a_line_of_versions_sliding_down_within_the_tolerance() -> None:
    # 0.97 -> 0.96 -> 0.95 -> 0.94: each step within 0.02 of production, not of the line's best.
    step = decide(_scores(0.94, 0.94), _scores(0.95, 0.95), "f1", 0.02, 100, reference_best=0.955)
    assert step.promote
    slid = decide(_scores(0.94, 0.94), _scores(0.95, 0.95), "f1", 0.02, 100, reference_best=0.97)
    assert not slid.promote
    assert "0.9400 vs 0.9500, best of its line 0.9700 on its reference part" in slid.reason


def test_the_lines_best_comes_from_its_gates_back_to_a_fresh_training(
    v1_store: Store, trained, shipped_dataset
) -> None:
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    sha, seed = shipped_dataset.sha256, TrainConfig().seed

    def retrained(
        parent: str, current: float, candidate: float, data_sha: str = sha, kept_out: bool = True
    ) -> str:
        gate = {"metric": "f1", "reference_current": current, "reference_candidate": candidate}
        data = {"sha256": data_sha, "split_seed": seed, "held_out_excluded": kept_out}
        extra = {"gate": gate, "training_data": data}
        version = publish(
            registry, trained, shipped_dataset, TrainConfig(), parent=parent, extra=extra
        )
        registry.promote(version)
        return version

    def best(version: str, metric: str = "f1", seed_: int = seed) -> float | None:
        return retrain_module.line_best(registry, version, metric, sha, seed_)

    v2 = retrained("v1", 0.97, 0.96)  # v1, a fresh training, measured 0.97 by v2's gate
    v3 = retrained(v2, 0.96, 0.95)
    assert best(v3) == 0.97
    assert best(v3, "accuracy") is None and best(v3, seed_=seed + 1) is None
    v4 = retrained(v3, 0.99, 0.94, data_sha="other data")  # a new data set starts a new line
    assert best(v4) is None
    # A gate recorded before the held-out rows were kept out of training may be inflated: the
    # line ends there, and its score (as measured by the next gate) is not taken either.
    old = retrained("v1", 0.97, 0.999, kept_out=False)
    v6 = retrained(old, 0.998, 0.96)
    assert best(v6) == 0.96
    # And the run uses it: the shipped model scores ~0.97 on the reference part; a recorded
    # best of 1.0 with no tolerance keeps an identical candidate out.
    retrained("v1", 1.0, 1.0)
    add_feedback(v1_store, 40)
    result = run(retrainer_settings(gate_tolerance=0.0), store=v1_store)
    assert result.outcome == "rejected" and "best of its line 1.0000" in result.gate.reason
    # A promoted candidate's manifest carries what makes its gate trusted.
    registry.promote("v1")  # a line of its own: no gate recorded yet
    promoted = run(retrainer_settings(), store=v1_store, force=True)
    assert promoted.outcome == "promoted", promoted.describe()
    data = registry.manifest(promoted.version)["training_data"]
    assert data["held_out_excluded"] is True and data["split_seed"] == seed


def test_gate_rejects_a_candidate_worse_on_the_reference_part_even_if_better_overall() -> None:
    # Corrupted labels: the recent slice favours the candidate, the reference part does not.
    result = decide(_scores(0.80, 0.70), _scores(0.60, 0.97), "f1", 0.01, 100)
    assert not result.promote
    assert "0.7000 vs 0.9700 on its reference part" in result.reason


def test_no_trigger_is_a_recorded_skip(v1_store: Store) -> None:
    add_feedback(v1_store, 5)
    result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "skipped"
    assert result.new_rows == 5
    assert ModelRegistry(v1_store, SIGNING_KEY).versions() == ["v1"]
    (record,) = v1_store.list_keys("state/retrain-runs/")
    assert v1_store.get_json(record)["outcome"] == "skipped"
    assert not v1_store.exists(keys.RETRAIN_LOCK)


def test_releases_sharing_a_pushgateway_keep_their_own_run_counts(
    v1_store: Store, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    installs = [("blue", "ml"), ("green", "ml"), ("blue", "staging")]
    for release, namespace in installs:
        settings = retrainer_settings(
            pushgateway_url=prom_stack.pushgateway_url, release=release, namespace=namespace
        )
        assert run(settings, store=v1_store).outcome == "skipped"
    groups = prom_stack.groups()
    assert sorted((g["release"], g["namespace"]) for g in groups) == sorted(installs)
    assert {g["job"] for g in groups} == {"mlplatform-retrainer"}
    # every pushed series carries them in Prometheus: one skipped count per release (the three
    # share one store, so the counts are 1, 2 and 3)
    query = 'mlplatform_retrain_runs_total{job="mlplatform-retrainer",outcome="skipped"}'
    deadline = time.monotonic() + 20
    while len(found := prom_stack.query(query)) < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    seen = {(r["metric"]["release"], r["metric"]["namespace"]): r["value"][1] for r in found}
    assert seen == {("blue", "ml"): "1", ("green", "ml"): "2", ("blue", "staging"): "3"}


def test_two_named_models_of_one_release_keep_their_own_runs_and_series(
    local_store: Store, trained, shipped_dataset, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    runs = {"fraud": 1, "churn-eu": 2}  # skipped runs per name, to tell their counts apart
    for name, n in runs.items():
        part = for_model(local_store, name)
        upload_dataset(part, shipped_dataset)
        publish_trained(ModelRegistry(part, SIGNING_KEY), trained, shipped_dataset)
        settings = retrainer_settings(
            pushgateway_url=prom_stack.pushgateway_url,
            release="blue",
            namespace="ml",
            model_name=name,
        )
        for _ in range(n):
            result = run(settings, store=part)
            assert result.outcome == "skipped" and f"(model {name})" in result.describe()
        records = part.list_keys(keys.RETRAIN_RUNS)
        assert [part.get_json(r)["model"] for r in records] == [name] * n
    assert sorted(g["model"] for g in prom_stack.groups()) == sorted(runs)
    # each series to its own count: churn-eu's first push may be scraped before its second
    for name, n in runs.items():
        prom_stack.wait_for(
            'mlplatform_retrain_runs_total{job="mlplatform-retrainer",outcome="skipped",'
            f'release="blue",namespace="ml",model="{name}"}}',
            n,
        )


def test_the_default_name_replaces_the_group_pushed_before_names(
    v1_store: Store, prom_stack: PromStack
) -> None:
    prom_stack.clear()
    prom_stack.push_before_names("mlplatform-retrainer", "mlplatform_model_version_number", 1)
    settings = retrainer_settings(
        pushgateway_url=prom_stack.pushgateway_url, release="blue", namespace="ml"
    )
    assert run(settings, store=v1_store).outcome == "skipped"
    (group,) = prom_stack.groups()
    assert group["model"] == "mlplatform" and group["release"] == "blue"


def test_k_labelled_rows_train_and_promote_v2(v1_store: Store) -> None:
    add_feedback(v1_store, 40)
    result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "promoted", result.describe()
    assert result.reasons == ["40 new labelled rows (k=20)"]
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    assert registry.production_version() == "v2"
    manifest = registry.manifest("v2")
    assert manifest["parent"] == "v1"
    assert manifest["training_data"]["feedback_rows"] == 32  # 20% newest held out
    assert manifest["gate"]["promote"] is True
    assert manifest["gate"]["holdout_rows"] == 114 + 8
    assert len(registry.load("v2").ref_data) == manifest["split"]["train"]
    # The watermark moved: the same rows do not trigger again.
    assert run(retrainer_settings(), store=v1_store).outcome == "skipped"


def test_labelled_rows_of_the_gates_held_out_split_are_not_trained_on(
    v1_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # The traffic simulator replays the reference test split: labelled, those rows went into
    # training, and the gate then scored the candidate on rows it was trained on.
    add_feedback(v1_store, 40)
    for i, row in enumerate(gate_held_out_rows(pd.read_csv(DATA)).head(10).itertuples(index=False)):
        features = row._asdict()
        target = str(features.pop("target"))
        label(v1_store, features, target, time.time() + 1 + i)
    with caplog.at_level(logging.INFO, logger="mlplatform"):
        result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "promoted", result.describe()
    assert "left out 10 labelled rows that are rows of the reference test split" in caplog.text
    manifest = ModelRegistry(v1_store, SIGNING_KEY).manifest("v2")
    assert manifest["training_data"]["feedback_rows"] == 32  # the 40 others, 20% held out


def test_with_no_labelled_row_to_train_on_nothing_is_published(v1_store: Store) -> None:
    # The candidate would be the production model again: each such run published a copy
    # (the traffic simulator's rows are all the gate's held-out ones).
    v1_store.put_json(
        keys.report_file("2026-11-20T00-00-00Z", "summary.json"),
        {"id": "r1", "drift": {"embedding": {"share": 0.8}}},
    )
    result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "skipped"
    assert result.reasons == [
        "drift share 0.80 > 0.5 in report r1",
        "but no labelled row is usable for training",
    ]
    assert ModelRegistry(v1_store, SIGNING_KEY).versions() == ["v1"]
    assert run(retrainer_settings(), store=v1_store).reasons == ["no trigger"]  # r1 answered
    assert run(retrainer_settings(), store=v1_store, force=True).outcome == "promoted"


def test_a_prediction_labelled_twice_trains_once(v1_store: Store) -> None:
    add_feedback(v1_store, 40, ids=True)
    add_feedback(v1_store, 40, ids=True, start=40)  # every label sent again (a retry)
    result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "promoted", result.describe()
    manifest = ModelRegistry(v1_store, SIGNING_KEY).manifest("v2")
    assert manifest["training_data"]["feedback_rows"] == 32  # 40 rows, 20% newest held out


def test_labelled_rows_no_model_can_train_on_are_left_out(
    v1_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored before the API refused them: one such row made every later retrain fail
    # (scikit-learn: "Input X contains infinity" / the variance overflowed to NaN).
    add_feedback(v1_store, 40)
    row = pd.read_csv(DATA).drop(columns="target").iloc[0].to_dict()
    for i, (name, value) in enumerate([("mean_area", 1e308), ("mean_radius", 1e200)]):
        label(v1_store, {**row, name: value}, "0", time.time() + 1 + i)
    with caplog.at_level(logging.WARNING, logger="mlplatform"):
        result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "promoted", result.describe()
    assert "left out 2 of 42 labelled rows" in caplog.text
    manifest = ModelRegistry(v1_store, SIGNING_KEY).manifest("v2")
    assert manifest["training_data"]["feedback_rows"] == 32


def test_a_failed_rollout_says_what_is_in_production_and_the_rows_stay_answered(
    v1_store: Store,
) -> None:
    add_feedback(v1_store, 40)
    nobody = f"http://127.0.0.1:{free_port()}"
    settings = retrainer_settings(rollout="local", serving_url=nobody, admin_token="t")
    with pytest.raises(RolloutFailed, match="did not answer") as failed:
        run(settings, store=v1_store)
    assert "v2 is published and in production; serving loads it when it restarts" in str(
        failed.value
    )
    assert ModelRegistry(v1_store, SIGNING_KEY).production_version() == "v2"
    # The run is recorded as what it was: promoted, its rollout failed.
    (record,) = [v1_store.get_json(k) for k in v1_store.list_keys("state/retrain-runs/")]
    assert (record["outcome"], record["version"], record["rollout"]) == ("promoted", "v2", "failed")
    # The watermark was written before the rollout: the same rows do not retrain again.
    assert run(retrainer_settings(), store=v1_store).outcome == "skipped"


def test_a_candidate_trained_on_corrupted_labels_is_rejected(v1_store: Store) -> None:
    add_feedback(v1_store, 600, corrupt=True)  # every label flipped
    result = run(retrainer_settings(), store=v1_store)
    assert result.outcome == "rejected", result.describe()
    gate = result.gate
    assert gate is not None
    # The flipped newest slice hides the damage on the whole holdout; the reference part shows it.
    assert gate.reference_candidate < gate.reference_current - 0.2
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    assert registry.production_version() == "v1"
    assert registry.versions() == ["v1"]


def test_drift_and_quality_in_the_latest_report_trigger(v1_store: Store) -> None:
    add_feedback(v1_store, 5)  # fewer than k: the report is the trigger
    v1_store.put_json(
        keys.report_file("2026-11-20T00-00-00Z", "summary.json"),
        {"id": "r1", "drift": {"embedding": {"share": 0.8}}, "quality": {"f1": 0.5}},
    )
    result = run(retrainer_settings(), store=v1_store)
    assert result.reasons == ["drift share 0.80 > 0.5 in report r1", "f1 0.500 < 0.8 in report r1"]
    assert result.outcome == "promoted"
    # A report triggers once: every run after it published another identical version.
    assert run(retrainer_settings(), store=v1_store).outcome == "skipped"
    assert ModelRegistry(v1_store, SIGNING_KEY).versions() == ["v1", "v2"]
    v1_store.put_json(
        keys.report_file("2026-11-21T00-00-00Z", "summary.json"),
        {"id": "r2", "drift": {"embedding": {"share": 0.7}}},
    )
    assert run(retrainer_settings(), store=v1_store).reasons == [
        "drift share 0.70 > 0.5 in report r2"
    ]


def test_two_retrains_started_at_once_one_runs_one_says_the_lock_is_held(
    v1_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = retrain_module.train_with_progress
    in_training = threading.Event()

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        in_training.set()
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain_module, "train_with_progress", slow)
    results = []
    first = threading.Thread(
        target=lambda: results.append(run(retrainer_settings(), force=True, store=v1_store))
    )
    first.start()
    assert in_training.wait(30)
    results.append(run(retrainer_settings(), force=True, store=v1_store))
    first.join()
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["locked", "promoted"]
    locked = next(r for r in results if r.outcome == "locked")
    assert "state/retrain.lock is held by" in locked.reasons[0]
    assert ModelRegistry(v1_store, SIGNING_KEY).versions() == ["v1", "v2"]


def test_an_expired_lock_is_broken(v1_store: Store) -> None:
    stale = StoreLock(v1_store, keys.RETRAIN_LOCK, ttl_seconds=0.01, owner="dead-pod")
    stale.acquire()
    time.sleep(0.05)
    assert run(retrainer_settings(), force=True, store=v1_store).outcome == "promoted"
    live = StoreLock(v1_store, keys.RETRAIN_LOCK, ttl_seconds=600, owner="other")
    live.acquire()
    with pytest.raises(LockHeld, match="held by other"):
        StoreLock(v1_store, keys.RETRAIN_LOCK, ttl_seconds=600).acquire()
    live.release()
    assert not v1_store.exists(keys.RETRAIN_LOCK)


def test_rollback_moves_production_back(v1_store: Store) -> None:
    run(retrainer_settings(), force=True, store=v1_store)
    alias = rollback(retrainer_settings(), store=v1_store)
    assert (alias["version"], alias["rolled_back_from"], alias["rollout"]) == ("v1", "v2", "none")
    assert ModelRegistry(v1_store, SIGNING_KEY).production_version() == "v1"


def test_a_rollback_holds_until_the_user_lifts_it(v1_store: Store) -> None:
    # As seen locally: `make rollback`, then the scheduled report still saw drift, and the
    # retrainer answered it by promoting a new version over the user's decision.
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    add_feedback(v1_store, 40)
    assert run(retrainer_settings(), store=v1_store).outcome == "promoted"
    rollback(retrainer_settings(), store=v1_store)
    assert registry.hold() is not None and "rolled back from v2" in registry.hold()["reason"]  # type: ignore[index]
    v1_store.put_json(
        keys.report_file("2026-11-20T00-00-00Z", "summary.json"),
        {"id": "r1", "drift": {"embedding": {"share": 0.8}}},
    )
    add_feedback(v1_store, 40, seed=1, start=100)
    held = run(retrainer_settings(), store=v1_store)
    assert held.outcome == "held", held.describe()
    assert held.gate is not None and held.gate.promote  # it would have been promoted
    assert held.version == "v3" and "kept for review" in held.reasons[-1]
    assert registry.production_version() == "v1"
    assert "v3" in registry.versions()  # the candidate is kept, for `promote v3`
    records = [v1_store.get_json(k) for k in v1_store.list_keys("state/retrain-runs/")]
    assert [r["outcome"] for r in records] == ["promoted", "held"]
    # A forced retrain holds too; lifting the hold lets the next one promote.
    assert run(retrainer_settings(), force=True, store=v1_store).outcome == "held"
    assert unpin(retrainer_settings(), store=v1_store)["version"] == "v1"
    assert registry.hold() is None
    assert run(retrainer_settings(), force=True, store=v1_store).outcome == "promoted"
    assert registry.production_version() == "v5"


def test_a_pin_holds_and_a_promotion_by_hand_lifts_it(v1_store: Store) -> None:
    registry = ModelRegistry(v1_store, SIGNING_KEY)
    run(retrainer_settings(), force=True, store=v1_store)  # v2
    assert promote(retrainer_settings(), "v1", pin=True, store=v1_store)["rollout"] == "none"
    assert registry.production_version() == "v1" and registry.hold() is not None
    assert run(retrainer_settings(), force=True, store=v1_store).outcome == "held"  # v3
    promote(retrainer_settings(), "v3", store=v1_store)
    assert registry.production_version() == "v3" and registry.hold() is None
    assert registry.production()["history"] == ["v1", "v2", "v1"]  # type: ignore[index]


def test_a_run_without_a_model_fails_with_a_clear_error(local_store: Store) -> None:
    from mlplatform_common.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="no model is in production"):
        run(retrainer_settings(), force=True, store=local_store)
    assert not local_store.exists(keys.RETRAIN_LOCK)
