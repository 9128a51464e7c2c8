"""Data sets as uint8 tensors with seeded hold-out splits (digits, CIFAR, ImageFolder)."""
