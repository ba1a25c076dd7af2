"""Transfer harnesses (linear probes, VOC classification, detection, segmentation) and their metrics."""
