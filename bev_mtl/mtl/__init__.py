"""Multi-task learning: task weighting of the per-task losses and self-distillation from a teacher."""
from .distill import (Teacher, distill_loss, missing_from_labelled, restore_teacher, save_teacher,  # noqa: F401
                      trainable_parameters)
from .weighting import (DWAWeighting, FixedWeighting, GradNormWeighting, TaskWeighting,  # noqa: F401
                        UncertaintyWeighting, WeightedLoss, build_weighting, group_by_task, task_of)
