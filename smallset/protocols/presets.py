"""The evaluation presets (docs/methods/evaluation.md#presets-recorded-with-every-run)."""
from smallset.protocols.base import PROTOCOLS, Protocol

PROTOCOLS.register("paper")(Protocol("paper", epochs=300, schedule="reference"))
PROTOCOLS.register("paper-1000")(Protocol("paper-1000", epochs=1000, schedule="reference"))
# DeepCore's coreset evaluation (ResNet-18 on CIFAR in its paper): SGD 0.1, Nesterov momentum 0.9, wd 5e-4,
# batch 128, cosine annealing, 200 epochs.
PROTOCOLS.register("deepcore")(Protocol("deepcore", epochs=200, lr=0.1, batch_size=128, schedule="cosine",
                                        nesterov=True))
PROTOCOLS.register("quick")(Protocol("quick", epochs=20, batch_size=128, min_steps=200))
PROTOCOLS.register("demo")(Protocol("demo", epochs=8, batch_size=128, min_steps=200))
