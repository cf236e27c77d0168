"""Tests of the trainer service runtime (trainingplatform_sdk.trainer_service) through `tp-trainer-timm`."""
