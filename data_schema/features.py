"""Tables of the training-feature stage (features)."""
