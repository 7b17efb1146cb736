"""The source kinds (``KIND:ARGUMENT``): one module each, registered in :data:`smallset.data.SOURCES`.

``SOURCES`` imports this package on its first lookup (:mod:`smallset.plugins`), and the package imports every
module in it: a new kind is one module here (docs/adding-a-component.md), a :class:`smallset.data.SourceKind`.
"""
from smallset.plugins import import_modules

import_modules(__name__, __path__, skip=())
