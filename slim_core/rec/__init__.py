"""Sequential recommenders, text matching and their evaluation."""
