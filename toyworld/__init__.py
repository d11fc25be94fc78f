"""A procedural world of simple scenes where fine-tuning quality can be measured on a CPU."""
