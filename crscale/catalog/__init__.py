"""CR catalogue: labelling, per-CR features, morphology, per-exposure rates."""
