"""Hand-made metrics written as trees (the seeds of the GP search) and the published function.

With ``mu``/``v`` the global mean/variance of a feature-map matrix (all its entries) and
``n_P``, ``n_Q`` the numbers of class and non-class samples, per class (one-vs-rest):

=======================  ==================================================================
name                     value per class
=======================  ==================================================================
snr                      ``|mu_P - mu_Q| / (std_P + std_Q)`` (signal-to-noise ratio)
fisher                   ``(mu_P - mu_Q)^2 / (v_P + v_Q)`` (Fisher discriminant ratio)
symmetric_divergence     ``v_P/v_Q + v_Q/v_P + (mu_P - mu_Q)^2 (v_P + v_Q) / (v_P v_Q)``,
                         i.e. ``2 D + 2`` for the symmetric KL divergence ``D`` of two
                         Gaussians (the same ranking)
t_statistic              ``|mu_P - mu_Q| / sqrt(v_P / n_P + v_Q / n_Q)`` (Welch, population
                         variances)
filter_l1                ``sum |WI|``
filter_l2                ``sqrt(sum WI^2)``
geometric_median         ``||WI - gm(W)||_2`` (distance to the geometric median of the
                         layer's filters, FPGM)
=======================  ==================================================================

``published`` is the best function of Liu et al. (GECCO 2022) as described in words there:
``v_P/(v_Q + 0.05) + v_Q/(v_P + 0.05) + (std(mX) v_Q mX + v_P - mQ)^2 / (v_P + v_Q + 0.05)``
with ``mX``, ``mQ`` the mean feature maps of all samples and of the non-class samples (so the
last term is a map, averaged over its positions like every non-scalar value).
"""

from __future__ import annotations

_MEAN_DIFF = "sub(mean(P), mean(Q))"

SEEDS: dict[str, str] = {
    "snr": f"abs(div({_MEAN_DIFF}, add(std(P), std(Q))))",
    "fisher": f"div(square({_MEAN_DIFF}), add(var(P), var(Q)))",
    "symmetric_divergence": (
        f"add(add(div(var(P), var(Q)), div(var(Q), var(P))), div(mul(square({_MEAN_DIFF}), "
        "add(var(P), var(Q))), mul(var(P), var(Q))))"),
    "t_statistic": (
        f"abs(div({_MEAN_DIFF}, sqrt(add(div(var(P), count(P)), div(var(Q), count(Q))))))"),
    "filter_l1": "sum(abs(WI))",
    "filter_l2": "sqrt(sum(square(WI)))",
    "geometric_median": "sqrt(sum(square(sub(WI, gm(W)))))",
}

PUBLISHED = (
    "add(add(div(var(P), plus_005(var(Q))), div(var(Q), plus_005(var(P)))), "
    "div(square(add(mul(mul(std(mX), var(Q)), mX), sub(var(P), mQ))), "
    "plus_005(add(var(P), var(Q)))))"
)

__all__ = ["PUBLISHED", "SEEDS"]
