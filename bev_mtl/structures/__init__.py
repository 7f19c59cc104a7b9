"""Typed structures shared by data, models, engine and tools (docs/design.md, "Structures")."""
from .vocab import (DET_CLASSES, EMERGENCY_AS, LIGHT_CLASS, SUB_HEAD_VOCAB, VOCAB, Vocabularies,  # noqa: F401
                    attribute_for_class, dataset_class_names, det_class_names)
