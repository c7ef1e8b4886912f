"""simulate.py: the drift transforms, and the replay loop against a real HTTP server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import LoadedModel
from mlplatform_common.storage import Store
from mlplatform_reporter.simulate import holdout, parse_shares, rebalance, replay, shift_scale
from tests.conftest import DATA
from tests.services.reporter.conftest import StubServing


def test_shift_scale_moves_only_the_chosen_features(heldout: pd.DataFrame) -> None:
    X = heldout.drop(columns="target")
    chosen = ["mean_radius", "worst_area"]
    out = shift_scale(X, chosen, shift=2.0, scale=1.5)
    for f in chosen:
        mean, std = X[f].mean(), X[f].std(ddof=0)
        assert out[f].mean() == pytest.approx(mean + 2.0 * std)
        assert out[f].std(ddof=0) == pytest.approx(1.5 * std)
    others = [c for c in X.columns if c not in chosen]
    pd.testing.assert_frame_equal(out[others], X[others])
    pd.testing.assert_frame_equal(shift_scale(X, chosen), X)  # no drift asked: unchanged
    with pytest.raises(ValueError, match="unknown features"):
        shift_scale(X, ["nope"], shift=1.0)


def test_shift_scale_units_come_from_the_given_stats(heldout: pd.DataFrame) -> None:
    X = heldout.drop(columns="target")
    stats = X * 2
    out = shift_scale(X.iloc[:5], ["mean_radius"], shift=1.0, stats=stats)
    expected = X["mean_radius"].iloc[:5] + stats["mean_radius"].std(ddof=0)
    np.testing.assert_allclose(out["mean_radius"], expected)


def test_rebalance_sets_class_shares(heldout: pd.DataFrame) -> None:
    out = rebalance(heldout, "target", {"1": 0.9}, n=1000, seed=3)
    assert len(out) == 1000
    share = (out["target"].astype(str) == "1").mean()
    assert 0.86 < share < 0.94
    assert set(out.columns) == set(heldout.columns)
    with pytest.raises(ValueError, match="unknown classes"):
        rebalance(heldout, "target", {"7": 0.5}, n=10)
    with pytest.raises(ValueError, match="sum to at most 1"):
        rebalance(heldout, "target", {"0": 0.7, "1": 0.7}, n=10)
    assert parse_shares("1=0.9, 0=0.1") == {"1": 0.9, "0": 0.1}
    with pytest.raises(ValueError, match="label=share"):
        parse_shares("1:0.9")


def test_holdout_is_the_retrainers_test_split(heldout: pd.DataFrame) -> None:
    frame = pd.read_csv(DATA)
    rows = holdout(frame, "target")
    assert len(rows) == len(heldout)
    pd.testing.assert_frame_equal(
        rows.reset_index(drop=True)[heldout.columns], heldout, check_dtype=False
    )


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_replay_sends_rows_and_delayed_feedback(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    rows = heldout.iloc[:40].reset_index(drop=True)
    with StubServing(store, model) as serving, httpx.Client(base_url=serving.url) as client:
        summary = replay(
            client,
            rows,
            model.features,
            "target",
            rate=200.0,
            batch_size=4,
            feedback_fraction=0.5,
            feedback_delay=0.3,
            seed=7,
            progress=False,
        )
    assert summary.rows == 40
    assert summary.predicted == 40
    assert summary.errors == 0
    expected_feedback = int((np.random.default_rng(7).random(40) < 0.5).sum())
    assert summary.feedback_sent == expected_feedback > 0
    assert summary.feedback_errors == 0
    assert min(serving.feedback_delays) >= 0.3
    truth = model.pipeline.predict(rows[model.features])
    assert summary.accuracy == pytest.approx((truth == rows["target"].to_numpy()).mean())
    assert summary.model_versions == {model.version: 40}
    assert len(datalog.read_predictions(store)) == 40
    feedback = datalog.read_feedback(store)
    assert len(feedback) == expected_feedback
    assert set(feedback["target"]) <= {"0", "1"}
    assert "40 predicted, 0 failed" in summary.render()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_replay_counts_rejected_rows_and_keeps_going(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    rows = heldout.iloc[:10].reset_index(drop=True)
    rows.loc[[2, 5], model.features[0]] = -1.0  # the stub answers 422 for these
    with StubServing(store, model) as serving, httpx.Client(base_url=serving.url) as client:
        summary = replay(client, rows, model.features, "target", rate=0, progress=False)
    assert summary.predicted == 8
    assert summary.errors == 2
    assert any("422" in e for e in summary.error_samples)


def test_replay_reports_an_unreachable_api(heldout: pd.DataFrame) -> None:
    from tests.conftest import free_port

    with httpx.Client(base_url=f"http://127.0.0.1:{free_port()}", timeout=1) as client:
        summary = replay(
            client, heldout.iloc[:3], list(heldout.columns[:-1]), None, rate=0, progress=False
        )
    assert summary.predicted == 0
    assert summary.errors == 3
    with pytest.raises(ValueError, match="feedback needs the true labels"):
        replay(client, heldout.iloc[:1], [], None, feedback_fraction=0.5, progress=False)


def test_cli_simulate_labels_with_the_writer_token_and_waits_out_the_rate(
    tmp_path, trained, shipped_dataset, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Against a real serving that asks for the writer key and allows 2 labels a second after
    a burst of 3: every label is stored, the refused ones sent again after Retry-After."""
    from mlplatform_reporter.__main__ import main
    from mlplatform_reporter.settings import get_settings
    from tests.conftest import SIGNING_KEY, ServingProcess, published_local_store

    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_WRITER_TOKEN": "sim-writer",
        "MLPLATFORM_FEEDBACK_RATE": "2",
        "MLPLATFORM_FEEDBACK_BURST": "3",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_DEV_MODE": "false",
    }
    serving = ServingProcess(env).start()
    args = ["simulate", "--url", serving.url, "--data", str(DATA), "--rows", "8"]
    args += ["--rate", "0", "--feedback-fraction", "1"]
    monkeypatch.setenv("MLPLATFORM_DEV_MODE", "false")
    try:
        monkeypatch.setenv("MLPLATFORM_WRITER_TOKEN", "not-the-key")
        get_settings.cache_clear()
        assert main(args) == 0
        assert "feedback: 0 sent, 8 failed" in capsys.readouterr().out
        assert store.list_keys("production/feedback/") == []

        monkeypatch.setenv("MLPLATFORM_WRITER_TOKEN", "sim-writer")
        get_settings.cache_clear()
        assert main(args) == 0
        assert "feedback: 8 sent, 0 failed" in capsys.readouterr().out
        refused = [
            line
            for line in httpx.get(serving.url + "/metrics").text.splitlines()
            if line.startswith("mlplatform_http_requests_total{")
            and 'route="/feedback"' in line
            and 'status="429"' in line
        ]
        assert refused and float(refused[0].split()[-1]) > 0  # the rate was met, and waited out
    finally:
        serving.stop()
        get_settings.cache_clear()
    assert len(store.list_keys("production/feedback/")) == 8
    assert len(datalog.read_feedback(store)) == 8


