"""Attribute metrics, the GT-box protocol and emergency vehicles in the nuScenes results."""
from __future__ import annotations

import numpy as np
import torch

from bev_mtl.data.dataset import DET_CLASSES, Vocabularies, detection_names
from bev_mtl.data.sample import Boxes
from bev_mtl.engine.attribute_metrics import classification_report, greedy_match, gt_box_rows, recall_report
from bev_mtl.data.nusc_format import to_nuscenes


def test_classification_report_by_hand() -> None:
    names = ("off", "left", "right", "hazard")
    gt = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    r = classification_report(pred, gt, names)
    assert r["count"] == 6 and abs(r["accuracy"] - 4 / 6) < 1e-9
    assert r["confusion"]["rows_gt_cols_pred"][0] == [2, 1, 0, 0] and r["confusion"]["rows_gt_cols_pred"][1] == [0, 1, 1, 0]
    assert r["recall"] == {"off": 2 / 3, "left": 0.5, "right": 1.0}  # hazard: no GT, not a class of the mean
    f1 = [2 * 1.0 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1.0 / 1.5]
    assert abs(r["macro_f1"] - np.mean(f1)) < 1e-9
    assert r["majority_class"] == "off" and r["majority_accuracy"] == 0.5
    assert abs(r["majority_macro_f1"] - (2 * 0.5 * 1.0 / 1.5) / 3) < 1e-9
    assert classification_report([], [], names)["accuracy"] is None


def test_gt_box_rows_keep_near_visible_labelled() -> None:
    boxes = np.zeros((5, 9))
    boxes[:, 0] = [10.0, 29.0, 31.0, 10.0, 10.0]
    visibility = np.array([4, 2, 4, 1, 0])  # 1 = 0-40 % visible; 0 = unknown
    labels = np.array([1, 2, 1, 1, -1])
    assert gt_box_rows(boxes, visibility, labels).tolist() == [0, 1]
    labels[4] = 0
    assert gt_box_rows(boxes, visibility, labels).tolist() == [0, 1, 4]
    light_vis = np.array([0.9, 0.4, 0.9, 0.39, -1.0])
    assert gt_box_rows(boxes, light_vis, labels, light=True).tolist() == [0, 1, 4]


def test_greedy_match_prefers_high_scores() -> None:
    pairs = greedy_match(np.array([[0.0, 0.0], [0.5, 0.0]]), np.array([0.2, 0.9]), np.array([[0.4, 0.0]]), 2.0)
    assert pairs == [(1, 0)]


def test_emergency_vehicles_are_cars_to_detect() -> None:
    b = Boxes(center=np.zeros((3, 3)), lwh=np.ones((3, 3)), yaw=np.zeros(3), velocity=np.zeros((3, 2)),
              category=["vehicle.emergency.ambulance", "vehicle.emergency.police", "human.pedestrian.adult"],
              detection_name=["", "", "pedestrian"])
    assert detection_names(b) == ["car", "car", "pedestrian"]


def test_emergency_predictions_left_out_of_nuscenes_results() -> None:
    """nuScenes ignores emergency-vehicle GT: a car the type head calls ambulance / police would be
    a false positive, so it is not written; other cars and classes are."""
    vocab = Vocabularies()
    types = torch.zeros(3, len(vocab.vehicle_types))
    types[0, vocab.vehicle_types.index("vehicle.car")] = 1
    types[1, vocab.vehicle_types.index("vehicle.emergency.ambulance")] = 1
    types[2, vocab.vehicle_types.index("vehicle.emergency.police")] = 1
    decoded = {"boxes": torch.tensor([[5.0, 0, 1, 4, 2, 1.5, 0, 0, 0]]).repeat(3, 1), "scores": torch.tensor([0.9, 0.8, 0.7]),
               "labels": torch.tensor([0, 0, DET_CLASSES.index("pedestrian")]), "vehicle_type": types}
    skip = [vocab.vehicle_types.index(c) for c in ("vehicle.emergency.ambulance", "vehicle.emergency.police")]
    out = to_nuscenes(decoded, np.eye(4), None, DET_CLASSES, vocab.attributes, "tok", skip)
    assert [r["detection_name"] for r in out] == ["car", "pedestrian"]  # the ambulance car is gone
    assert len(to_nuscenes(decoded, np.eye(4), None, DET_CLASSES, vocab.attributes, "tok")) == 3


def test_light_recall_and_r_precision() -> None:
    """4 GT lights; 5 detections (score, matched): threshold 0.3 keeps 3 (2 matched); the 4 best
    hold 3 matches."""
    scored = {2.0: [(0.9, True), (0.05, True), (0.5, False), (0.35, True), (0.2, True)]}
    r = recall_report(scored, 4, 0.3)
    assert r["predictions"] == 3 and r["recall@2m"] == 0.5 and abs(r["precision@2m"] - 2 / 3) < 1e-9
    assert r["r_precision@2m"] == 0.75
