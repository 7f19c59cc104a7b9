"""tools/ablate.py bookkeeping: tables between the AUTO markers, the reading kept, shared runs reused."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _cli():
    spec = importlib.util.spec_from_file_location("bev_mtl_ablate_cli", REPO / "tools/ablate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(row: str, seed: int, nds: float, light_matched: bool = True) -> dict:
    light = {"accuracy": 0.5, "matched": 3} if light_matched else {"accuracy": None, "matched": 0}
    return {"row": row, "seed": seed, "train_s": 600.0, "params_m": 10.0, "latency_ms": 100.0 + 2 * seed,
            "metrics": {"detection": {"nd_score": nds, "mean_ap": nds / 2},
                        "map_segmentation": {"miou_max": 0.3},
                        "attributes": {"vehicle_type": {"accuracy": 0.9}, "blinker": {"accuracy": 0.5},
                                       "light": light}}}


def test_doc_tables_keep_the_reading_and_show_seed_spread(tmp_path):
    cli = _cli()
    doc = tmp_path / "ablations.md"
    doc.write_text(f"# Ablations\n\nIntro.\n\n{cli.BEGIN}\nold table\n{cli.END}\n\n## Reading\n\nKept.\n")
    args = cli.parse_args(["--seeds", "0", "1"])
    rows = {"det_only": [_run("det_only", 0, 0.1), _run("det_only", 1, 0.3)],
            "map_only": [_run("map_only", 0, 0.0, light_matched=False)],
            "labels_full": [_run("mtl_fixed", 0, 0.2)]}
    cli.write_doc(doc, rows, args)
    text = doc.read_text()
    assert text.startswith("# Ablations\n\nIntro.") and text.rstrip().endswith("## Reading\n\nKept.")
    assert "old table" not in text and text.count(cli.BEGIN) == 1
    det = next(line for line in text.splitlines() if line.startswith("| single-task detection"))
    cells = [c.strip() for c in det.strip("|").split("|")]
    assert cells[1] == "2" and cells[2] == "0.200 ± 0.100"  # two seeds: mean ± half the range
    single = next(line for line in text.splitlines() if line.startswith("| single-task map"))
    assert "(two networks: 201)" in single  # latency of the two single-task networks summed
    assert [c.strip() for c in single.strip("|").split("|")][7] == "–"  # no light matched: undefined
    assert "| full labels" in text.split("Table 2")[1]


def test_shared_row_reuses_the_finished_run(tmp_path, monkeypatch):
    cli = _cli()
    work = tmp_path / "mtl_fixed" / "seed0"
    (work / "test").mkdir(parents=True)
    (work / "test" / "metrics.json").write_text("{}")
    (work / "ablate_run.json").write_text(json.dumps(_run("mtl_fixed", 0, 0.2)))
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    args = cli.parse_args(["--out", str(tmp_path)])
    assert cli.run_row(args, "labels_full", 0)["row"] == "mtl_fixed"
