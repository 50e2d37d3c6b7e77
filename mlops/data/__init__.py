"""Dataset format (split folders of .npy arrays), group-aware splitting and augmentation."""
