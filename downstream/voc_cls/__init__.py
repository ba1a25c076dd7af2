"""PASCAL VOC 2007 classification (issue 11): fine-tuning (fc6-8 / all layers) and the
linear-SVM protocol. ``colorbench voc-cls``: ``downstream.voc_cls.main``."""
