"""Checkpoint/resume for DC, DSA and CAFE: an interrupted run resumed from its checkpoint ends with
exactly the synthetic tensor (and loss curve) of an uninterrupted run (CPU)."""
import pytest
import torch

from smallset.context import RunContext
from smallset.distill.base import CONDENSERS
from smallset.distill.cafe import CAFEConfig
from smallset.distill.dc import DCConfig
from smallset.distill.dsa import DSAConfig

from helpers import straight_and_resumed

N, HALF = 4, 2


def ctx(**kw):
    return RunContext(seed=3, model="convnet-s", model_kwargs={"width": 8}, **kw)


CONFIGS = {
    # outer_loop 2 / inner_loop 1 exercises the image momentum, the inner loop and every generator.
    "dc": DCConfig(iterations=N, outer_loop=2, inner_loop=1, batch_real=4, batch_train=2),
    "dsa": DSAConfig(iterations=N, outer_loop=2, inner_loop=1, batch_real=4, batch_train=2),
    # Caps keep each iteration short; a milestone at ½ puts the lr halving inside the resumed half.
    "cafe": CAFEConfig(iterations=N, batch_real=4, probe_per_class=4, watch_window=2, max_outer_steps=3,
                       max_inner_epochs=2, lr_halving="0.5", batch_train=2),
    "cafe+dsa": CAFEConfig(iterations=N, batch_real=4, probe_per_class=4, watch_window=2, max_outer_steps=2,
                           max_inner_epochs=2, dsa=True),
}


@pytest.mark.parametrize("key", list(CONFIGS))
def test_resume_is_exact(tiny_dataset, tmp_path, key):
    ds = tiny_dataset(n_per_class=6, num_classes=3, size=8)
    name = key.split("+")[0]
    cls, cfg, ipc = CONDENSERS.get(name), CONFIGS[key], 2
    straight, resumed = straight_and_resumed(cls, cfg, ds, ipc, ctx, tmp_path, HALF)
    assert resumed.info["resumed_from"] == HALF
    assert torch.equal(resumed.images, straight.images)
    assert resumed.info["loss_curve"] == straight.info["loss_curve"]
    for k in ("outer_steps", "inner_epochs", "disc_loss_curve", "outer_cap_hits", "mean_abs_change"):
        assert resumed.info.get(k) == straight.info.get(k)
    # The run really moved on after the checkpoint (not a no-op resume).
    at_half = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["syn"]
    assert not torch.equal(at_half, straight.images)
