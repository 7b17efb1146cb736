"""Evaluation protocols: presets, learning-rate schedules and optimisers, each a registry.

Importing the package registers every module in it: a new preset, schedule or optimiser is one module here
(docs/adding-a-component.md). The types and registries live in :mod:`smallset.protocols.base`;
:mod:`smallset.train` trains with them and re-exports ``PROTOCOLS`` and ``get_protocol``.
"""
from smallset.plugins import import_modules
from smallset.protocols.base import (  # noqa: F401
    OPTIMIZERS,
    PROTOCOLS,
    SCHEDULES,
    Optimizer,
    Protocol,
    Schedule,
    get_protocol,
)

import_modules(__name__, __path__)
