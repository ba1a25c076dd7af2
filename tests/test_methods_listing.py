"""``colorbench methods``: one line per registered method (paper · loss · output)."""
import pytest

from benchmarks.cli import main as cli
from pretext.methods import list_methods
from pretext.methods.base import _REGISTRY


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_has_a_summary(name):
    summary = _REGISTRY[name].summary
    assert summary and "\n" not in summary
    assert summary.count("·") >= 2, f"{name}: the summary reads 'paper · loss · output'"


def test_the_command_prints_one_line_per_method(capsys):
    assert cli(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_methods()
    assert all(_REGISTRY[line.split()[0]].summary in line for line in lines)


def test_one_method_with_its_kwargs(capsys):
    assert cli(["methods", "zhang"]) == 0
    first, kwargs = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("zhang") and "Zhang et al. 2016" in first
    assert "loss='full'" in kwargs and "k=5" in kwargs


def test_unknown_method_is_one_line_exit_2(capsys):
    assert cli(["methods", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown method 'nope'" in err and "zhang" in err



def test_the_methods_suite_trains_every_registered_method():
    """configs/suites/methods.yaml holds one tiny recipe per registered method (Zhang's as
    its pretrain_config), so a new method cannot be left out of the comparison."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    suite = yaml.safe_load((root / "configs/suites/methods.yaml").read_text())
    recipes = [suite["pretrain_config"], *suite["methods"]]
    trained = [yaml.safe_load((root / recipe).read_text())["method"] for recipe in recipes]
    assert sorted(trained) == sorted(list_methods())
