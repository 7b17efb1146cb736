"""The training-time augmentations of the evaluation: one module each, registered in
:data:`smallset.augment.AUGMENTATIONS`.

``AUGMENTATIONS`` imports this package on its first lookup (:mod:`smallset.plugins`), and the package imports
every module in it: a new augmentation is one module here (docs/adding-a-component.md).
"""
from smallset.plugins import import_modules

import_modules(__name__, __path__, skip=())
