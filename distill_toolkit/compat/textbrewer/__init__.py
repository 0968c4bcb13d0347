"""TextBrewer 0.2.1's public API on distill_toolkit's one loop::

    import distill_toolkit.compat.textbrewer as textbrewer   # was: import textbrewer

    distiller = textbrewer.GeneralDistiller(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
    with distiller:
        distiller.train(optimizer, dataloader, num_epochs=3, scheduler_class=..., scheduler_args=..., callback=...)

Configs, distillers, adaptors ``(batch, model_outputs) -> dict``, ``train()``'s arguments, the
``with distiller:`` context, ``output_dir/gs{step}.pkl`` checkpoints, TensorBoard scalars and the
registries (``KD_LOSS_MAP``, ``MATCH_LOSS_MAP``, ``PROJ_MAP``, ``WEIGHT_SCHEDULER``,
``TEMPERATURE_SCHEDULER``, ``register_new``) behave as TextBrewer's: the same script ends with the same
student weights and logs the same losses step by step (``tests/test_compat_textbrewer.py``). Training
runs on :class:`distill_toolkit.Trainer`; what cannot be honoured raises an error naming the option and
the alternative. See ``docs/migrating_from_textbrewer.md``.
"""

from distill_toolkit.compat.textbrewer import losses, presets, projections, schedulers, utils
from distill_toolkit.compat.textbrewer.configurations import DistillationConfig, TrainingConfig
from distill_toolkit.compat.textbrewer.distillers import (BasicDistiller, GeneralDistiller, MultiTaskDistiller,
                                                          MultiTeacherDistiller)
from distill_toolkit.compat.textbrewer.presets import (ADAPTOR_KEYS, FEATURES, KD_LOSS_MAP, MATCH_LOSS_MAP, PROJ_MAP,
                                                       TEMPERATURE_SCHEDULER, WEIGHT_SCHEDULER, register_new)
from distill_toolkit.compat.textbrewer.trainer import BasicTrainer

__version__ = "0.2.1.post1"  # the TextBrewer API this layer provides

Distillers = {"Basic": BasicDistiller, "General": GeneralDistiller, "MultiTeacher": MultiTeacherDistiller,
              "MultiTask": MultiTaskDistiller, "Train": BasicTrainer}

__all__ = ["ADAPTOR_KEYS", "BasicDistiller", "BasicTrainer", "DistillationConfig", "Distillers", "FEATURES",
           "GeneralDistiller", "KD_LOSS_MAP", "MATCH_LOSS_MAP", "MultiTaskDistiller", "MultiTeacherDistiller",
           "PROJ_MAP", "TEMPERATURE_SCHEDULER", "TrainingConfig", "WEIGHT_SCHEDULER", "losses", "presets",
           "projections", "register_new", "schedulers", "utils"]
