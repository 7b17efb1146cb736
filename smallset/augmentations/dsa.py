"""``dsa`` / ``dsa:STRATEGY``: non-Siamese DSA (docs/methods/dsa-augmentation.md); no strategy: the default for
the images' channel count."""
from smallset.augment import AUGMENTATIONS, dsa_augment, from_function, parse_strategy

AUGMENTATIONS.register("dsa")(from_function(dsa_augment, lambda a: parse_strategy(a) if a else None))
