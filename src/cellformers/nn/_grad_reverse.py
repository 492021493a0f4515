"""Gradient reversal (Ganin & Lempitsky 2015) and the adversarial batch discriminator of scFormer's DAR head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torch.autograd import Function

if TYPE_CHECKING:
    from torch import Tensor


class _GradReverse(Function):
    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return -ctx.lambda_ * grad_output, None


def grad_reverse(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lambda_`` in the backward pass.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> x = torch.ones(3, requires_grad=True)
    >>> y = cf.nn.grad_reverse(x, 0.5)
    >>> torch.equal(y, x)
    True
    >>> y.sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000, -0.5000])
    """
    return _GradReverse.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`.

    Parameters
    ----------
    lambda_
        Scale of the reversed gradient (scGPT uses a fixed 1.0).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> x = torch.ones(3, requires_grad=True)
    >>> cf.nn.GradientReversal(lambda_=2.0)(x).sum().backward()
    >>> x.grad
    tensor([-2., -2., -2.])
    """

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: Tensor) -> Tensor:
        """Same tensor, reversed gradient."""
        return grad_reverse(x, self.lambda_)


class AdversarialDiscriminator(nn.Module):
    """MLP classifier of the sequencing batch behind a gradient-reversal layer (scFormer's DAR task head).

    ``GradientReversal -> [Linear, LeakyReLU, LayerNorm] x n_layers -> Linear(n_out)``. Trained with cross entropy
    on the batch labels, it learns to predict the batch while the reversed gradient pushes the encoder to remove
    batch information from its input.

    Parameters
    ----------
    n_in
        Input width (the cell-embedding width).
    n_out
        Number of batches.
    n_hidden
        Hidden width; defaults to ``n_in``.
    n_layers
        Number of hidden layers.
    dropout_rate
        Dropout after each hidden layer.
    lambda_
        Gradient-reversal scale; ``0`` trains the classifier without pushing back on the encoder.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> dar = cf.nn.AdversarialDiscriminator(n_in=16, n_out=3)  # 3 sequencing batches
    >>> cells = torch.randn(4, 16, requires_grad=True)
    >>> logits = dar(cells)
    >>> logits.shape
    torch.Size([4, 3])
    >>> loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))
    >>> loss.backward()  # the encoder (here: ``cells``) receives the reversed gradient
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_hidden: int | None = None,
        n_layers: int = 2,
        dropout_rate: float = 0.0,
        lambda_: float = 1.0,
    ):
        super().__init__()
        n_hidden = n_in if n_hidden is None else int(n_hidden)
        self.reverse = GradientReversal(lambda_)
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(n_layers):
            layers += [nn.Linear(width, n_hidden), nn.LeakyReLU(), nn.LayerNorm(n_hidden), nn.Dropout(dropout_rate)]
            width = n_hidden
        layers.append(nn.Linear(width, n_out))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, n_in)`` cell embeddings -> ``(batch, n_out)`` batch logits."""
        return self.classifier(self.reverse(x))
