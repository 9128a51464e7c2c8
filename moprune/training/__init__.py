"""Fine-tuning, seeded re-initialisation and BatchNorm re-estimation, named recipes."""
