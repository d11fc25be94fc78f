"""FLUX.2 [klein]'s Cog container: its entry files (`predict.py`, `train.py`, named by
cog.klein.yaml) and its generation request. They sit on top of the engine and the trainer, as
the root-level entry files of the other containers do; the family itself (the folder above)
stays below everything."""
