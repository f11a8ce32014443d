import pytest

from mtl_lightning import TaskSpec
from mtl_lightning.tasks import validate_tasks


def test_chance_and_role():
    spec = TaskSpec("speaker", 11, role="adversarial", weight=0.5)
    assert spec.adversarial and spec.is_classification
    assert spec.chance == pytest.approx(1 / 11)
    assert TaskSpec("y", 2, kind="regression").chance != TaskSpec("y", 2, kind="regression").chance


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "size": 3}, "name"),
        ({"name": "a/b", "size": 3}, "name"),
        ({"name": "a", "size": 1}, "size must be an integer >= 2"),
        ({"name": "a", "size": 3, "kind": "ranking"}, "kind"),
        ({"name": "a", "size": 3, "role": "helper"}, "role"),
        ({"name": "a", "size": 3, "weight": -1.0}, "weight"),
        ({"name": "a", "size": 3, "weight": float("nan")}, "weight"),
    ],
)
def test_bad_specs_name_the_task_and_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskSpec(**kwargs)


def test_task_list_checks():
    with pytest.raises(ValueError, match="duplicate task names: \\['a'\\]"):
        validate_tasks([TaskSpec("a", 2), TaskSpec("a", 3)])
    with pytest.raises(ValueError, match="role='main'"):
        validate_tasks([TaskSpec("a", 2, role="adversarial")])
    with pytest.raises(ValueError, match="at least one"):
        validate_tasks([])
    assert validate_tasks([{"name": "a", "size": 2}])[0] == TaskSpec("a", 2)
