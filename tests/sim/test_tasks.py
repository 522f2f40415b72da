import pytest

from smolvla.errors import ConfigError
from smolvla.sim.tasks import DIFFICULTY, GROUPS, INSTRUCTIONS, MT10, TASKS, canonical, resolve_tasks


def test_catalogue_matches_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

    assert list(TASKS) == [name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS]
    assert list(MT10) == [name.removesuffix("-v3") for name in MT10_V3]


def test_difficulty_split_and_instructions():
    sizes = {level: len(GROUPS[level]) for level in ("easy", "medium", "hard", "very_hard")}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert set(DIFFICULTY) == set(TASKS)
    assert len(set(INSTRUCTIONS.values())) == 50  # one distinct instruction per task
    assert all(text.endswith(".") and text[0].isupper() for text in INSTRUCTIONS.values())


def test_resolve_task_sets():
    assert resolve_tasks("pick-place-v3") == ["pick-place"]
    assert resolve_tasks("reach, push_wall,reach") == ["reach", "push-wall"]
    assert resolve_tasks("MT10") == list(MT10)
    assert resolve_tasks("very-hard") == list(GROUPS["very_hard"])
    assert resolve_tasks(["hard", "reach"])[-1] == "reach"
    assert len(resolve_tasks("mt50")) == 50


def test_unknown_task_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        canonical("pick-and-place")
    assert "pick-and-place" in str(err.value) and "pick-place" in str(err.value) and "mt10" in str(err.value)
    with pytest.raises(ConfigError, match="empty"):
        resolve_tasks(" , ")
