"""The embedded models: tiny random-initialised SDXL, SD 1.5, refiner, safety checker and
preprocessors built on first use, and the toy bases whose trained weights ship in toy_weights/
(SDXL) and toy_flux_weights/ (FLUX.1)."""
