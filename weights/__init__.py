"""Model store: where base models and trained weights come from, and the embedded tiny models."""
