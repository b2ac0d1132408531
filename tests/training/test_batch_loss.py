"""The loss a training step minimises (`cft.training.trainer.batch_loss`)."""

import pytest
import torch

from cft.recipe.schema import TrainConfig
from cft.training.trainer import batch_loss


def test_batch_loss_is_the_task_loss_plus_the_weighted_regulariser():
    """cft.training.trainer.batch_loss (what `cft train` and the in-process benchmarks minimise):
    the task loss, plus reg_strength times the prior-consistency regulariser, route_entropy times
    the routes' normalised entropy and route_balance times (1 - their balance); a term at weight 0
    is not added."""
    class Model:
        def task_loss(self, logits, y):
            return ((logits - y) ** 2).mean()

        class router:  # noqa: N801 - stands where CftModel.router is
            @staticmethod
            def regularizer(routes):
                return routes[0].sum()

            @staticmethod
            def normalised_entropy(routes):
                return torch.tensor(0.5)

            @staticmethod
            def normalised_balance(routes):
                return torch.tensor(0.25)

    logits, y, routes = torch.ones(2, 3), torch.zeros(2, 3), {0: torch.full((3, 2), 0.5)}
    task, reg, loss = batch_loss(Model(), logits, routes, y, TrainConfig(reg_strength=0.1))
    assert (task.item(), reg.item(), loss.item()) == pytest.approx((1.0, 3.0, 1.3))
    task, reg, loss = batch_loss(Model(), logits, routes, y, TrainConfig(reg_strength=0.0))
    assert (reg.item(), loss.item()) == (0.0, 1.0)
    _, _, loss = batch_loss(Model(), logits, routes, y, TrainConfig(reg_strength=0.0, route_entropy=0.2, route_balance=0.4))
    assert loss.item() == pytest.approx(1.0 + 0.2 * 0.5 + 0.4 * (1 - 0.25))
