"""``dc`` / ``dc:STRATEGY``: the DC papers' evaluation augmentation (docs/methods/evaluation.md#dc-augmentation)."""
from smallset.augment import AUGMENTATIONS, dc_augment, from_function, parse_dc_strategy

AUGMENTATIONS.register("dc")(from_function(dc_augment, parse_dc_strategy))