# -- any task: the version's typed schema, category drift, regression feedback --------------


def published_card(tmp_path, trained, dataset) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """The card ``GET /model`` answers with: the published version's manifest."""
    from mlplatform_common.registry import ModelRegistry
    from tests.conftest import SIGNING_KEY, published_local_store

    store = published_local_store(tmp_path / dataset.name, trained, dataset)
    return ModelRegistry(store, SIGNING_KEY).manifest("v1")


def test_rows_for_penguins_and_diabetes_are_valid_per_the_schema(
    tmp_path, penguins_trained, penguins_dataset, diabetes_trained, diabetes_dataset
) -> None:  # type: ignore[no-untyped-def]
    from mlplatform_common.schema import encode, is_category, nullable
    from mlplatform_reporter.simulate import records, version_of

    for trained, dataset, task in (
        (penguins_trained, penguins_dataset, "classification"),
        (diabetes_trained, diabetes_dataset, "regression"),
    ):
        version = version_of(published_card(tmp_path, trained, dataset))
        assert version.task == task and version.target == dataset.target
        assert version.dataset == dataset.name
        frame = pd.read_csv(DATA.parent / f"{dataset.name}.csv")
        rows = records(frame, version.schema)
        assert len(rows) == len(frame)
        json.dumps(rows, allow_nan=False)  # no NaN on the wire: a missing cell is null
        for spec in version.schema:
            values = [r[spec["name"]] for r in rows]
            missing = sum(v is None for v in values)
            assert missing == frame[spec["name"]].isna().sum()
            assert missing == 0 or nullable(spec)
            present = [v for v in values if v is not None]
            if is_category(spec):
                assert set(present) <= set(spec["categories"])  # text the version knows
            else:
                assert all(type(v) is float and np.isfinite(v) for v in present)
        codes = encode(pd.DataFrame(rows), version.schema)  # as serving encodes them
        for j, spec in enumerate(version.schema):
            if is_category(spec):
                assert np.nanmax(codes[:, j]) < len(spec["categories"])  # none unknown
        if dataset.name == "penguins":
            assert any(r["sex"] is None for r in rows) and {r["island"] for r in rows} == {
                "Biscoe",
                "Dream",
                "Torgersen",
            }


