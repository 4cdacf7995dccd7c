"""Inference: model loading, resampling to the model grid, sliding-window segmentation."""
