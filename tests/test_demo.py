"""End-to-end smoke run of `colorbench demo` with every step shrunk to seconds."""
import json

import pytest

from benchmarks.cli import main as cli


@pytest.mark.slow
def test_demo_runs_every_step_and_reuses_them(tmp_path, capsys):
    sets = {
        "data_dir": tmp_path / "data", "runs_dir": tmp_path / "runs", "results_dir": tmp_path / "results",
        "make_data_args": "[--size,48,--num-train,6,--num-val,3,--num-voc,24]",
        "pretrain_overrides": "[iterations=3,batch_size=8,data.num_workers=0,val_images=8,data.val_limit=16,"
                              "prior.max_images=32,ckpt_every=3,encoder_kwargs.width=0.125]",
        "probe_overrides": "[data.augment=false,cache.enabled=true,optim.iterations=4,trunk.supervised.iterations=4,"
                           "data.num_workers=0,batch_size=8,trunk.encoder_kwargs.width=0.125]",
        "eval_overrides": "[classifier.epochs=1,timing_runs=1,prior.max_images=32]",
        "pascal_overrides": "{voc_cls_finetune: [finetune.iterations=2,finetune.batch_size=4,finetune.test_crops=2,"
                            "trunk.encoder_kwargs.width=0.125], voc_cls_svm: ['svm.costs=[1.0]',svm.n_jobs=1,"
                            "trunk.encoder_kwargs.width=0.125], detect: [optim.iterations=2,'optim.milestones=[1]',"
                            "trunk.encoder_kwargs.width=0.125], segment: ['optim.phase_iters=[2,1,1]',batch_size=4,"
                            "trunk.encoder_kwargs.width=0.125]}",
    }
    argv = ["demo"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs"
    pascal = [f"{p}-{t}" for p in ("voc_cls_finetune", "voc_cls_svm", "detect", "segment")
              for t in ("colorization", "gaussian")]
    for name in ("pretrain-full", "color", "probe-colorization", "probe-gaussian", "probe-kmeans", "probe-supervised",
                 *pascal):
        assert json.loads((runs / name / "metrics.json").read_text())["records"], name
    tables = tmp_path / "results" / "tables"
    probe = (tables / "probe_builtin.md").read_text()
    for method in ("colorization", "gaussian", "kmeans", "supervised"):
        assert f"| {method} | run " in probe
    assert (tables / "probe_builtin.png").is_file() and (tables / "table1_builtin.md").is_file()
    colorized = {p.name for p in (tmp_path / "results" / "colorized").iterdir()}
    assert {"astronaut.png", "chelsea.png", "coffee.png", "rocket.png"} <= colorized
    assert "Where everything is" in out
    # a second run reuses every finished step
    assert cli(argv) == 0
    assert capsys.readouterr().out.count("reusing") >= 6 + len(pascal)
    assert "| colorization | run " in (tables / "pascal.md").read_text()
