"""smallset: small training sets from big ones (coreset pruning and dataset distillation).

One installed import name. ``smallset`` itself is the base layer (data, models, training, store,
tracking); the design's top-level folders are its subpackages: ``smallset.prune`` (prune/),
``smallset.distill`` (distill/), ``smallset.tasks`` (tasks/) and ``smallset.flows`` (flows/).
Importing ``smallset`` is cheap: nothing heavy (torch, Prefect, MLflow) loads until a submodule asks.
"""
