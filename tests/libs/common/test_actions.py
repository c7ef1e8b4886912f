"""actions.train names a data set exactly as the datasets module does: what one admits, the
other does, so serving's 404 (no such data set) is the only refusal a good name meets."""

from __future__ import annotations

import pytest

from mlplatform_common import actions, datasets
from mlplatform_common.errors import InvalidInput


def test_the_train_pattern_is_the_dataset_name_pattern() -> None:
    assert f"^{actions.DATASET}$" == datasets.NAME


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "churn-2024", "a", "a" * 64])
def test_a_data_set_name_is_a_train_action(name: str) -> None:
    assert datasets.check_name(name) == name
    action = actions.train(name)
    assert (action.verb, action.argument, str(action)) == ("train", name, f"train:{name}")
    assert actions.parse(str(action)) == action


@pytest.mark.parametrize("name", ["", "Wine", "-wine", "wine_", "../x", "a b", "a" * 65])
def test_a_bad_name_is_refused_by_both(name: str) -> None:
    with pytest.raises(InvalidInput, match="name"):
        datasets.check_name(name)
    with pytest.raises(InvalidInput, match=f"{actions.ENV}=.*train:<data set>"):
        actions.train(name)
