"""Class names and label vocabularies: the one home the dataset, the heads, the evaluator, the
predictor, the visualiser and the synthetic world read them from.

Orders matter: ``gt_labels`` index ``dataset_class_names(det_cfg)``, a head's labels index
``det_class_names(det_cfg)`` (the same list plus ``traffic_light`` last when the head detects
lights) and every attribute label indexes its ``Vocabularies`` field. A sub-head's size is the
length of its vocabulary (``Vocabularies.size``), so adding a name here resizes the head.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DET_CLASSES", "EMERGENCY_AS", "LIGHT_CLASS", "SUB_HEAD_VOCAB", "VOCAB", "Vocabularies",
           "attribute_for_class", "dataset_class_names", "det_class_names"]

# the nuScenes detection classes: the default training classes and the only names the results
# format accepts (``nusc_format.to_nuscenes`` leaves out any other, e.g. the traffic light)
DET_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone")
# not a nuScenes class: a head with ``traffic_light=True`` appends it to its classes
LIGHT_CLASS = "traffic_light"

# nuScenes has no detection class for emergency vehicles (the devkit's category_to_detection_name
# gives None and its evaluation ignores them); they are cars to detect here, and the vehicle-type
# head says ambulance / police (docs/design.md, "Emergency vehicles").
EMERGENCY_AS = {"vehicle.emergency.ambulance": "car", "vehicle.emergency.police": "car"}

# attribute sub-heads, in the order the evaluator reports them -> the Vocabularies field they index
SUB_HEAD_VOCAB: Mapping[str, str] = {"vehicle_type": "vehicle_types", "blinker": "blinker", "light": "light",
                                     "attr": "attributes"}


@dataclass(frozen=True)
class Vocabularies:
    """Label vocabularies: ``gt_<sub-head>`` = index into the field ``SUB_HEAD_VOCAB`` names."""

    attributes: tuple[str, ...] = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider",
                                   "cycle.without_rider", "pedestrian.moving", "pedestrian.standing",
                                   "pedestrian.sitting_lying_down", "none")
    vehicle_types: tuple[str, ...] = ("vehicle.car", "vehicle.truck", "vehicle.bus.rigid", "vehicle.bus.bendy",
                                      "vehicle.trailer", "vehicle.construction", "vehicle.emergency.ambulance",
                                      "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.bicycle")
    blinker: tuple[str, ...] = ("off", "left", "right", "hazard")
    light: tuple[str, ...] = ("red", "yellow", "green", "off")
    # nuScenes gives these classes no attribute: an empty one is 'none'; for all other classes
    # an empty attribute means unknown (e.g. mmdet3d infos of a box no camera saw) -> -1
    attribute_free: tuple[str, ...] = ("barrier", "traffic_cone")

    def names(self, sub_head: str) -> tuple[str, ...]:
        """The vocabulary a sub-head (``SUB_HEAD_VOCAB`` key, e.g. "vehicle_type") classifies into."""
        return getattr(self, SUB_HEAD_VOCAB[sub_head])

    def size(self, sub_head: str) -> int:
        """Output size of a sub-head: the length of its vocabulary."""
        return len(self.names(sub_head))


VOCAB = Vocabularies()

# nuScenes: which attributes each detection class may carry (None = none)
_ATTR_PREFIX = {"car": "vehicle.", "truck": "vehicle.", "construction_vehicle": "vehicle.", "bus": "vehicle.",
                "trailer": "vehicle.", "motorcycle": "cycle.", "bicycle": "cycle.", "pedestrian": "pedestrian.",
                "barrier": None, "traffic_cone": None}


def attribute_for_class(name: str, probs: np.ndarray, attr_names: Sequence[str]) -> str:
    """Most probable attribute among those valid for class ``name`` ('' for barriers/cones)."""
    prefix = _ATTR_PREFIX.get(name)
    if prefix is None:
        return ""
    allowed = [k for k, a in enumerate(attr_names) if a.startswith(prefix)]
    if not allowed:
        return ""
    return attr_names[max(allowed, key=lambda k: probs[k])]


def dataset_class_names(det_cfg: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The order of ``gt_labels`` for a det-head config: its ``class_names`` (default the 10
    nuScenes classes). Traffic lights are not among them: they come as ``gt_light_*``."""
    return tuple((det_cfg or {}).get("class_names", DET_CLASSES))


def det_class_names(det_cfg: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The class names a ``CenterHead`` built from ``det_cfg`` predicts, in label order:
    ``dataset_class_names`` plus, with ``traffic_light``, that class last."""
    names = dataset_class_names(det_cfg)
    if (det_cfg or {}).get("traffic_light") and LIGHT_CLASS not in names:
        names += (LIGHT_CLASS,)
    return names
