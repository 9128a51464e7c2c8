"""The torchvision classifier families moprune prunes exactly, and the one it refuses.

``tests/zoo/test_torchvision_families.py`` checks every family in :data:`FAMILIES` (space with
both policies, masked == sliced == pruned, analytic cost == thop, export reload);
``analysis/torchvision_families.py`` writes the table of docs/models.md from the same list.
Any other torchvision classifier built from the same layer kinds works too (``tv:<name>``).
"""

from __future__ import annotations

FAMILIES: tuple[str, ...] = (
    "resnet18", "resnet50", "wide_resnet50_2", "resnext50_32x4d", "regnet_x_400mf",
    "regnet_y_400mf", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
    "densenet121", "vgg11_bn", "googlenet", "mnasnet0_5", "alexnet", "squeezenet1_0",
)

REFUSED: dict[str, str] = {
    "shufflenet_v2_x0_5": "its channel shuffle (a reshape across the channel dimension) "
                          "cannot be traced by Torch-Pruning's dependency graph",
}

__all__ = ["FAMILIES", "REFUSED"]