def test_category_drift_shifts_the_mix_toward_a_value(penguins_dataset) -> None:  # type: ignore[no-untyped-def]
    from mlplatform_reporter.simulate import parse_category_drift, shift_categories

    frame = pd.read_csv(DATA.parent / "penguins.csv").sample(4000, replace=True, random_state=0)
    present = frame["sex"].notna()
    before = (frame["island"] == "Torgersen").mean()
    out = shift_categories(frame, "island", "Torgersen", 0.6, seed=1)
    after = (out["island"] == "Torgersen").mean()
    assert after == pytest.approx(before + (1 - before) * 0.6, abs=0.03)
    assert after > before + 0.4  # measurable: a drift test sees it
    others = [c for c in frame.columns if c != "island"]
    pd.testing.assert_frame_equal(out[others], frame[others])
    # a nullable category keeps its missing cells: only present values move
    sexed = shift_categories(frame, "sex", "female", 1.0, seed=1)
    assert sexed["sex"].isna().sum() == (~present).sum()
    assert set(sexed["sex"].dropna()) == {"female"}
    pd.testing.assert_frame_equal(shift_categories(frame, "island", "Dream", 0.0), frame)
    with pytest.raises(ValueError, match="unknown feature"):
        shift_categories(frame, "colour", "red", 0.5)
    with pytest.raises(ValueError, match="within 0 and 1"):
        shift_categories(frame, "island", "Dream", 1.5)
    assert parse_category_drift("island = Dream") == ("island", "Dream")
    with pytest.raises(ValueError, match="feature=value"):
        parse_category_drift("island")
    with pytest.raises(ValueError, match="categories"):
        shift_scale(frame, ["island"], shift=1.0)


def test_regression_feedback_targets_are_numbers_with_optional_noise() -> None:
    from mlplatform_reporter.simulate import noisy_targets

    y = pd.read_csv(DATA.parent / "diabetes.csv")["progression"]
    exact = noisy_targets(y, "regression", 0.0)
    assert all(type(v) is float for v in exact) and exact == [float(v) for v in y]
    noisy = noisy_targets(y, "regression", 0.5, seed=3)
    assert all(type(v) is float for v in noisy)
    diff = np.asarray(noisy) - y.to_numpy()
    assert np.std(diff) == pytest.approx(0.5 * np.std(y), rel=0.15)
    assert abs(np.mean(diff)) < 0.2 * np.std(y)
    classes = pd.read_csv(DATA.parent / "penguins.csv")["species"]
    flipped = noisy_targets(classes, "classification", 0.3, seed=3)
    assert set(flipped) <= set(classes)
    share = np.mean([a != b for a, b in zip(flipped, classes, strict=True)])
    assert share == pytest.approx(0.3, abs=0.06)
    with pytest.raises(ValueError, match="non-negative"):
        noisy_targets(y, "regression", -1.0)


