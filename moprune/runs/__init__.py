"""Run directories (files, checkpoints, identity) and the export of a candidate."""
