"""``crop_flip``: the coreset papers' random crop of the reflect-padded image and horizontal flip."""
from smallset.augment import AUGMENTATIONS, crop_flip_augment, from_function

AUGMENTATIONS.register("crop_flip")(from_function(crop_flip_augment))
