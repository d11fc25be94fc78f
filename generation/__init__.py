"""Generation: the code behind predict() (modes, refiner, trained-weights switching,
safety checker, watermark, outputs)."""
