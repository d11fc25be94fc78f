"""The embedded models: tiny random-initialised SDXL, SD 1.5, refiner, safety checker and
preprocessors built on first use, and the toy base whose trained weights ship in toy_weights/."""