def test_a_regression_holdout_is_a_random_split() -> None:
    from mlplatform_reporter.simulate import frame_version

    frame = pd.read_csv(DATA.parent / "diabetes.csv")
    version = frame_version(frame, "progression")
    assert version.task == "regression" and "progression" not in version.features
    rows = holdout(frame, "progression", task=version.task)  # stratified would refuse it
    assert len(rows) == int(np.ceil(0.2 * len(frame)))  # scikit-learn rounds the test part up
    with pytest.raises(ValueError, match="least populated class"):
        holdout(frame, "progression")  # by class: ~200 values of one row each


def test_cli_simulate_sends_numeric_feedback_to_a_regression_serving(
    tmp_path, diabetes_trained, diabetes_dataset, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A real serving of the diabetes version: the simulator reads its task from GET /model,
    sends rows, and labels them with noisy numbers, stored as the rows' true values."""
    from mlplatform_reporter.__main__ import main
    from mlplatform_reporter.settings import get_settings
    from tests.conftest import SIGNING_KEY, ServingProcess, published_local_store

    store = published_local_store(tmp_path / "store", diabetes_trained, diabetes_dataset)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_WRITER_TOKEN": "sim-writer",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_DEV_MODE": "false",
    }
    serving = ServingProcess(env).start()
    monkeypatch.setenv("MLPLATFORM_WRITER_TOKEN", "sim-writer")
    monkeypatch.setenv("MLPLATFORM_DEV_MODE", "false")
    get_settings.cache_clear()
    data = DATA.parent / "diabetes.csv"
    try:
        args = ["simulate", "--url", serving.url, "--data", str(data), "--rows", "12"]
        args += ["--rate", "0", "--feedback-fraction", "1", "--label-noise", "0.2"]
        assert main(args) == 0
    finally:
        serving.stop()
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "12 predicted, 0 failed" in out and "feedback: 12 sent, 0 failed" in out
    assert "mean absolute error against the true values" in out
    feedback = datalog.read_feedback(store)
    targets = pd.to_numeric(feedback["target"])  # numbers, as text in the log
    truths = set(pd.read_csv(data)["progression"])
    assert len(targets) == 12 and not set(targets) & truths  # noisy: none is a true value


def test_cli_simulate_drifts_a_category_against_a_mixed_type_serving(
    tmp_path, penguins_trained, penguins_dataset, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A real serving of the penguins version: rows go out with island text and null sex
    cells, and the logged mix of islands leans toward the drifted value."""
    from mlplatform_reporter.__main__ import main
    from mlplatform_reporter.settings import get_settings
    from tests.conftest import SIGNING_KEY, ServingProcess, published_local_store

    store = published_local_store(tmp_path / "store", penguins_trained, penguins_dataset)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.2",
        "MLPLATFORM_DEV_MODE": "false",
    }
    serving = ServingProcess(env).start()
    monkeypatch.setenv("MLPLATFORM_DEV_MODE", "false")
    get_settings.cache_clear()
    data = DATA.parent / "penguins.csv"
    try:
        # no --data: the served version's data set, data/penguins.csv
        args = ["simulate", "--url", serving.url, "--all-rows"]
        args += ["--rate", "0", "--batch-size", "50", "--category-drift", "island=Torgersen"]
        args += ["--category-strength", "0.8"]
        assert main(args) == 0
        frame = pd.read_csv(data)
        for _ in range(100):  # serving writes its log in the background
            logged = datalog.read_predictions(store)
            if len(logged) == len(frame):
                break
            __import__("time").sleep(0.2)
    finally:
        serving.stop()
        get_settings.cache_clear()
    assert f"{len(frame)} predicted, 0 failed" in capsys.readouterr().out
    assert len(logged) == len(frame)
    before = (frame["island"] == "Torgersen").mean()
    after = (logged["island"] == "Torgersen").mean()
    assert after == pytest.approx(before + (1 - before) * 0.8, abs=0.06)
    assert logged["sex"].isna().sum() == frame["sex"].isna().sum()  # sent as null
