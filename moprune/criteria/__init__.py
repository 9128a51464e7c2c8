"""Channel importance criteria behind one strict registry (higher score = more important).

Every criterion maps ``(model, space, context)`` to one float64 score per channel of the
space's flat channel vector; :func:`rank_channels` turns scores into a ranking per group.
Weight criteria (``l1``, ``l2``, ``fpgm``, ``bn_scale``) read only the weights; ``random``
reads the context's seed; data criteria (``taylor`` and the four SNIP-style ``grad_*``
criteria of EvoFC) need one batch of training images in the :class:`ScoreContext`.
No criterion changes the model it scores.

=============  =======================================================================
name           score of channel ``c`` (sums run over the layers that write the group)
=============  =======================================================================
l1             ``sum |W_c|`` (Li et al., ICLR 2017)
l2             ``sqrt(sum W_c^2)`` (He et al., IJCAI 2018)
fpgm           ``sum_j ||W_c - W_j||_2`` over the group's channels ``j``: filters near the
               geometric median are redundant (He et al., CVPR 2019)
bn_scale       ``sum |gamma_c|`` of the BatchNorms on the channel (Liu et al., ICCV 2017)
taylor         ``sum | mean_n sum_hw a * dL/da |`` of the channel's output activations
               (Molchanov et al., ICLR 2017)
grad_l1        ``sum |G_c|`` with ``G = W * dL/dW`` (SNIP mask gradient, Lee et al., ICLR
               2019; EvoFC, Neurocomputing 2024)
grad_l2        ``||G_c||_2 / ||G_layer||_2`` (EvoFC)
grad_es        ``max |G_c| / sum |G_layer|``, empirical sensitivity (EvoFC)
grad_gm        ``sum_j ||G_c - G_j||_2``, geometric median of the gradients (EvoFC)
random         uniform random scores from ``context.seed``
snr, fisher,   class-separation metrics of the channel's feature maps, one class against
symmetric_     the rest, summed over classes (see :mod:`moprune.criteria.gp.library`)
divergence,
t_statistic
gp_published   the best evolved function of Liu et al. (GECCO 2022)
gp:<file>      a function evolved with ``moprune evolve`` (a ``*.gp.json`` file)
=============  =======================================================================

The ``grad_*`` criteria are computed on a copy of the network; with ``context.reinit`` its
conv weights are first re-initialised (Xavier normal, seeded from
``context.seed``), as EvoFC does for randomly initialised networks.
"""

from __future__ import annotations

from moprune.criteria import evolved, gradients, weights
from moprune.criteria.base import (
    CRITERIA,
    DEFAULT_BATCH,
    GP_PREFIX,
    Criterion,
    CriterionRegistry,
    ScoreContext,
    ScoreFn,
    criterion_name,
    rank_channels,
    writer_rows,
)
from moprune.criteria.gradients import taylor
from moprune.criteria.weights import bn_scale, fpgm, l1_norm, l2_norm, random_scores

__all__ = ["CRITERIA", "DEFAULT_BATCH", "GP_PREFIX", "Criterion", "CriterionRegistry",
           "ScoreContext", "ScoreFn", "bn_scale", "criterion_name", "evolved", "fpgm",
           "gradients", "l1_norm", "l2_norm", "random_scores", "rank_channels", "taylor",
           "weights", "writer_rows"]
