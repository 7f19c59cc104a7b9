"""Data layer: info files, readers, multi-view dataset, BEV map targets, augmentation."""
