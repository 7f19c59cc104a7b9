"""tools/learning_curve.py: validations of a run's CSV log -> table, plot, doc block."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bev_mtl_learning_curve_cli",
                                               Path(__file__).resolve().parents[2] / "tools/learning_curve.py")
learning_curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning_curve)

FIELDS = ["epoch", "loss", "step", "time/train_min", "val/nds", "val/mAP", "val/miou", "val/gt_boxes_f1/blinker"]


def _log(work: Path, rows: list[dict]) -> None:
    (work / "csv").mkdir(parents=True)
    with (work / "csv" / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)


def test_table_plot_and_doc_block(tmp_path: Path) -> None:
    work = tmp_path / "run"
    _log(work, [{"epoch": 0, "loss": 3.0, "step": 9},  # a training row: not a validation
                {"epoch": 0, "step": 239, "time/train_min": 4.0, "val/nds": 0.1, "val/mAP": 0.05, "val/miou": 0.2},
                {"epoch": 1, "step": 479, "time/train_min": 8.1, "val/nds": 0.2, "val/mAP": 0.1, "val/miou": 0.25,
                 "val/gt_boxes_f1/blinker": 0.7},
                # (steps as Lightning logs them: 0-based) a resumed run validated step 480 again: the later row counts
                {"epoch": 1, "step": 479, "time/train_min": 8.2, "val/nds": 0.21, "val/mAP": 0.1, "val/miou": 0.26}])
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{learning_curve.BEGIN}\nold\n{learning_curve.END}\nreading kept\n")
    assert learning_curve.main([str(work), "--doc", str(doc)]) == 0
    table = (work / "learning_curve.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| 240 | 4.0 | 0.100 | 0.050 | 0.200 | – |")
    assert table[3].startswith("| 480 | 8.2 | 0.210 |") and (work / "learning_curve.png").stat().st_size > 1000
    text = doc.read_text()
    assert "old" not in text and "| 480 | 8.2 |" in text and text.endswith("reading kept\n")


def test_run_without_validations_is_a_clear_error(tmp_path: Path, capsys) -> None:
    work = tmp_path / "run"
    _log(work, [{"epoch": 0, "loss": 3.0, "step": 9}])
    assert learning_curve.main([str(work)]) == 2
    assert "no validation rows; train with train.val_every_steps > 0" in capsys.readouterr().err
    assert learning_curve.main([str(tmp_path / "nope")]) == 2
