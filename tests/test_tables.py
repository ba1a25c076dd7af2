import json


from benchmarks.cli import main as cli
from benchmarks.tables import build_tables, load_records
from pretext.engine.runs import RunDir


def _probe_run(root, run_id, dataset, values, method="colorization"):
    run = RunDir(root / run_id)
    run.write_records([{"suite": "probe", "method": method, "encoder": "alexnet_cc", "protocol": "linear_probe",
                        "dataset": dataset, "split": "val", "layer": f"conv{i + 1}", "metric": "top1", "value": v}
                       for i, v in enumerate(values)])


def test_tables_keep_data_sets_apart_and_mark_sources(tmp_path):
    runs = tmp_path / "runs"
    _probe_run(runs, "ours-builtin", "builtin", [30.0, 40.0, 50.0, 60.0, 70.0])
    _probe_run(runs, "ours-imagenet", "imagenet", [12.0, 20.0, 25.0, 26.0, 24.0])
    tables, loaded = build_tables([runs], tmp_path / "out", ("md", "csv", "tex"))
    builtin, imagenet = tables["probe_builtin"], tables["probe_imagenet"]
    # the built-in table holds only our built-in run: no published (ImageNet) rows in it
    assert len(builtin) == 1 and builtin.index[0][1].startswith("run ours-builtin")
    assert list(builtin.columns) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert builtin.iloc[0]["conv3"] == 50.0
    # the ImageNet table: our run first, then the 8 published rows, each marked published
    assert imagenet.index[0][1].startswith("run ours-imagenet")
    assert sum(idx[1].startswith("published") for idx in imagenet.index) == 8
    gaussian = [idx for idx in imagenet.index if idx[0] == "Gaussian"][0]
    assert imagenet.loc[gaussian]["conv1"] == 11.6
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / "out" / f"probe_builtin.{ext}").is_file()
    assert (tmp_path / "out" / "probe_builtin.png").is_file()
    assert "| colorization | run ours-builtin" in (tmp_path / "out" / "probe_builtin.md").read_text()
    # best layer per run: 70 for the built-in run
    assert tables["probe_best_layer_builtin"].iloc[0]["best"] == 70.0


def test_bad_run_directories_are_reported_and_skipped(tmp_path):
    runs = tmp_path / "runs"
    _probe_run(runs, "good", "builtin", [1.0, 2.0, 3.0, 4.0, 5.0])
    (runs / "half").mkdir()
    (runs / "half" / "metrics.json").write_text('{"schema": "colorbench-records-v1", "records": [')  # cut off
    (runs / "old").mkdir()
    (runs / "old" / "metrics.json").write_text(json.dumps({"schema": "v0", "records": []}))
    loaded = load_records([runs])
    assert {p.split("/")[-2] for p, _ in loaded.skipped} == {"half", "old"}
    assert len(loaded.records) == 5


def test_empty_runs_folder_gives_published_rows_only(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cli(["table", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--format", "md"]) == 0
    text = (tmp_path / "out" / "pascal.md").read_text()
    assert "| Zhang et al. (colorization) | published" in text and "| 61.50 | 65.90 | 46.90 | 35.60 |" in text
    assert "0 records from 0 run(s)" in capsys.readouterr().out
    assert cli(["table", "--runs", str(tmp_path / "runs"), "--format", "pdf"]) == 2


def test_table1_prints_mean_and_std_for_stochastic_rows_only(tmp_path):
    """A stochastic method's row (eval-color's auc / auc_std ...) reads "mean ± std" in md
    and tex; a deterministic row's cells stay plain; the csv keeps both as numbers."""
    run = RunDir(tmp_path / "runs" / "eval")
    base = {"suite": "colorization", "encoder": "alexnet_cc", "protocol": "table1", "dataset": "builtin",
            "split": "val", "layer": ""}
    values = {"royer": {"auc": 90.123, "auc_std": 0.456, "rebalanced_auc": 70.0, "rebalanced_auc_std": 1.25,
                        "samples": 3},
              "colorization-full-annealed": {"auc": 91.0, "rebalanced_auc": 78.5}}
    run.write_records([dict(base, method=m, metric=k, value=v) for m, vals in values.items() for k, v in vals.items()])
    tables, _ = build_tables([tmp_path / "runs"], tmp_path / "out", ("md", "csv", "tex"))
    md = (tmp_path / "out" / "table1_builtin.md").read_text()
    royer = next(line for line in md.splitlines() if line.startswith("| royer"))
    assert "| 90.12 ± 0.46 | 70.00 ± 1.25 |" in royer
    zhang = next(line for line in md.splitlines() if line.startswith("| colorization-full-annealed"))
    assert "| 91.00 | 78.50 |" in zhang and "±" not in zhang
    assert "auc_std" not in md.splitlines()[2]  # the spread is shown in the cells, not as columns
    assert "90.1 $\\pm$ 0.5" in (tmp_path / "out" / "table1_builtin.tex").read_text()
    csv = (tmp_path / "out" / "table1_builtin.csv").read_text()
    assert "auc_std" in csv.splitlines()[0] and "0.456" in csv
    assert tables["table1_builtin"].loc[("royer",)].iloc[0]["auc_std"] == 0.456
