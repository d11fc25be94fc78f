"""Model store: where base models and trained weights come from (embedded/: the tiny models)."""
