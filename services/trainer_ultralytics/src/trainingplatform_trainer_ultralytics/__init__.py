"""The ultralytics trainer: YOLO object detection.

The adapter lives in `trainingplatform_trainer_ultralytics.adapter` (`UltralyticsAdapter`); this package imports
nothing heavy, so the trainer service starts fast and `offline.prepare_offline()` runs before ultralytics loads.
"""
