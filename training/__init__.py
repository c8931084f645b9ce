"""training: self-distillation data and drafter training (mirrorspec train-drafter)."""
