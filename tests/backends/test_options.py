"""Bad option values give a ValueError that names the valid choices."""

from __future__ import annotations

import pytest

from ninep.backends.local import MODEL_CHOICES, make_model
from ninep.backends.qid import MULTIDEVS_CHOICES, QidMapper


def test_bad_multidevs_lists_valid_values() -> None:
    with pytest.raises(ValueError) as exc:
        QidMapper(1, "bogus")
    message = str(exc.value)
    assert "bogus" in message
    assert all(choice in message for choice in MULTIDEVS_CHOICES)
    assert set(MULTIDEVS_CHOICES) == {"remap", "forbid", "warn"}


def test_bad_security_model_lists_valid_values() -> None:
    with pytest.raises(ValueError) as exc:
        make_model("bogus")
    message = str(exc.value)
    assert "bogus" in message
    assert all(choice in message for choice in MODEL_CHOICES)
    assert {"passthrough", "mapped-xattr", "mapped-file", "none"} <= set(MODEL_CHOICES)


@pytest.mark.parametrize("name", ["passthrough", "none"])
def test_fmode_dmode_only_with_mapped_models(name: str) -> None:
    for kwargs in ({"fmode": 0o600}, {"dmode": 0o700}):
        with pytest.raises(ValueError, match="mapped"):
            make_model(name, **kwargs)
    assert make_model(name).name == name
