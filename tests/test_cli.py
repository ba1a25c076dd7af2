"""Every subcommand, tried as a new user would with bad input: one line on stderr naming
what and where, exit code 2, no traceback; ``--debug`` shows the traceback instead."""
from pathlib import Path

import pytest

from benchmarks.cli import COMMANDS, main as cli
from tests.conftest import REPO


def _junk(tmp: Path) -> str:
    path = tmp / "junk.pt"
    path.write_bytes(b"\x00garbage, not a checkpoint")
    return str(path)


# command -> bad argv (tmp folder -> list of arguments); every command must have one
BAD = {
    "make-data": lambda t: ["make-data", "--out", str(t / "d"), "--size", "2"],
    "prior": lambda t: ["prior", "--config", str(t / "missing.yaml")],
    "methods": lambda t: ["methods", "no_such_method"],
    "pretrain": lambda t: ["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--set", "optim.lrr=1"],
    "colorize": lambda t: ["colorize", str(REPO / "README.md"), "--checkpoint", _junk(t), "--out", str(t / "o")],
    "eval-color": lambda t: ["eval-color", "--checkpoint", _junk(t), "--out", str(t / "o")],
    "probe": lambda t: ["probe", "--config", str(REPO / "configs/downstream/probe_tiny.yaml"), "--checkpoint", _junk(t),
                        "--run-dir", str(t / "r")],
    "voc-cls": lambda t: ["voc-cls", "--config", str(REPO / "configs/downstream/voc_cls_tiny.yaml"), "--protocol",
                          "svm", "--init", "gaussian", "--set", f"data.root={t / 'no_such_VOC2007'}"],
    "detect": lambda t: ["detect", "--config", str(REPO / "configs/downstream/det_tiny.yaml"), "--checkpoint", _junk(t),
                         "--run-dir", str(t / "r")],
    "det-eval": lambda t: ["det-eval", "--voc-root", str(t / "missing"), "--year", "2007", "--split", "test",
                           "--dets", str(t)],
    "segment": lambda t: ["segment", "--config", str(REPO / "configs/downstream/seg_tiny.yaml"), "--set",
                          "no_such_key=1"],
    "seg-eval": lambda t: ["seg-eval", "--pred", str(t / "missing"), "--gt", str(t)],
    "table": lambda t: ["table", "--runs", str(t / "no_such_runs"), "--out", str(t / "o")],
    "demo": lambda t: ["demo", "--set", "no_such_key=1"],
    "speed": lambda t: ["speed", "encode", "--repeats", "0"],
    "import-weights": lambda t: ["import-weights", "--format", "eccv16-pytorch", _junk(t), "--out", str(t / "c.pt")],
    "export-weights": lambda t: ["export-weights", _junk(t), "--format", "torchvision", "--out", str(t / "w.pt")],
    "study": lambda t: ["study", "create", "--real", str(t / "missing"), "--method", f"m={t}", "--out", str(t / "s")],
}


def test_every_command_has_a_bad_input_case():
    assert set(BAD) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, capsys):
    code = cli(BAD[name](tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "weights_only=False" not in err  # never advise unsafe loading


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="optim.lrr"):
        cli([*BAD["pretrain"](tmp_path), "--debug"])
