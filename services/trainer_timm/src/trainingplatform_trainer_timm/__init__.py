"""The timm trainer: image classification with any timm model.

The adapter lives in `trainingplatform_trainer_timm.adapter` (`TimmAdapter`); this package imports nothing heavy
so that the trainer service (`server.py`) starts serving before torch and timm are loaded.
"""
