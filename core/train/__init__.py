"""Training GLNet: scenes and windows, losses, the three stages, torchrun."""
